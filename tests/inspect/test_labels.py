"""Label scheme and marking recognition, including prose that must not count."""

from __future__ import annotations

import base64
import json
import pickle
import zlib

import pytest

from bench.messages import pdf_file
from milter.inspect import inspect_message
from milter.inspect.documents import sheet_header_footer
from milter.inspect.drafts import pdf_review_annotations, text_evidence
from milter.inspect.errors import LabelSchemeError
from milter.inspect.findings import Findings
from milter.inspect.labels import (
    BAND,
    BODY,
    DEFAULT_SCHEME,
    DOCUMENT,
    PAGE,
    WATERMARK,
    LabelScheme,
    letter_field_markings,
    marking_lines,
    msip_header_markings,
    property_markings,
    sensitivity_marking,
    subject_markings,
    text_markings,
    titus_markings,
)
from tests.labelled.build import docx, eml, odt, pdf, xlsx

S = DEFAULT_SCHEME
GUID = "3a9f2c1e-0b7d-4e51-9c2a-7f1d8e6b5a40"


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("RAHASIA", "RAHASIA"),
        ("rahasia", "RAHASIA"),
        ("Sangat Rahasia", "SANGAT_RAHASIA"),
        ("sangat_rahasia", "SANGAT_RAHASIA"),
        ("Top  Secret", "SANGAT_RAHASIA"),
        ("Highly Confidential", "SANGAT_RAHASIA"),
        ("Strictly Confidential", "SANGAT_RAHASIA"),
        ("Confidential", "RAHASIA"),
        ("Internal", "TERBATAS"),
        ("Restricted", "TERBATAS"),
        ("Public", "BIASA"),
        ("Terbuka", "BIASA"),
        ("General", None),
        ("", None),
    ],
)
def test_resolve(name: str, level: str | None) -> None:
    assert S.resolve(name) == level


def test_rank_and_highest() -> None:
    assert [S.rank(x) for x in S.levels] == [0, 1, 2, 3]
    assert S.rank("NOPE") == -1
    assert S.highest(["TERBATAS", None, "SANGAT_RAHASIA", "RAHASIA"]) == "SANGAT_RAHASIA"
    assert S.highest([None, "NOPE"]) is None


def test_scheme_from_policy_with_guids_pickles() -> None:
    scheme = LabelScheme(
        levels=("LOW", "HIGH"), aliases={"secret": "HIGH"}, guids={GUID.upper(): "HIGH"}
    )
    assert scheme.resolve("Secret") == "HIGH"
    assert scheme.resolve("{" + GUID + "}") == "HIGH"
    assert scheme.resolve_guid(GUID) == "HIGH"
    assert pickle.loads(pickle.dumps(scheme)).resolve("secret") == "HIGH"


def test_invalid_scheme() -> None:
    with pytest.raises(LabelSchemeError):
        LabelScheme(levels=())
    with pytest.raises(LabelSchemeError):
        LabelScheme(levels=("A",), aliases={"b": "B"})


@pytest.mark.parametrize(
    ("subject", "found"),
    [
        ("[RAHASIA] Laporan", ["RAHASIA"]),
        ("RE: Fwd: [rahasia] Laporan", ["rahasia"]),
        ("(TERBATAS) Undangan", ["TERBATAS"]),
        ("RAHASIA: data pegawai", ["RAHASIA"]),
        ("[SANGAT RAHASIA] nota", ["SANGAT RAHASIA"]),
        ("Nota dinas [Sangat Rahasia]", ["Sangat Rahasia"]),
        ("Laporan (Confidential)", ["Confidential"]),
        ("Resep rahasia keluarga", []),
        ("Informasi terbatas pada peserta rapat", []),
        ("Rapat [internal] dan lainnya sangat rahasia", []),
        ("", []),
    ],
)
def test_subject_markings(subject: str, found: list[str]) -> None:
    assert subject_markings(subject, S) == found


def test_marking_lines_top_and_bottom_only_capitals() -> None:
    body = "RAHASIA\n\nKepada Yth.\n" + "isi surat biasa\n" * 30 + "SANGAT RAHASIA\n"
    assert marking_lines(body, S) == ["RAHASIA", "SANGAT RAHASIA"]
    middle = "a\n" * 20 + "RAHASIA\n" + "b\n" * 20
    assert marking_lines(middle, S) == []


@pytest.mark.parametrize(
    "prose",
    [
        "Ini resep rahasia keluarga kami.",
        "Informasi terbatas pada peserta rapat saja.",
        "Rahasia\n",  # not in capitals
        "Ini RAHASIA umum.",  # capitals inside a sentence
        "Dokumen ini bersifat rahasia dan terbatas.",
    ],
)
def test_prose_is_not_a_marking(prose: str) -> None:
    assert marking_lines(prose, S) == []
    assert subject_markings(prose, S) == []


def test_msip_header_folded() -> None:
    value = (
        f"MSIP_Label_{GUID}_Enabled=true; MSIP_Label_{GUID}_SetDate=2024-01-01T00:00:00Z;\r\n"
        f" MSIP_Label_{GUID}_Name=Highly Confidential;\r\n MSIP_Label_{GUID}_ContentBits=0"
    )
    [m] = msip_header_markings(value, S)
    assert (m.raw, m.level) == ("Highly Confidential", "SANGAT_RAHASIA")
    by_guid = LabelScheme(levels=S.levels, aliases=S.aliases, guids={GUID: "TERBATAS"})
    assert msip_header_markings(value, by_guid)[0].level == "TERBATAS"
    disabled = value.replace("Enabled=true", "Enabled=false")
    assert msip_header_markings(disabled, S) == []


def test_titus_and_sensitivity() -> None:
    doc = {"Metadata": {"props": [{"n": "Classification", "vals": [{"value": "CONFIDENTIAL"}]}]}}
    encoded = base64.b64encode(json.dumps(doc).encode()).decode()
    [m] = titus_markings(encoded, S)
    assert m.level == "RAHASIA"
    assert titus_markings("!!!not base64", S) == []
    company = sensitivity_marking("Company-Confidential", S)
    assert company is not None and company.level == "RAHASIA"
    personal = sensitivity_marking("Personal", S)
    assert personal is not None and personal.level is None


def found(f: Findings) -> list[tuple[str, str | None, str]]:
    return [(lab.raw, lab.level, lab.why) for lab in f.labels]


# --- letter header of Tata Naskah Dinas -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("Nomor : 800/12\nSifat : Rahasia\nHal : Mutasi", [("Rahasia", "RAHASIA", "Sifat")]),
        ("SIFAT:RAHASIA", [("RAHASIA", "RAHASIA", "Sifat")]),
        ("sifat    :    sangat rahasia", [("sangat rahasia", "SANGAT_RAHASIA", "Sifat")]),
        ("Sifat\t: Terbatas", [("Terbatas", "TERBATAS", "Sifat")]),
        ("Sifat\n\t:\n\tRahasia\n\t", [("Rahasia", "RAHASIA", "Sifat")]),  # Word table cells
        ("Sifat : Segera / Rahasia", [("Rahasia", "RAHASIA", "Sifat")]),
        ("Sifat : Sangat Segera, Terbatas", [("Terbatas", "TERBATAS", "Sifat")]),
        ("Sifat : Segera", []),  # urgency
        ("Sifat : Sangat Segera", []),
        ("Sifat : Biasa", []),  # Biasa as urgency
        ("Klasifikasi : Biasa", [("Biasa", "BIASA", "Klasifikasi")]),
        ("Klasifikasi : RAHASIA", [("RAHASIA", "RAHASIA", "Klasifikasi")]),
        ("Derajat Klasifikasi: Terbatas", [("Terbatas", "TERBATAS", "Derajat klasifikasi")]),
        ("Sifat: rahasia banget, jangan bilang siapa-siapa", []),  # a sentence
        ("Sifatnya : Rahasia", []),
        ("Menurut sifat : Rahasia", []),  # not at the start of a line
    ],
)
def test_letter_header_fields(text: str, expect: list[tuple[str, str, str]]) -> None:
    got = letter_field_markings(text, S)
    assert [(m.raw, m.level, m.why) for m in got] == [
        (raw, level, f"letter header field {key}") for raw, level, key in expect
    ]


def test_letter_header_in_word_and_odf_tables() -> None:
    table = [["Nomor", ":", "800/1"], ["Sifat", ":", "Segera/Rahasia"], ["Hal", ":", "Mutasi"]]
    for name, doc in (
        ("s.docx", docx(["Isi surat."], table=table)),
        ("s.odt", odt([], table=table)),
    ):
        f = inspect_message(eml("Surat", attachments=[(name, doc)]))
        assert found(f) == [("Rahasia", "RAHASIA", "letter header field Sifat")], name


def test_title_case_only_in_page_bands() -> None:
    assert [m.why for m in text_markings("Laporan\nRahasia\n", S, BAND)] == [
        "page header or footer line"
    ]
    assert text_markings("Laporan\nRahasia\nisi\n", S, DOCUMENT) == []
    assert text_markings("Judul\nRahasia\nisi\n", S, BODY) == []
    page = "Terbatas\n" + "isi laporan\n" * 10 + "RAHASIA\n" + "isi\n" * 10 + "Halaman 2"
    assert [(m.raw, m.why) for m in text_markings(page, S, PAGE)] == [
        ("Terbatas", "page header line"),
        ("RAHASIA", "marking line in the document"),
    ]
    f = inspect_message(eml("x", attachments=[("a.docx", docx(["Isi."], footer=["Terbatas"]))]))
    assert found(f) == [("Terbatas", "TERBATAS", "page header or footer line")]


def test_watermarks() -> None:
    assert [(m.raw, m.why) for m in text_markings("Sangat Rahasia", S, WATERMARK)] == [
        ("Sangat Rahasia", "watermark")
    ]
    word = inspect_message(eml("x", attachments=[("a.docx", docx(["Isi."], watermark="RAHASIA"))]))
    assert found(word) == [("RAHASIA", "RAHASIA", "watermark")]
    assert word.labels[0].source == "attachment:a.docx:word/header1.xml"
    odf = inspect_message(eml("x", attachments=[("a.odt", odt(["Isi."], watermark="Terbatas"))]))
    assert ("Terbatas", "TERBATAS", "watermark") in found(odf)


# --- a marking anywhere in a document -----------------------------------------------------


def test_marking_on_page_three_and_in_a_stamp_box() -> None:
    prose = ["Isi laporan kegiatan yang panjang."] * 40
    doc = docx(prose, page_break_before=[*prose[:5], "RAHASIA", *prose[:5]])
    f = inspect_message(eml("x", attachments=[("a.docx", doc)]))
    assert found(f) == [("RAHASIA", "RAHASIA", "marking line in the document")]
    stamp = docx(["Isi."], textbox=["SANGAT RAHASIA"])
    f = inspect_message(eml("x", attachments=[("a.docx", stamp)]))
    assert found(f) == [("SANGAT RAHASIA", "SANGAT_RAHASIA", "marking line in the document")]
    pages = pdf([["isi"] * 5, ["isi"] * 5, ["isi"] * 3 + ["RAHASIA"] + ["isi"] * 3])
    f = inspect_message(eml("x", attachments=[("a.pdf", pages)]))
    assert found(f) == [("RAHASIA", "RAHASIA", "marking line in the document")]


@pytest.mark.parametrize(
    ("code", "text"),
    [
        ('&C&"Arial,Bold"RAHASIA', "\nRAHASIA"),
        ("&LDinas&CHalaman &P dari &N&RTerbatas", "\nDinas\nHalaman  dari \nTerbatas"),
        ("&14&KFF0000RAHASIA && umum", "RAHASIA & umum"),
    ],
)
def test_sheet_header_footer_codes(code: str, text: str) -> None:
    assert sheet_header_footer(code) == text


def test_xlsx_header_footer_and_cells() -> None:
    rows: list[list[str | int]] = [["Bidang", "Nilai"], ["Umum", 5]]
    head = xlsx(rows, odd_header='&C&"Arial,Bold"Rahasia')
    f = inspect_message(eml("x", attachments=[("a.xlsx", head)]))
    assert found(f) == [("Rahasia", "RAHASIA", "page header or footer line")]
    for inline in (False, True):
        cells = xlsx([["TERBATAS"], *rows], inline=inline)
        f = inspect_message(eml("x", attachments=[("a.xlsx", cells)]))
        assert found(f) == [("TERBATAS", "TERBATAS", "marking line in the document")]
    # numeric cells are read (for the NIK detector), under their column header
    numbers = xlsx([["Nama", "NIK"], ["Ani", 3171014101900003]])
    f = inspect_message(eml("x", attachments=[("a.xlsx", numbers)]))
    assert "Ani\t3171014101900003" in f.text and f.detectors["nik"].high_count == 1


@pytest.mark.parametrize(
    ("name", "value", "expect"),
    [
        ("Title", "RAHASIA - Rencana pengamanan", ["RAHASIA"]),
        ("Title", "Rahasia", ["Rahasia"]),
        ("Subject", "[Terbatas] Laporan audit", ["Terbatas"]),
        ("Keywords", "anggaran; Rahasia, 2024", ["Rahasia"]),
        ("Title", "Rahasia: 7 Cara Hemat", []),
        ("Title", "Resep rahasia keluarga", []),
        ("Keywords", "rahasia dapur, resep", []),
        ("Klasifikasi", "Internal Only", ["Internal Only"]),  # a classification property
    ],
)
def test_document_properties(name: str, value: str, expect: list[str]) -> None:
    got = property_markings(name, value, S)
    assert [m.raw for m in got] == expect
    assert all(m.why == f"document property {name}" for m in got)


def test_core_and_pdf_properties() -> None:
    doc = docx(["Isi."], core={"title": "RAHASIA - Rencana", "keywords": "x; Terbatas"})
    f = inspect_message(eml("x", attachments=[("a.docx", doc)]))
    assert found(f) == [
        ("RAHASIA", "RAHASIA", "document property Title"),
        ("Terbatas", "TERBATAS", "document property Keywords"),
    ]
    assert f.labels[0].source == "attachment:a.docx:docProps/core.xml"
    paper = pdf([["isi"]], info={"Title": "Laporan audit", "Subject": "Rahasia"})
    f = inspect_message(eml("x", attachments=[("a.pdf", paper)]))
    assert found(f) == [("Rahasia", "RAHASIA", "document property Subject")]


# --- subjects -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "expect"),
    [
        ("RAHASIA - Nota dinas", ["RAHASIA"]),
        ("Nota dinas - RAHASIA", ["RAHASIA"]),
        ("*RAHASIA*", ["RAHASIA"]),
        ("*RAHASIA* Laporan", ["RAHASIA"]),
        ("**Sangat Rahasia** Nota dinas", ["Sangat Rahasia"]),
        ("RE: [EXTERNAL] [RAHASIA] Undangan", ["RAHASIA"]),
        ("[EXTERNAL] RE: FW: [TERBATAS] Data pegawai", ["TERBATAS"]),
        ("Fwd: [Eksternal] (Rahasia) Nota dinas", ["Rahasia"]),
        ("RAHASIA", ["RAHASIA"]),
        ("RAHASIA | Memo pimpinan", ["RAHASIA"]),
        ("[Rahasia]", []),  # title case, nothing official around it
        ("Rahasia: 7 Cara Hemat", []),
        ("[Terbatas] Voucher", []),
        ("[TERBATAS] Voucher belanja", []),
        ("Pelatihan (Kuota Terbatas)", []),
        ("Promo - TERBATAS hari ini", []),
        ("PT Sinar Abadi Terbatas - Penawaran", []),
        ("Perseroan Terbatas", []),
        ("RAHASIA SUKSES BISNIS", []),
        ("[EXTERNAL] Rapat", []),
    ],
)
def test_subject_forms(subject: str, expect: list[str]) -> None:
    assert subject_markings(subject, S) == expect


def test_forwarded_original_subject_in_the_body() -> None:
    body = (
        "Mohon ditindaklanjuti.\n\n---------- Forwarded message ---------\n"
        "From: Sekretariat <set@jakarta.go.id>\nSubject: [SANGAT RAHASIA] Rencana\n\nIsi."
    )
    f = inspect_message(eml("Fwd: rencana", body))
    assert found(f) == [("SANGAT RAHASIA", "SANGAT_RAHASIA", "forwarded subject line")]
    quoted = "Baik.\n\n> Perihal: RAHASIA - Nota dinas\n> isi\n"
    assert found(inspect_message(eml("Re: nota", quoted))) == [
        ("RAHASIA", "RAHASIA", "forwarded subject line")
    ]
    trap = "Baca juga:\nSubject: Rahasia: 7 Cara Hemat\n"
    assert inspect_message(eml("Buletin", trap)).labels == ()


# --- ordinary Indonesian is not a marking ---------------------------------------------


def test_shop_badge_and_company_names_are_not_markings() -> None:
    shop = "Flash Sale\nSepatu Lari\nTERBATAS\nRp 299.000\nBeli sekarang\n"
    html = "<h1>Flash Sale</h1><p>Sepatu</p><span>TERBATAS</span><p>Stok menipis</p>"
    assert inspect_message(eml("Flash sale", shop, html=html)).labels == ()
    company = "Akta pendirian Perseroan Terbatas\nPT MAJU JAYA TERBATAS\nTelah disahkan."
    assert inspect_message(eml("Akta", company)).labels == ()
    assert marking_lines("Promo akhir tahun\nTERBATAS\nDiskon 50%\n", S) == []


def test_every_label_says_why() -> None:
    f = inspect_message(
        eml(
            "[RAHASIA] Nota dinas",
            "Sifat : Terbatas",
            attachments=[("a.docx", docx(["Isi."], header=["Rahasia"]))],
        )
    )
    assert {lab.why for lab in f.labels} == {
        "subject tag",
        "letter header field Sifat",
        "page header or footer line",
    }
    assert all("why" in d for d in f.to_dict()["labels"])


# --- drafts (clause 2.f) ------------------------------------------------------------------


def drafts_of(name: str, data: bytes) -> list[str]:
    return [d.evidence for d in inspect_message(eml("Bahan", attachments=[(name, data)])).drafts]


def test_word_and_odf_review_traces() -> None:
    assert drafts_of("a.docx", docx(["Isi."], tracked=True)) == [
        "tracked changes (1 insertions, 1 deletions)"
    ]
    assert drafts_of("a.docx", docx(["Isi."], comments=["cek", "lagi"])) == ["2 reviewer comments"]
    assert drafts_of("a.odt", odt(["Isi."], tracked=True)) == [
        "tracked changes (1 changed regions)"
    ]
    assert drafts_of("a.docx", docx(["Isi."])) == []
    assert drafts_of("a.odt", odt(["Isi."])) == []


def test_draft_markings_by_position_and_form() -> None:
    assert drafts_of("a.docx", docx(["Isi."], watermark="KONSEP")) == ["watermark KONSEP"]
    assert drafts_of("a.docx", docx(["Isi."], header=["Draft v2"])) == [
        "page header or footer line Draft v2"
    ]
    assert drafts_of("a.docx", docx(["RANCANGAN", "Isi."])) == ["marking line RANCANGAN"]
    assert drafts_of("a.docx", docx(["Isi."], core={"status": "Draft"})) == [
        "document property ContentStatus Draft"
    ]
    # prose, title case in a body, and mail bodies do not count
    assert drafts_of("a.docx", docx(["Rancangan peraturan ini telah ditetapkan."])) == []
    assert text_evidence("Isi\nKonsep\nisi", DOCUMENT) == []
    assert text_evidence("DRAFT\nisi surat", BODY) == []
    assert inspect_message(eml("Bahan", "DRAFT\nBerikut bahannya.")).drafts == ()


def test_pdf_review_annotations() -> None:
    assert drafts_of("a.pdf", pdf([["isi"]], annotations=["Highlight", "Text", "Text"])) == [
        "review annotations Highlight (1)",
        "review annotations Text (2)",
    ]
    assert drafts_of("a.pdf", pdf([["isi"]], annotations=["Link"])) == []
    # an annotation dictionary inside a compressed object stream (optimised PDFs)
    packed = zlib.compress(b"5 0 << /Type /Annot /Subtype /StrikeOut /Rect [0 0 9 9] >>")
    objstm = (
        b"<< /Type /ObjStm /N 1 /First 4 /Filter /FlateDecode /Length %d >>\nstream\n" % len(packed)
        + packed
        + b"\nendstream"
    )
    data = pdf_file(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Annots [5 0 R] >>",
            objstm,
        ]
    )
    assert b"StrikeOut" not in data
    assert pdf_review_annotations(data) == ["review annotations StrikeOut (1)"]


def test_xlsx_drawing_text_box_stamp() -> None:
    import io
    import zipfile

    buf = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(xlsx([["Bidang"], ["Umum"]]))) as src,
        zipfile.ZipFile(buf, "w") as dst,
    ):
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr(
            "xl/drawings/drawing1.xml",
            '<xdr:wsDr xmlns:xdr="http://schemas.openxmlformats.org/drawingml/2006/'
            'spreadsheetDrawing" xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/'
            'main"><xdr:sp><xdr:txBody><a:p><a:r><a:t>RAHASIA</a:t></a:r></a:p></xdr:txBody>'
            "</xdr:sp></xdr:wsDr>",
        )
    f = inspect_message(eml("x", attachments=[("a.xlsx", buf.getvalue())]))
    assert found(f) == [("RAHASIA", "RAHASIA", "marking line in the document")]
    assert f.labels[0].source == "attachment:a.xlsx:xl/drawings/drawing1.xml"


def test_aliases_far_inside_a_document_are_headings() -> None:
    """An alias alone on a line counts near the top or bottom of a document; further in,
    only the level names do (GENERAL or INTERNAL there is a section heading)."""
    body = ["Isi perjanjian kerja sama."] * 20
    policy_scheme = LabelScheme(
        levels=S.levels, aliases={**S.aliases, "general": "TERBATAS"}, guids={}
    )
    heading = "\n".join([*body, "GENERAL", *body])
    assert text_markings(heading, policy_scheme, DOCUMENT) == []
    assert [m.raw for m in text_markings("GENERAL\n" + heading, policy_scheme, DOCUMENT)] == [
        "GENERAL"
    ]
    assert [m.raw for m in text_markings(heading.replace("GENERAL", "TERBATAS"), S, DOCUMENT)] == [
        "TERBATAS"
    ]


def test_pdf_watermark_marked_content() -> None:
    """Text inside ``/Artifact << /Subtype /Watermark >>`` marked content is a watermark:
    title case counts there, as does a KONSEP draft watermark."""
    paper = pdf([["Isi laporan."] * 5], watermark="Rahasia")
    f = inspect_message(eml("x", attachments=[("a.pdf", paper)]))
    assert ("Rahasia", "RAHASIA", "watermark") in found(f)
    assert f.labels[-1].source == "attachment:a.pdf:watermark"
    draft = pdf([["Isi laporan."] * 5], watermark="KONSEP")
    assert "watermark KONSEP" in drafts_of("a.pdf", draft)
    assert drafts_of("a.pdf", pdf([["Isi laporan."] * 5])) == []
