"""inspect_message end to end on messages carrying real documents, archives and markings."""

from __future__ import annotations

import pickle
import zipfile

import pytest

from milter.config import InspectLimits
from milter.inspect import DEFAULT_SCHEME, Detector, LabelScheme, inspect_message
from milter.inspect.filetype import EXECUTABLE_TYPES
from milter.inspect.findings import (
    ARCHIVE,
    ATTACHMENT,
    ENCRYPTED,
    EXECUTABLE,
    MACRO,
    MISMATCH,
    SIGNED,
    UNSCANNABLE,
    Findings,
)
from tests.inspect import builders as b

GUID = "3a9f2c1e-0b7d-4e51-9c2a-7f1d8e6b5a40"


def sources(f: Findings) -> dict[str, str | None]:
    return {label.source: label.level for label in f.labels}


def part(f: Findings, path: str):  # type: ignore[no-untyped-def]
    return next(p for p in f.parts if p.path == path)


def test_plain_message_has_body_part_without_attachment_flag() -> None:
    f = inspect_message(b.eml("Selamat pagi."))
    assert f.classification is None and f.labels == ()
    [body] = f.parts
    assert ATTACHMENT not in body.flags and body.true_type == "text/plain"
    assert f.subject == "Laporan" and "Selamat pagi." in f.text
    assert ("Subject", "Laporan") in f.headers
    assert f.attachments == ()


def test_headers_subject_and_body_markings() -> None:
    msip = f"MSIP_Label_{GUID}_Enabled=true; MSIP_Label_{GUID}_Name=Confidential"
    msg = b.eml(
        "TERBATAS\n\nIsi nota.\n",
        subject="=?utf-8?q?=5BSANGAT_RAHASIA=5D_Nota?=",
        headers={"msip_labels": msip, "X-Klasifikasi": "Biasa", "Sensitivity": "Personal"},
    )
    f = inspect_message(msg)
    assert f.subject == "[SANGAT RAHASIA] Nota"
    assert sources(f) == {
        "subject": "SANGAT_RAHASIA",
        "header:msip_labels": "RAHASIA",
        "header:x-klasifikasi": "BIASA",
        "header:sensitivity": None,
        "body": "TERBATAS",
    }
    assert f.classification == "SANGAT_RAHASIA"


def test_html_body_marking_and_prose_false_positives() -> None:
    html = "<html><body><p>RAHASIA</p><p>Ini resep rahasia keluarga.</p></body></html>"
    f = inspect_message(b.eml("Ini resep rahasia keluarga.", html=html))
    assert f.classification == "RAHASIA" and sources(f) == {"body": "RAHASIA"}
    prose = inspect_message(
        b.eml(
            "Informasi terbatas pada peserta.\nResep rahasia keluarga.",
            subject="Resep rahasia keluarga",
            html="<p>informasi terbatas pada peserta</p>",
        )
    )
    assert prose.labels == () and prose.classification is None


def test_docx_custom_property_in_nested_zip() -> None:
    nota = b.docx(["Nota dinas."], custom={"Klasifikasi": "Rahasia"})
    inner = b.zip_of({"nota.docx": nota})
    outer = b.zip_of({"arsip/dalam.zip": inner, "readme.txt": b"baca saya"})
    f = inspect_message(b.eml(attachments=(("laporan.zip", "application/zip", outer),)))
    assert sources(f) == {
        "attachment:laporan.zip/arsip/dalam.zip/nota.docx:docProps/custom.xml": "RAHASIA"
    }
    doc = part(f, "laporan.zip/arsip/dalam.zip/nota.docx")
    assert doc.depth == 3 and ATTACHMENT in doc.flags and doc.extension == "docx"
    assert ARCHIVE in part(f, "laporan.zip").flags
    assert "Nota dinas." in f.text and "baca saya" in f.text


def test_docx_purview_label_and_labelinfo() -> None:
    props = {f"MSIP_Label_{GUID}_Enabled": "true", f"MSIP_Label_{GUID}_Name": "Internal"}
    doc = b.docx(["Isi."], custom=props)
    members = {
        n: zipfile.ZipFile(__import__("io").BytesIO(doc)).read(n)
        for n in zipfile.ZipFile(__import__("io").BytesIO(doc)).namelist()
    }
    members["docMetadata/LabelInfo.xml"] = (
        f'<clbl:labelList><clbl:label id="{{{GUID}}}" enabled="1" removed="0"/></clbl:labelList>'
    ).encode()
    scheme = LabelScheme(
        levels=DEFAULT_SCHEME.levels, aliases=DEFAULT_SCHEME.aliases, guids={GUID: "RAHASIA"}
    )
    f = inspect_message(
        b.eml(attachments=(("a.docx", "application/octet-stream", b.zip_of(members)),)),
        scheme=scheme,
    )
    got = sources(f)
    assert got["attachment:a.docx:docMetadata/LabelInfo.xml"] == "RAHASIA"
    assert got["attachment:a.docx:docProps/custom.xml"] == "RAHASIA"  # GUID beats the name


def test_xlsx_nik_and_odt_meta() -> None:
    sheet = b.xlsx(["Nama", "NIK", "3171014101900003", "3171010101900003"])
    text = b.odt("Dokumen", {"Klasifikasi": "TERBATAS"})
    f = inspect_message(
        b.eml(
            attachments=(
                ("data.xlsx", "application/vnd.ms-excel", sheet),
                ("surat.odt", "application/vnd.oasis.opendocument.text", text),
            )
        )
    )
    assert f.detectors["nik"].count == 2
    assert sources(f) == {"attachment:surat.odt:meta.xml": "TERBATAS"}


def test_pdf_info_and_first_page_marking_and_text() -> None:
    doc = b.pdf(
        ["RAHASIA", "Laporan keuangan", "NIK 3171014101900003"],
        info={"Title": "Laporan", "Klasifikasi": "Terbatas"},
    )
    f = inspect_message(b.eml(attachments=(("laporan.pdf", "application/pdf", doc),)))
    assert sources(f) == {
        "attachment:laporan.pdf:info": "TERBATAS",
        "attachment:laporan.pdf:text": "RAHASIA",
    }
    assert f.detectors["nik"].confidence == "high"
    assert part(f, "laporan.pdf").true_type == "application/pdf"


def test_encrypted_pdf_zip_entry_and_office() -> None:
    pdf = b.pdf(["x"]).replace(b"/Root 1 0 R", b"/Root 1 0 R /Encrypt 9 0 R")
    ole = (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600 + "EncryptedPackage".encode("utf-16-le")
    )
    f = inspect_message(
        b.eml(
            attachments=(
                ("a.pdf", "application/pdf", pdf),
                ("b.zip", "application/zip", b.encrypted_zip("rahasia.docx", b"data" * 10)),
                ("c.docx", "application/octet-stream", ole),
            )
        )
    )
    for path in ("a.pdf", "b.zip/rahasia.docx", "c.docx"):
        p = part(f, path)
        assert {ENCRYPTED, UNSCANNABLE} <= p.flags, path
    assert f.any_unscannable()


def test_executable_renamed_and_macro_and_scripts() -> None:
    f = inspect_message(
        b.eml(
            attachments=(
                ("invoice.pdf", "application/pdf", b.PE_HEADER),
                ("run.js", "application/octet-stream", b"WScript.Echo('x');"),
                ("nota.docm", "application/octet-stream", b.docm(["Isi."])),
                ("kirim.zip", "application/zip", b.zip_of({"setup.exe": b.PE_HEADER})),
            )
        )
    )
    exe = part(f, "invoice.pdf")
    assert {EXECUTABLE, MISMATCH} <= exe.flags and exe.true_type in EXECUTABLE_TYPES
    assert EXECUTABLE in part(f, "run.js").flags
    assert MACRO in part(f, "nota.docm").flags
    assert EXECUTABLE in part(f, "kirim.zip/setup.exe").flags
    assert MISMATCH not in part(f, "nota.docm").flags


def test_office_names_holding_html_or_text_are_not_disguises() -> None:
    table = b"<html><body><table><tr><td>Realisasi</td><td>1200</td></tr></table></body></html>"
    f = inspect_message(
        b.eml(
            attachments=(
                ("laporan.doc", "application/msword", table),
                ("rekap.xls", "application/vnd.ms-excel", table),
                ("data.xls", "application/vnd.ms-excel", b"nama;nilai\nAndi;10\n" * 20),
                ("gambar.jpg", "image/jpeg", table),
            )
        )
    )
    for name in ("laporan.doc", "rekap.xls", "data.xls"):
        assert MISMATCH not in part(f, name).flags, name
    assert MISMATCH in part(f, "gambar.jpg").flags


def test_attached_message_labels_and_tar_gz() -> None:
    inner = b.eml("Isi.", subject="[RAHASIA] asli", headers={"X-Classification": "Internal"})
    tgz = b.tar({"dok/nota.txt": b"SANGAT RAHASIA\nisi nota\n"}, gz=True)
    f = inspect_message(
        b.eml(
            attachments=(
                ("fwd.eml", "message/rfc822", inner),
                ("arsip.tar.gz", "application/gzip", tgz),
            )
        )
    )
    got = sources(f)
    assert got["attachment:fwd.eml:subject"] == "RAHASIA"
    assert got["attachment:fwd.eml:header:x-classification"] == "TERBATAS"
    assert got["attachment:arsip.tar.gz/arsip.tar/dok/nota.txt"] == "SANGAT_RAHASIA"
    assert f.classification == "SANGAT_RAHASIA"


def test_signed_and_encrypted_smime_parts() -> None:
    raw = (
        b"From: a@b.c\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/signed; "
        b'protocol="application/pkcs7-signature"; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nhalo\r\n"
        b'--B\r\nContent-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHAqCAMIACAQEx\r\n--B--\r\n"
    )
    f = inspect_message(raw)
    sig = part(f, "2")
    assert SIGNED in sig.flags and ATTACHMENT not in sig.flags
    enc = (
        b"From: a@b.c\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHA6CAMIACAQAx\r\n"
    )
    e = inspect_message(enc)
    assert {ENCRYPTED, UNSCANNABLE} <= e.parts[0].flags


def test_zip_bomb_ratio_and_expanded_bytes() -> None:
    bomb = b.zip_of({"nol.bin": b"\x00" * (4 << 20)})
    f = inspect_message(b.eml(attachments=(("bom.zip", "application/zip", bomb),)))
    member = part(f, "bom.zip/nol.bin")
    assert UNSCANNABLE in member.flags and "ratio" in (member.reason or "")
    tight = InspectLimits(expanded_bytes=1000, expansion_ratio=1e9)
    g = inspect_message(b.eml(attachments=(("bom.zip", "application/zip", bomb),)), limits=tight)
    assert "expanded bytes" in (part(g, "bom.zip/nol.bin").reason or "")


def test_archive_depth_entries_and_mime_limits() -> None:
    nested = b"RAHASIA\n"
    for i in range(4):
        nested = b.zip_of({f"l{i}.zip" if i else "deep.txt": nested})
    f = inspect_message(
        b.eml(attachments=(("n.zip", "application/zip", nested),)),
        limits=InspectLimits(archive_depth=2),
    )
    assert any(p.reason == "archive depth limit reached" for p in f.parts)
    many = b.zip_of({f"f{i}.txt": b"x" for i in range(20)})
    g = inspect_message(
        b.eml(attachments=(("m.zip", "application/zip", many),)),
        limits=InspectLimits(archive_entries=5),
    )
    assert part(g, "m.zip").reason == "archive entry limit reached"
    parts = tuple((f"{i}.txt", "text/plain", b"x") for i in range(10))
    h = inspect_message(b.eml(attachments=parts), limits=InspectLimits(mime_parts=4))
    assert "MIME part limit reached" in h.unscannable


def test_time_budget_and_size_limit_and_text_limit() -> None:
    msg = b.eml("RAHASIA\nisi", subject="[TERBATAS] x")
    f = inspect_message(msg, limits=InspectLimits(time_budget=0.0))
    assert "time budget exceeded" in f.unscannable
    g = inspect_message(msg, limits=InspectLimits(max_bytes=100))
    assert g.unscannable == ("message larger than the examined bytes limit",)
    assert g.classification == "TERBATAS"  # the headers are still read
    h = inspect_message(b.eml("a" * 5000), limits=InspectLimits(text_bytes=100))
    assert len(h.text) <= 100 and "text limit reached" in h.unscannable


def test_custom_detector_and_findings_pickle() -> None:
    f = inspect_message(
        b.eml("Proyek Garuda, rahasia."),
        detectors=[Detector("proyek", keywords=("proyek garuda",))],
    )
    assert f.detectors["proyek"].count == 1
    assert pickle.loads(pickle.dumps(f)) == f


@pytest.mark.parametrize("seed", range(3))
def test_same_input_same_findings(seed: int) -> None:
    msg = b.eml(
        f"NIK 317101410190000{seed}",
        attachments=(("a.zip", "application/zip", b.zip_of({"b.txt": b"RAHASIA\n"})),),
    )
    assert inspect_message(msg) == inspect_message(msg)
