"""Scanned and photographed letters: markings read by OCR, and what OCR could not read
reported, never dropped.

Scans are drawn at test time (``bench.bench_ocr.letter``: DejaVu Sans on A4 with noise
and a slight skew) and saved by real encoders (Pillow's JPEG, PNG and TIFF G4, img2pdf);
tesseract reads them.
"""

from __future__ import annotations

import io
import json
import shutil
import smtplib
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from email.mime.application import MIMEApplication
from email.mime.image import MIMEImage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import pytest

from bench.bench_ocr import letter, photo, save
from milter.app.inspection import InspectionPool
from milter.cli import main
from milter.config import InspectLimits, OcrConfig
from milter.inspect import inspect_message, ocr
from milter.inspect.findings import IMAGE_ONLY, UNSCANNABLE, Findings, Label
from tests.conftest import ROOT, Sink

DPI = 200


@lru_cache(maxsize=8)
def scan(fmt: str, top: str | None = None, stamp_text: str | None = None, seed: int = 1) -> bytes:
    page, _ = letter(dpi=DPI, top=top, stamp_text=stamp_text, lines=8, seed=seed)
    return save(page, fmt, DPI)


def mail(*parts: MIMEImage | MIMEApplication | MIMEText, subject: str = "Surat") -> bytes:
    msg = MIMEMultipart()
    msg["From"], msg["To"], msg["Subject"] = "budi@bpkd.jakarta.go.id", "sari@gmail.com", subject
    msg.attach(MIMEText("Terlampir surat yang diminta.", "plain", "utf-8"))
    for part in parts:
        msg.attach(part)
    return msg.as_bytes()


def attached(data: bytes, subtype: str, name: str) -> MIMEImage:
    part = MIMEImage(data, subtype)
    part.add_header("Content-Disposition", "attachment", filename=name)
    return part


def ocr_labels(found: Findings) -> list[Label]:
    return [label for label in found.labels if label.ocr is not None]


def part(found: Findings, name: str) -> Any:
    return next(p for p in found.parts if p.filename == name)


def test_scanned_letter_marking_in_the_top_band_shows_in_inspect_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eml = tmp_path / "scan.eml"
    eml.write_bytes(mail(attached(scan("jpeg", top="SANGAT RAHASIA"), "jpeg", "surat.jpg")))
    assert main(["inspect", "--json", str(eml)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["classification"] == "SANGAT_RAHASIA"
    [label] = [x for x in data["labels"] if "ocr" in x]
    assert label["raw"] == "SANGAT RAHASIA"
    assert label["source"].startswith("attachment:surat.jpg:ocr:page1:top")
    assert label["ocr"]["source"] == "ocr"
    assert (label["ocr"]["page"], label["ocr"]["band"]) == (1, "top")
    assert label["ocr"]["confidence"] > 0.6
    [jpg] = [p for p in data["attachments"] if p["filename"] == "surat.jpg"]
    assert IMAGE_ONLY in jpg["flags"] and UNSCANNABLE not in jpg["flags"]
    assert main(["inspect", str(eml)]) == 0
    assert "attachment:surat.jpg:ocr:page1:top" in capsys.readouterr().out


def test_stamp_rotated_mid_page_is_read_from_the_page_pass() -> None:
    found = inspect_message(
        mail(attached(scan("png", stamp_text="RAHASIA", seed=2), "png", "surat.png"))
    )
    assert found.classification == "RAHASIA"
    [label] = ocr_labels(found)
    assert label.ocr is not None and label.ocr.band == "page"


def test_g4_fax_tiff() -> None:
    data = scan("g4", top="RAHASIA", seed=3)
    assert data[:4] in (b"II*\x00", b"MM\x00*")
    found = inspect_message(mail(attached(data, "tiff", "faks.tif")))
    assert found.classification == "RAHASIA"
    assert ocr_labels(found)[0].source.startswith("attachment:faks.tif:ocr:page1")


@pytest.mark.skipif(shutil.which("img2pdf") is None, reason="img2pdf not installed")
def test_image_only_pdf(tmp_path: Path) -> None:
    jpg = tmp_path / "scan.jpg"
    jpg.write_bytes(scan("jpeg", top="SANGAT RAHASIA"))
    pdf = tmp_path / "scan.pdf"
    subprocess.run(["img2pdf", str(jpg), "-o", str(pdf)], check=True, timeout=60)
    doc = MIMEApplication(pdf.read_bytes(), "pdf")
    doc.add_header("Content-Disposition", "attachment", filename="surat.pdf")
    found = inspect_message(mail(doc))
    assert found.classification == "SANGAT_RAHASIA"
    [label] = ocr_labels(found)
    assert label.ocr is not None and (label.ocr.page, label.ocr.band) == (1, "top")
    pdf_part = part(found, "surat.pdf")
    assert pdf_part.has(IMAGE_ONLY) and not pdf_part.has(UNSCANNABLE)


def docx_with_picture(picture: bytes) -> bytes:
    """A Word document whose only content is a pasted PNG (word/media/image1.png)."""
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/'
            '2006/content-types"><Default Extension="png" ContentType="image/png"/>'
            '<Override PartName="/word/document.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>',
        )
        z.writestr(
            "word/document.xml",
            f'<w:document xmlns:w="{w}"><w:body><w:p><w:r><w:drawing/></w:r></w:p>'
            "</w:body></w:document>",
        )
        z.writestr("word/media/image1.png", picture)
    return buf.getvalue()


def test_docx_with_a_pasted_scan() -> None:
    doc = MIMEApplication(
        docx_with_picture(scan("png", top="RAHASIA", seed=4)),
        "vnd.openxmlformats-officedocument.wordprocessingml.document",
    )
    doc.add_header("Content-Disposition", "attachment", filename="nota.docx")
    found = inspect_message(mail(doc))
    assert found.classification == "RAHASIA"
    assert ocr_labels(found)[0].source.startswith("attachment:nota.docx/word/media/image1.png")


def test_html_mail_with_an_inline_cid_image() -> None:
    related = MIMEMultipart("related")
    related.attach(
        MIMEText('<html><body><p>Mohon diperiksa.</p><img src="cid:scan1"></body></html>', "html")
    )
    image = MIMEImage(scan("jpeg", top="SANGAT RAHASIA"), "jpeg")
    image.add_header("Content-ID", "<scan1>")
    image.add_header("Content-Disposition", "inline")
    related.attach(image)
    related["From"], related["To"] = "budi@bpkd.jakarta.go.id", "sari@gmail.com"
    related["Subject"] = "Mohon diperiksa"
    found = inspect_message(related.as_bytes())
    assert found.classification == "SANGAT_RAHASIA"
    assert ocr_labels(found)


def test_holiday_photo_has_no_label_and_is_read() -> None:
    found = inspect_message(mail(attached(photo(), "jpeg", "pantai.jpg")))
    assert found.labels == ()
    assert not found.any_unscannable()
    assert part(found, "pantai.jpg").has(IMAGE_ONLY)


def test_ocr_over_budget_is_a_finding_with_its_reason() -> None:
    limits = InspectLimits(ocr=OcrConfig(time_budget=0.05))
    found = inspect_message(
        mail(attached(scan("jpeg", top="SANGAT RAHASIA"), "jpeg", "surat.jpg")), limits=limits
    )
    jpg = part(found, "surat.jpg")
    assert jpg.has(UNSCANNABLE) and jpg.has(IMAGE_ONLY)
    assert jpg.reason.startswith("OCR time budget reached (0.05 s)")


def test_pages_past_max_pages_are_a_finding() -> None:
    from PIL import Image

    frames = [Image.new("L", (400, 560), 255) for _ in range(3)]
    out = io.BytesIO()
    frames[0].save(out, "TIFF", save_all=True, append_images=frames[1:])
    limits = InspectLimits(ocr=OcrConfig(max_pages=1))
    found = inspect_message(mail(attached(out.getvalue(), "tiff", "faks.tif")), limits=limits)
    tif = part(found, "faks.tif")
    assert tif.has(UNSCANNABLE)
    assert tif.reason == "OCR page limit reached: 2 of 3 image pages not read"


def test_ocr_disabled_leaves_images_unscannable() -> None:
    limits = InspectLimits(ocr=OcrConfig(enabled=False))
    found = inspect_message(mail(attached(photo(), "jpeg", "pantai.jpg")), limits=limits)
    jpg = part(found, "pantai.jpg")
    assert jpg.has(UNSCANNABLE) and jpg.reason == "image not read: OCR disabled"


def png_bomb(width: int, height: int) -> bytes:
    """A PNG header claiming ``width`` x ``height`` pixels, with a few bytes of data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("size", [(100_000, 100_000), (8000, 8000)])
def test_decompression_bomb_header_is_unscannable_without_decoding(size: tuple[int, int]) -> None:
    started = time.monotonic()
    found = inspect_message(mail(attached(png_bomb(*size), "png", "bom.png")))
    assert time.monotonic() - started < 2  # 10^10 (or 64 million) pixels were never decoded
    bomb = part(found, "bom.png")
    assert bomb.has(UNSCANNABLE)
    assert bomb.reason.startswith("image too large to read")


def test_ocr_has_its_own_hard_budget_beside_the_inspection_processes() -> None:
    inspector = partial(inspect_message, limits=InspectLimits(ocr=OcrConfig(time_budget=20)))
    lane = InspectionPool(inspector, size=1, budget=15, ocr_budget=20, ocr_processes=1)
    assert (lane.budget, lane.ocr_budget) == (15, 25)
    # Without OCR processes the inspection processes read scans and are given the time.
    inline = InspectionPool(inspector, size=1, budget=15, ocr_budget=20, ocr_processes=0)
    assert (inline.budget, inline.ocr_budget) == (40, 0)
    off = InspectionPool(inspector, size=1, budget=15, ocr_budget=0)
    assert (off.budget, off.ocr_budget) == (15, 0)


def test_ocr_processes_are_configured_and_wired(tmp_path: Path) -> None:
    from milter import config
    from milter.app import wiring

    cfg = tmp_path / "gateway.yaml"
    base = (
        f'listen: ["127.0.0.1:2525"]\nupstream: "maildir:{tmp_path}/out"\n'
        f"policy: {ROOT}/policies/se-79-2019.yaml\n"
        f'routes: {{sanapati: "maildir:{tmp_path}/sanapati"}}\n'
    )
    cfg.write_text(base + "inspect: {time_budget: 4s, ocr: {processes: 2, time_budget: 8s}}\n")
    loaded = config.load(cfg)
    pipeline = wiring.make_pipeline(loaded, wiring.Components(policy=wiring.load_policy(loaded)))
    pool = pipeline.inspection
    assert pool is not None  # not started: no process was made
    # Inspection keeps its own hard budget; the OCR processes get 8 s and a quarter.
    assert (pool.budget, pool.ocr_budget) == (6, 10)
    cfg.write_text(base + "inspect: {ocr: {processes: -1}}\n")
    with pytest.raises(config.ConfigError, match=r"inspect\.ocr\.processes: expected an integer"):
        config.load(cfg)


def test_two_walks_with_ocr_elsewhere_give_the_findings_of_one_walk() -> None:
    """The first walk leaves the jobs (bounded by max_pages), the second applies their
    outcomes where the first left them: labels, text, detectors, the files' reasons and
    the page limit shared across files come out as from OCR read in place."""
    limits = InspectLimits(ocr=OcrConfig(max_pages=2))
    data = mail(
        attached(scan("png", top="RAHASIA", seed=6), "png", "satu.png"),
        attached(png_bomb(100_000, 100_000), "png", "bom.png"),
        attached(scan("jpeg", top="SANGAT RAHASIA", seed=7), "jpeg", "dua.jpg"),
        attached(scan("jpeg", top="RAHASIA", seed=8), "jpeg", "tiga.jpg"),
        MIMEText("Rahasia: 7 cara hemat", "plain", "utf-8"),
    )
    inline = inspect_message(data, limits=limits)
    first = ocr.Deferred()
    walked = inspect_message(data, limits=limits, ocr_lane=first)
    # Only the two pages within max_pages became jobs; the bomb and the third scan
    # were settled without an engine, in the first walk.
    assert [job.src for job in first.jobs] == ["attachment:satu.png", "attachment:dua.jpg"]
    assert first.config == limits.ocr
    assert not ocr_labels(walked) and walked.classification is None
    outcomes = ocr.run_jobs(limits.ocr, first.jobs)
    second = inspect_message(data, limits=limits, ocr_lane=ocr.Deferred(outcomes))
    assert second == inline
    assert inline.classification == "SANGAT_RAHASIA"
    assert part(inline, "tiga.jpg").reason == "OCR page limit reached: 1 of 1 image pages not read"
    assert part(inline, "bom.png").reason.startswith("image too large to read")


def test_ocr_that_gave_nothing_back_is_a_reason_on_each_file() -> None:
    data = mail(
        attached(scan("jpeg", top="SANGAT RAHASIA"), "jpeg", "surat.jpg"),
        attached(photo(), "jpeg", "pantai.jpg"),
    )
    reason = "OCR stopped at its time budget (25 s)"
    found = inspect_message(data, ocr_lane=ocr.Deferred(failed=reason))
    for name in ("surat.jpg", "pantai.jpg"):
        assert part(found, name).has(UNSCANNABLE) and part(found, name).reason == reason
    assert found.any_unscannable() and not ocr_labels(found)


def test_a_job_the_decoders_choke_on_is_an_outcome_not_an_exception() -> None:
    good = scan("png", seed=9)
    broken = good[:200] + bytes(len(good) - 200)  # header intact, pixel data garbage
    budget = ocr.Budget(OcrConfig())
    job = ocr.plan(ocr.IMAGE, broken, "attachment:rusak.png", budget)
    assert isinstance(job, ocr.Job) and (job.count, job.allowed) == (1, 1)
    [outcome] = ocr.run_jobs(OcrConfig(), [job])
    assert outcome.src == "attachment:rusak.png"
    assert outcome.unread and not outcome.regions
    pdf = ocr.Job(ocr.PDF, b"%PDF-1.4 not really", "attachment:x.pdf", (0,), 1, 1)
    [outcome] = ocr.run_jobs(OcrConfig(), [pdf])
    assert outcome.unread[0].startswith("unreadable PDF for OCR")


def test_scanned_rahasia_letter_to_gmail_is_held_through_the_gateway(
    gateway_factory: Any, sink: Sink, tmp_path: Path
) -> None:
    gw = gateway_factory(
        upstream=f"smtp://127.0.0.1:{sink.port}",
        routes={"sanapati": {"url": f"maildir:{tmp_path}/sanapati"}},
        policy=str(ROOT / "policies" / "se-79-2019.yaml"),
        notices={"enabled": False},
        inspect={"time_budget": "5s", "processes": 1, "ocr": {"time_budget": "30s"}},
    )
    data = mail(attached(scan("jpeg", top="RAHASIA", seed=5), "jpeg", "surat.jpg"))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=90) as s:
        s.sendmail("budi@bpkd.jakarta.go.id", ["sari@gmail.com"], data)
    r = subprocess.run(
        [sys.executable, "-m", "milter", "-c", str(gw.config_path), "quarantine", "list", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    [held] = json.loads(r.stdout)
    assert held["classification"] == "RAHASIA"
    assert held["recipients"] == ["sari@gmail.com"]
    assert all(m.mail_from in ("", "<>") for m in sink.messages)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "milter",
            "-c",
            str(gw.config_path),
            "quarantine",
            "show",
            held["id"],
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert '"source": "ocr"' in r.stdout and "surat.jpg:ocr:page1:top" in r.stdout
    # The same inspection process takes the next message, larger than a pipe's buffer
    # both ways (uvloop left the pipe non-blocking after the first reply once).
    rows = "".join(f"{i};Kegiatan rapat koordinasi wilayah {i}\n" for i in range(8000))
    table = MIMEApplication(rows.encode(), "octet-stream")
    table.add_header("Content-Disposition", "attachment", filename="jadwal.csv")
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=90) as s:
        s.sendmail("budi@bpkd.jakarta.go.id", ["sari@gmail.com"], mail(table))
    [got] = [m for m in sink.wait_for(1) if m.mail_from not in ("", "<>")]
    assert got.rcpt_tos == ["sari@gmail.com"]
