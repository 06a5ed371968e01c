"""The inspection pool with real child processes: a message past its hard budget is
stopped (the child killed and replaced) and reported unscannable, while the others
are answered; a child that dies or raises costs its message only. Scans are read in
the OCR lane beside it, and ordinary mail does not wait for them."""

from __future__ import annotations

import asyncio
import io
from email.mime.image import MIMEImage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from functools import partial
from typing import Any

import pytest

from bench.bench_ocr import letter
from milter.app.inspection import InspectionFailed, InspectionPool
from milter.config import InspectLimits, OcrConfig
from milter.inspect import inspect_message
from milter.inspect.findings import IMAGE_ONLY, UNSCANNABLE, Findings
from tests import inspection_probes


@pytest.fixture
async def pool() -> InspectionPool:
    p = InspectionPool(inspection_probes.slow_on_request, size=2, budget=1.5)
    await p.start()
    yield p  # type: ignore[misc]
    await p.close()


async def test_a_message_past_its_budget_is_stopped_and_the_others_go_on(
    pool: InspectionPool,
) -> None:
    slow = asyncio.create_task(pool.inspect(b"SLOW"))
    fast = await pool.inspect(b"ordinary message")
    assert fast.size == 16 and not fast.unscannable
    assert not slow.done()  # answered while the slow one was still being inspected
    stopped = await slow
    assert stopped.unscannable and "time budget" in stopped.unscannable[0]
    assert stopped.size == 4
    # The killed child was replaced: two messages at once are both served.
    again = await asyncio.gather(pool.inspect(b"a"), pool.inspect(b"bb"))
    assert [f.size for f in again] == [1, 2]


async def test_a_child_that_dies_fails_its_message_only(pool: InspectionPool) -> None:
    with pytest.raises(InspectionFailed, match="ended"):
        await pool.inspect(b"CRASH")
    assert (await pool.inspect(b"next")).size == 4


async def test_an_inspector_error_is_reported_and_the_child_kept(pool: InspectionPool) -> None:
    first = await pool.inspect(b"x")
    with pytest.raises(InspectionFailed, match="ValueError: probe failure"):
        await pool.inspect(b"RAISE")
    pids = {(await pool.inspect(b"y")).subject for _ in range(4)}
    assert first.subject in pids | {first.subject}
    assert len(pids) <= 2  # no child was replaced for an ordinary error


async def test_a_reloaded_inspector_retires_the_old_children(pool: InspectionPool) -> None:
    assert (await pool.inspect(b"x")).subject.startswith("pid ")
    pool.use(inspection_probes.tagged)
    results = await asyncio.gather(*(pool.inspect(b"x") for _ in range(4)))
    assert {f.subject for f in results} == {"tagged"}


# --- the OCR lane: real inspector, real tesseract -------------------------------------


def _scan_mail(pages: int, top: str | None, seed: int, name: str = "surat.tif") -> bytes:
    """A mail carrying a scanned letter of ``pages`` A4 pages at 200 dpi (a TIFF)."""
    image = MIMEImage(_tiff(pages, top, seed, lines=8), "tiff")
    image.add_header("Content-Disposition", "attachment", filename=name)
    return _mail("Surat", image)


def _mail(subject: str, *parts: MIMEImage | MIMEText) -> bytes:
    msg = MIMEMultipart()
    msg["From"], msg["To"], msg["Subject"] = "budi@bpkd.jakarta.go.id", "sari@gmail.com", subject
    msg.attach(MIMEText("Terlampir surat yang diminta.", "plain", "utf-8"))
    for part in parts:
        msg.attach(part)
    return msg.as_bytes()


def _inspector(ocr_seconds: float) -> partial[Findings]:
    return partial(inspect_message, limits=InspectLimits(ocr=OcrConfig(time_budget=ocr_seconds)))


async def test_ordinary_mail_is_answered_while_a_scan_is_read() -> None:
    # One inspection process: before OCR had its own lane, every message below waited
    # for the three pages of the scan to be read.
    pool = InspectionPool(_inspector(120), size=1, budget=20, ocr_budget=120, ocr_processes=1)
    lane = pool._ocr
    assert lane is not None
    reading = asyncio.Event()  # set when the scan's jobs go to the OCR lane
    read = lane.call

    async def call(request: Any, data: bytes, budget: float) -> tuple[Any, bytes | None]:
        reading.set()
        return await read(request, data, budget)

    lane.call = call  # type: ignore[method-assign]
    await pool.start()
    try:
        scan = asyncio.create_task(pool.inspect(_scan_mail(3, "SANGAT RAHASIA", seed=11)))
        ordinary = [_mail(f"Undangan rapat {i}") for i in range(10)]
        await reading.wait()
        answered = [await pool.inspect(data) for data in ordinary]
        assert not scan.done()  # all ten answered while the scan was still being read
        assert [f.subject for f in answered] == [f"Undangan rapat {i}" for i in range(10)]
        assert all(f.classification is None and not f.any_unscannable() for f in answered)
        found = await scan
    finally:
        await pool.close()
    # The label read by the OCR lane, with where it sat, as inline OCR reports it.
    assert found.classification == "SANGAT_RAHASIA"
    read = [label for label in found.labels if label.ocr is not None]
    assert read and read[0].source.startswith("attachment:surat.tif:ocr:page1:top")
    assert read[0].ocr is not None and read[0].ocr.band == "top"
    [tif] = [p for p in found.parts if p.filename == "surat.tif"]
    assert tif.has(IMAGE_ONLY) and not tif.has(UNSCANNABLE)


async def test_the_ocr_lane_kills_a_job_past_its_budget_and_reports_it() -> None:
    # The engine is given two minutes (it would not stop by itself); the lane's hard
    # budget (1 s and a quarter) ends the job, and the file says why it was not read.
    pool = InspectionPool(_inspector(120), size=1, budget=20, ocr_budget=1.0, ocr_processes=1)
    await pool.start()
    try:
        data = _scan_mail(3, "RAHASIA", seed=21)
        found = await pool.inspect(data)
        [tif] = [p for p in found.parts if p.filename == "surat.tif"]
        assert tif.has(UNSCANNABLE) and tif.has(IMAGE_ONLY)
        assert tif.reason == "OCR stopped at its time budget (1.25 s)"
        assert not [label for label in found.labels if label.ocr is not None]
        # The rest of the message is still inspected: the body, the subject.
        assert found.subject == "Surat" and "Terlampir" in found.text
        # The killed OCR process is replaced: the next scan is read (and stopped) again,
        # and mail without images never went near the lane.
        again = await asyncio.gather(pool.inspect(data), pool.inspect(_mail("Biasa")))
        assert [p.reason for p in again[0].parts if p.filename == "surat.tif"] == [tif.reason]
        assert not again[1].any_unscannable()
    finally:
        await pool.close()


async def test_findings_through_the_ocr_lane_are_those_of_inline_ocr() -> None:
    """Files in order, a page limit shared across them, text after the scans: the
    second walk applies each outcome where the inline walk read it."""
    limits = InspectLimits(ocr=OcrConfig(time_budget=120, max_pages=2))
    inspector = partial(inspect_message, limits=limits)
    two = MIMEImage(_tiff(2, "RAHASIA", seed=31), "tiff")
    two.add_header("Content-Disposition", "attachment", filename="dua.tif")
    one = MIMEImage(_tiff(1, "SANGAT RAHASIA", seed=33), "tiff")
    one.add_header("Content-Disposition", "attachment", filename="satu.tif")
    note = MIMEText("NIK 3171011203850001 tercantum di surat.", "plain", "utf-8")
    note.add_header("Content-Disposition", "attachment", filename="catatan.txt")
    data = _mail("Surat masuk", two, one, note)
    pool = InspectionPool(inspector, size=1, budget=20, ocr_budget=120, ocr_processes=1)
    await pool.start()
    try:
        through_pool = await pool.inspect(data)
    finally:
        await pool.close()
    inline = inspector(data)
    assert through_pool == inline
    [satu] = [p for p in inline.parts if p.filename == "satu.tif"]
    assert satu.reason == "OCR page limit reached: 1 of 1 image pages not read"
    assert inline.classification == "RAHASIA"


def _tiff(pages: int, top: str | None, seed: int, lines: int = 4) -> bytes:
    frames = [letter(dpi=200, top=top, lines=lines, seed=seed + i)[0] for i in range(pages)]
    out = io.BytesIO()
    frames[0].save(out, "TIFF", save_all=True, append_images=frames[1:], dpi=(200, 200))
    return out.getvalue()
