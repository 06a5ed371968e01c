"""PDFs as re-saving tools leave them: fonts inside compressed object streams, and
permissions set with an owner password only. Made at test time by real tools: tesseract
(a searchable scan, as OCRmyPDF makes: an invisible Type0 text layer with a ToUnicode
map) and qpdf (object streams, encryption)."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import zlib
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.bench_ocr import letter, save
from bench.messages import pdf, pdf_file
from milter.inspect import bounded, documents, drafts, inspect_message
from milter.inspect import pdf as pdf_module
from milter.inspect.findings import ENCRYPTED, UNSCANNABLE, Findings, Part
from milter.inspect.pdf import inspect_pdf
from tests.inspect.test_fastpaths import _old_content_text

pytestmark = pytest.mark.skipif(shutil.which("qpdf") is None, reason="qpdf not installed")

LINES = ["RAHASIA", "NOTA DINAS", "Nomor 12 tahun 2026 tentang anggaran pengadaan", "RAHASIA"]


def qpdf(src: Path, dst: Path, *args: str) -> bytes:
    subprocess.run(["qpdf", *args, str(src), str(dst)], check=True, timeout=60)
    return dst.read_bytes()


def mail(data: bytes, name: str = "nota.pdf") -> bytes:
    msg = MIMEMultipart()
    msg["From"], msg["To"], msg["Subject"] = "budi@bpkd.jakarta.go.id", "sari@gmail.com", "Nota"
    msg.attach(MIMEText("Terlampir.", "plain", "utf-8"))
    doc = MIMEApplication(data, "pdf")
    doc.add_header("Content-Disposition", "attachment", filename=name)
    msg.attach(doc)
    return msg.as_bytes()


def the_pdf(found: Findings) -> Part:
    return next(p for p in found.parts if p.filename == "nota.pdf")


@pytest.fixture(scope="module")
def searchable_scan(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A scanned letter with tesseract's text layer (GlyphLessFont, Identity-H, a
    ToUnicode CMap), re-saved by qpdf with object streams."""
    if shutil.which("tesseract") is None:
        pytest.skip("tesseract not installed")
    folder = tmp_path_factory.mktemp("searchable")
    page, _ = letter(dpi=200, top="RAHASIA", lines=6, seed=7)
    png = folder / "scan.png"
    png.write_bytes(save(page, "png", 200))
    subprocess.run(
        ["tesseract", str(png), str(folder / "ocr"), "-l", "ind+eng", "pdf"],
        check=True,
        timeout=120,
        capture_output=True,
        env={"OMP_THREAD_LIMIT": "1", "PATH": "/usr/bin:/bin"},
    )
    raw = (folder / "ocr.pdf").read_bytes()
    assert b"/ToUnicode" in raw  # tesseract writes its font dictionaries in the clear
    return qpdf(folder / "ocr.pdf", folder / "objstm.pdf", "--object-streams=generate")


def test_fonts_in_object_streams_are_read_through_the_renderer(searchable_scan: bytes) -> None:
    # What made the old check fail: no font marker left in the raw bytes.
    assert b"/ToUnicode" not in searchable_scan and b"/Type0" not in searchable_scan
    result = inspect_pdf(
        searchable_scan, max_text=1 << 20, max_expand=100 << 20, deadline=float("inf")
    )
    text = "\n".join(result.text)
    assert "PEMERINTAH PROVINSI DKI JAKARTA" in text
    assert result.image_pages == []  # a text layer: no OCR needed
    found = inspect_message(mail(searchable_scan))
    assert found.classification == "RAHASIA"
    assert all(label.ocr is None for label in found.labels)


def test_simple_fonts_in_object_streams_still_take_the_cheap_path(tmp_path: Path) -> None:
    src = tmp_path / "plain.pdf"
    src.write_bytes(pdf(LINES))
    data = qpdf(src, tmp_path / "objstm.pdf", "--object-streams=generate")
    assert b"/ObjStm" in data
    found = inspect_message(mail(data))
    assert found.classification == "RAHASIA"
    assert "anggaran pengadaan" in found.text


def test_owner_password_only_pdf_is_read_and_not_encrypted(tmp_path: Path) -> None:
    src = tmp_path / "plain.pdf"
    src.write_bytes(pdf(LINES, info={"Title": "Nota dinas", "Klasifikasi": "RAHASIA"}))
    data = qpdf(src, tmp_path / "owner.pdf", "--encrypt", "", "owner-secret", "256", "--")
    assert b"/Encrypt" in data and b"anggaran" not in data
    found = inspect_message(mail(data))
    part = the_pdf(found)
    assert not part.has(ENCRYPTED) and not part.has(UNSCANNABLE), part.reason
    assert found.classification == "RAHASIA"
    assert "anggaran pengadaan" in found.text
    # The Info value is encrypted in the file: read decrypted, not as ciphertext.
    info = [label for label in found.labels if label.source.endswith(":info")]
    assert [(label.raw, label.level) for label in info] == [("RAHASIA", "RAHASIA")]


def test_user_password_pdf_stays_encrypted(tmp_path: Path) -> None:
    src = tmp_path / "plain.pdf"
    src.write_bytes(pdf(LINES))
    data = qpdf(src, tmp_path / "user.pdf", "--encrypt", "user-secret", "owner-secret", "256", "--")
    found = inspect_message(mail(data))
    part = the_pdf(found)
    assert part.has(ENCRYPTED) and part.has(UNSCANNABLE)
    assert part.reason == "encrypted PDF"
    assert "anggaran" not in found.text


# --- One pass over a PDF gives what the separate readers gave --------------------------
#
# ``inspect_pdf`` scans the raw bytes once for what several patterns looked for, and
# shares the streams it inflates with the readers of info fields, review annotations
# and watermarks. Compared here with the separate scans and readers, on generated input.

_OLD_ENCRYPT = re.compile(rb"/Encrypt\s+\d+\s+\d+\s+R")
_OLD_OBJ = re.compile(rb"(?<!\d)\d+\s+\d+\s+obj\b")

_NAME_PIECES = [
    b"/Title",
    b"/Subject",
    b"/Keywords",
    b"/Klasifikasi",
    b"/MSIP_Label_0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0_Name",
    b"/Type0",
    b"/Type",
    b"/ObjStm",
    b"/Subtype",
    b"/Text",
    b"/Caret",
    b"/Annot",
    b"/Rect",
    b"/Encrypt",
    b"/Identity-H",
    b"/ToUnicode",
    b"/Differences",
    b" 5 0 R",
    b" 12",
    b"(RAHASIA)",
    b"(",
    b")",
    b"<",
    b">",
    b"<FEFF0041>",
    b"\\",
    b" ",
    b"\n",
    b"/",
    b"ab",
    b"0",
    b"x",
]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_NAME_PIECES), max_size=40))
def test_one_scan_of_the_raw_bytes_finds_what_each_pattern_found(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    found = pdf_module._scan_names(data)
    properties: list[tuple[str, str, str]] = []
    pdf_module._info_properties(data, "info", properties)
    assert found.properties == properties
    info = documents._PDF_INFO.finditer(data)
    assert found.info_fields == [(m.group(1), m.group(2)) for m in info]
    annotations = drafts._ANNOT.finditer(data)
    assert found.annotations == [(m.start(), m.end(), m.group(1).decode()) for m in annotations]
    assert found.object_streams == [m.end() for m in drafts._OBJSTM.finditer(data)]
    assert found.encrypt == (_OLD_ENCRYPT.search(data) is not None)
    assert found.fonts == any(marker in data for marker in pdf_module._COMPLEX_FONTS)


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(st.sampled_from([b"1", b"20", b" ", b"\n", b"obj", b"objx", b"x", b"<<", b"_"])),
    st.integers(0, 40),
)
def test_the_dictionary_before_a_stream_starts_after_the_last_obj(
    pieces: list[bytes], floor: int
) -> None:
    data = b"".join(pieces)
    head = data[floor:]
    last = None
    for m in _OLD_OBJ.finditer(head):
        last = m
    assert pdf_module._stream_dict(data, len(data), floor) == (head[last.end() :] if last else head)


def _deflated(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return zlib.compress(bytes(rng.choice(b"ab \n") for _ in range(size)))


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from([0, 1, 100, 5000, 300_000]),
    st.sampled_from(["whole", "cut", "tail", "corrupt", "empty"]),
    st.sampled_from([1, 50, 4000, 1 << 20]),
)
def test_a_small_stream_inflates_as_the_bounded_reader_has_it(
    size: int, shape: str, budget: int
) -> None:
    raw = _deflated(size, size)
    raw = {
        "whole": raw,
        "cut": raw[: len(raw) // 2],
        "tail": raw + b"\r\nxyz",
        "corrupt": raw[:2] + b"\xff" * 8 + raw[10:],
        "empty": b"",
    }[shape]
    whole = pdf_module._inflate_whole(raw, budget)
    if whole is None:
        return
    expected = bounded.inflate(raw, limit=budget, ratio=100.0)
    assert whole[0] == expected
    assert whole[1] == zlib.decompressobj().decompress(raw)


def _stream(dictionary: bytes, data: bytes) -> bytes:
    return dictionary + b"\nstream\n" + data + b"\nendstream"


_WATERMARKED = zlib.compress(
    b"q BT /F1 9 Tf (Laporan) Tj ET Q /Artifact << /Subtype /Watermark >> BDC BT "
    b"(KONSEP) Tj ET EMC BT (lanjut) Tj ET"
)
_OBJECTS = [
    b"<< /Type /Catalog /Pages 2 0 R >>",
    b"<< /Title (Laporan) /Subject <FEFF0041> /Keywords (RAHASIA) >>",
    b"<< /Type /Annot /Subtype /Highlight /Rect [0 0 1 1] >>",
    b"<< /Subtype /Text /Title (not an annotation) >>",
    _stream(b"<< /Length 9 /Filter /FlateDecode >>", _WATERMARKED),
    _stream(b"<< /Length 9 /Filter /FlateDecode >>", _WATERMARKED[:-20]),
    _stream(b"<< /Length 9 >>", b"/Artifact << /Subtype /Watermark >> BDC (DRAFT) Tj EMC"),
    _stream(
        b"<< /Type /XObject /Subtype /Form /PieceInfo << /Watermark 1 >> /Filter /FlateDecode >>",
        zlib.compress(b"BT (RANCANGAN) Tj ET"),
    ),
    _stream(
        b"<< /Type /ObjStm /N 2 /First 8 /Filter /FlateDecode >>",
        zlib.compress(
            b"8 0 9 40 << /Type /Annot /Subtype /StrikeOut /Rect [0 0 1 1] >> "
            b"<< /Title (Dalam objek) /Keywords (SANGAT RAHASIA) >>"
        ),
    ),
    _stream(b"<< /Type /ObjStm /Filter /FlateDecode >>", zlib.compress(b"x" * 10)[:-3]),
    _stream(b"<< /Filter /FlateDecode >>", zlib.compress(b"BT (a) Tj ET" * 30_000)),
    _stream(b"<< /Filter /FlateDecode >>", b"not zlib at all"),
    _stream(b"<< /Filter /LZWDecode >>", b"\x80\x0b\x60\x50"),
    b"(stream\n) endstream",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_OBJECTS), max_size=12), st.sampled_from([1 << 30, 3000]))
def test_shared_streams_give_what_each_reader_found_alone(
    objects: list[bytes], max_expand: int
) -> None:
    data = pdf_file([*objects, b"<< /Type /Catalog >>"])
    result = inspect_pdf(data, max_text=1 << 20, max_expand=max_expand, deadline=float("inf"))
    assert result.info_fields == documents.pdf_info_fields(data)
    assert result.review == drafts.pdf_review_annotations(data)
    if not result.encrypted:
        assert result.watermarks == documents.pdf_watermarks(data)


_LINE_PIECES = [
    b"(kata) Tj T*\n",
    b"(kata) Tj T*",
    b"(kata) TJ",
    b"() Tj T* ",
    b"(caf\xe9) Tj T*\n",
    b"(\xfe\xff\x00A) Tj T*\n",
    b"(a\\)b) Tj T*\n",
    b"(a (b) c) Tj T*\n",
    b"(open",
    b"(",
    b")",
    b"\\",
    b" ",
    b"\n",
    b"Tj",
    b"T*",
    b"'",
    b"[(x) -300 (y)] TJ",
    b"BT",
    b"ET",
    b"12 TL",
]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_LINE_PIECES), max_size=40))
def test_lines_of_shown_strings_read_as_token_by_token(pieces: list[bytes]) -> None:
    stream = b"BT " + b"".join(pieces)
    assert pdf_module._content_text(stream) == _old_content_text(stream)
