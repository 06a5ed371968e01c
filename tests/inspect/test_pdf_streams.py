"""PDFs as re-saving tools leave them: fonts inside compressed object streams, and
permissions set with an owner password only. Made at test time by real tools: tesseract
(a searchable scan, as OCRmyPDF makes: an invisible Type0 text layer with a ToUnicode
map) and qpdf (object streams, encryption)."""

from __future__ import annotations

import shutil
import subprocess
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest

from bench.bench_ocr import letter, save
from bench.messages import pdf
from milter.inspect import inspect_message
from milter.inspect.findings import ENCRYPTED, UNSCANNABLE, Findings, Part
from milter.inspect.pdf import inspect_pdf

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
