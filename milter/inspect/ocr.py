"""OCR: the text of scanned and photographed letters, within a page and time budget.

Most official letters leave the province as a scan or a photo of the signed, stamped
paper, so an inspector that reads only text layers lets a scanned ``SANGAT RAHASIA``
letter through like a holiday photo. This module turns images (JPEG, PNG, TIFF
including G4 fax, GIF, BMP, WebP) and image-only PDF pages into text regions the
scanner reads markings and detectors from.

Perka ANRI 17/2011 puts the classification at the top and bottom centre of every page,
so each page is read in two passes: first the top and bottom bands of every page of a
file (a fraction of the pixels, where the marking almost always is), then the rest of
each page, for stamps and for the detectors, while the budget lasts. What the budget
leaves unread is reported (``unread``), never dropped.

Engine: tesseract through tesserocr, chosen by measurement over rapidocr (see
``bench/bench_ocr.py``): faster per page on CPU and more accurate on Indonesian. One
engine is loaded per process and reused, instead of a ``tesseract`` process per region.
Both engines stay selectable so the comparison can be repeated.

Where the pages are read: a file's pages become a ``Job`` (``plan``, which settles
without an engine what needs none: a header too large, pages past ``max_pages``). The
gateway reads jobs in OCR processes of their own and applies the outcomes on a second
walk (``Deferred``, ``milter.app.inspection``); ``milter inspect`` and ``check`` read
them in place (``execute``). Both give the same findings.

Dimensions are checked before any pixel is decoded (Pillow reads only the header on
open), so a 100,000 x 100,000 PNG header costs nothing but its finding.
"""

from __future__ import annotations

import io
import os
import re
import struct
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, ImageOps

from milter.config import OcrConfig

# OpenMP would start a thread per core for every page; the inspection pool already runs
# one process per core, and more threads only fight over the same two cores.
os.environ.setdefault("OMP_THREAD_LIMIT", "1")

TESSDATA_DIRS = (
    "/usr/share/tesseract-ocr/5/tessdata",
    "/usr/share/tesseract-ocr/4.00/tessdata",
    "/usr/share/tessdata",
    "/usr/local/share/tessdata",
)
# Raster formats Pillow decodes; anything else is not read as an image.
IMAGE_TYPES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/tiff",
        "image/gif",
        "image/bmp",
        "image/x-ms-bmp",
        "image/webp",
        "image/x-portable-pixmap",
        "image/x-portable-greymap",
        "image/x-portable-bitmap",
    }
)
# Where Office (``word/media``, ``xl/media``, ``ppt/media``) and ODF (``Pictures``)
# documents keep pasted pictures.
DOCUMENT_PICTURE = re.compile(r"(?:(?:word|xl|ppt)/media|Pictures)/[^/]+", re.IGNORECASE)
# Smaller than this on either side, an image is a spacer, a bullet or a tracking pixel:
# no line of text that a person could read fits in it.
MIN_SIDE = 24
# Pages are read at 200 dpi: on the letters of bench/bench_ocr.py tesseract reads them
# as accurately as at 300 dpi (body text 11 pt, markings 14 pt) in about half the time.
TARGET_DPI = 200
# A4 at 300 dpi: larger images are scaled down to it, which is all the detail text needs.
MAX_LONG_SIDE = 3508
# The top and bottom bands: a fifth of the page each holds the header and footer lines
# of a letter, and the stamp of the classification, with margin for a crooked scan.
BAND = 0.2


# What decoders raise on a broken or hostile file (Pillow's plugins are Python and fail
# in Python ways on truncated or contradictory headers).
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    MemoryError,
    IndexError,
    TypeError,
    ZeroDivisionError,
    struct.error,
)


@dataclass(frozen=True)
class Region:
    """Text read from one band of one page: ``page`` counts from 1, ``band`` is ``top``,
    ``bottom`` or ``page`` (the rest of the page), ``lines`` are (text, confidence 0..1)."""

    page: int
    band: str
    lines: tuple[tuple[str, float], ...]

    @property
    def text(self) -> str:
        return "\n".join(t for t, _ in self.lines)


@dataclass
class Outcome:
    """What OCR of one file gave: its regions, and why some of it was not read."""

    regions: list[Region] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)
    pages: int = 0  # pages (frames, PDF pages) the file has that were meant to be read
    src: str = ""  # the job it answers (``Job.src``), so a replay can check it


IMAGE = "image"
PDF = "pdf"


@dataclass(frozen=True)
class Job:
    """One file's image pages, to be read by an engine: an image file (every frame a page)
    or a PDF and its image-only pages (``pages``, 0-based).

    Everything that needs no engine (the header, the page count, ``max_pages``) was
    settled by ``plan`` when the job was made, so a job can be read in another process
    and its outcome is the one the inspecting process would have got: ``count`` is the
    pages the file has, ``allowed`` those of them within the message's page limit.
    """

    kind: str
    data: bytes
    src: str
    pages: tuple[int, ...] = ()
    count: int = 0
    allowed: int = 0


class Engine(Protocol):
    name: str

    def read(self, image: Image.Image, timeout: float = 0.0) -> list[tuple[str, float]]:
        """Lines of text in ``image`` with their confidence (0..1); ``timeout`` seconds
        (0: none) after which the engine stops and raises ``TimeoutError``."""
        ...


def tessdata() -> str:
    """The folder of Debian's trained models (tesseract-ocr-ind, tesseract-ocr-eng)."""
    env = os.environ.get("TESSDATA_PREFIX")
    for folder in (env, *TESSDATA_DIRS):
        if folder and (Path(folder) / "eng.traineddata").exists():
            return folder
    raise OSError("no tesseract language data (Debian: tesseract-ocr-ind, tesseract-ocr-eng)")


class TesseractEngine:
    """tesseract 5 (LSTM) in this process through tesserocr; its API object is kept."""

    name = "tesseract"

    def __init__(self, languages: Sequence[str]) -> None:
        import tesserocr

        self._tesserocr = tesserocr
        folder = tessdata()
        have = [lang for lang in languages if (Path(folder) / f"{lang}.traineddata").exists()]
        self.api = tesserocr.PyTessBaseAPI(
            path=folder.rstrip("/") + "/",
            lang="+".join(have or ["eng"]),
            psm=tesserocr.PSM.AUTO,
            oem=tesserocr.OEM.LSTM_ONLY,
        )

    def read(self, image: Image.Image, timeout: float = 0.0) -> list[tuple[str, float]]:
        tess = self._tesserocr
        api = self.api
        api.SetImage(image)
        if not api.Recognize(timeout=int(timeout * 1000) if timeout > 0 else 0):
            api.Clear()
            raise TimeoutError("OCR stopped at its time budget")
        lines: list[tuple[str, float]] = []
        level = tess.RIL.TEXTLINE
        for item in tess.iterate_level(api.GetIterator(), level):
            try:
                text = item.GetUTF8Text(level)
            except RuntimeError:  # an empty line (a box with no text): nothing to keep
                continue
            if text and text.strip():
                lines.append((text.strip(), max(0.0, item.Confidence(level)) / 100))
        api.Clear()
        return lines


class RapidEngine:
    """PP-OCRv4 (ONNX, models in the rapidocr-onnxruntime wheel): the compared engine."""

    name = "rapidocr"

    def __init__(self, languages: Sequence[str]) -> None:
        from rapidocr_onnxruntime import RapidOCR

        self.engine = RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1)

    def read(self, image: Image.Image, timeout: float = 0.0) -> list[tuple[str, float]]:
        import numpy

        started = time.monotonic()
        result: Any
        result, _ = self.engine(numpy.asarray(image.convert("RGB")))
        if timeout > 0 and time.monotonic() - started > timeout:
            raise TimeoutError("OCR stopped at its time budget")
        return [(str(text), float(score)) for _box, text, score in result or ()]


@lru_cache(maxsize=4)
def engine(name: str, languages: tuple[str, ...]) -> Engine:
    """One engine per process and configuration: loading the models costs more than a band."""
    if name == "rapidocr":
        return RapidEngine(languages)
    return TesseractEngine(languages)


# --- images -----------------------------------------------------------------------


def open_image(data: bytes, max_pixels: int) -> tuple[Image.Image | None, str | None]:
    """The image in ``data``, opened but not decoded, and why it cannot be read.

    Pillow reads only the header here; the size is checked against ``max_pixels``
    before a pixel is decoded. Pillow's own bomb check (``MAX_IMAGE_PIXELS``) would
    warn or raise on the same header: its error says the same thing, and its warning is
    silenced since the limit here is the configured one.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        return None, "image too large to read (decompression bomb)"
    except _DECODE_ERRORS as exc:
        return None, f"unreadable image: {type(exc).__name__}"
    width, height = img.size
    if width * height > max_pixels and img.format == "JPEG":
        # A 48-megapixel phone photo of a letter: JPEG decodes at 1/2, 1/4 or 1/8 scale
        # directly (DCT scaling), never holding the full size, and still has the detail
        # a page of text needs.
        for k in (2, 4, 8):
            if (width // k) * (height // k) <= max_pixels:
                img.draft("L", (width // k, height // k))
                dpi = image_dpi(img)
                if dpi:
                    img.info["dpi"] = (dpi * img.size[0] / width,) * 2
                break
        width, height = img.size
    if width * height > max_pixels:
        return None, f"image too large to read ({width} x {height} pixels)"
    return img, None


def frames(img: Image.Image) -> int:
    """Pages of a multi-page TIFF (a fax), frames of a GIF; 1 for everything else."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return max(1, int(getattr(img, "n_frames", 1)))
    except (Image.DecompressionBombError, *_DECODE_ERRORS):
        return 1


def decode(img: Image.Image, index: int, max_pixels: int) -> Image.Image:
    """Frame ``index`` decoded; frames of a TIFF may differ in size, so each frame's
    header is checked before its pixels are."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if index:
            img.seek(index)
        if img.size[0] * img.size[1] > max_pixels:
            raise ValueError("frame too large")
        img.load()
    return img


def prepare(img: Image.Image, *, dpi: float | None = None) -> Image.Image:
    """Grayscale at about ``TARGET_DPI``, contrast stretched: what the engines read best.

    ``dpi`` comes from the file (scanner output says it) or the PDF render; without it
    a small image is enlarged (a phone photo of a letter or a pasted snippet has small
    letters) and a large one brought down to A4 at 300 dpi. Binarisation is left to
    tesseract's own (Otsu, adaptive per region), which copes better with stamps and
    uneven light than a global threshold here.
    """
    if img.mode in ("1", "L"):
        gray = img.convert("L")
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        ground = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        gray = Image.alpha_composite(ground, rgba).convert("L")
    elif img.mode.startswith("I"):
        gray = img.convert("I").point(lambda v: v / 256).convert("L")  # 16-bit scans
    else:
        gray = img.convert("L")
    width, height = gray.size
    long_side = max(width, height)
    if dpi and 50 <= dpi <= 2400:
        scale = TARGET_DPI / dpi
    elif long_side < 1200:
        scale = 2.0
    else:
        scale = 1.0
    scale = min(scale, MAX_LONG_SIDE / long_side, 3.0)
    if abs(scale - 1.0) > 0.05:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
        gray = gray.resize(size, resample)
    return ImageOps.autocontrast(gray, cutoff=1)


def image_dpi(img: Image.Image) -> float | None:
    raw = img.info.get("dpi")
    try:
        value = float(raw[0]) if raw else 0.0
    except (TypeError, ValueError, IndexError):
        return None
    return value if value > 1 else None


def bands(page: Image.Image) -> Iterator[tuple[str, Image.Image]]:
    """The top and bottom bands of a page, or the page whole when it is too low or too
    wide to be a page (a snippet, a stamp, a banner, a logo)."""
    width, height = page.size
    band = int(height * BAND)
    if height < 4 * MIN_SIDE or width > 3 * height:
        yield "page", page
        return
    yield "top", page.crop((0, 0, width, band))
    yield "bottom", page.crop((0, height - band, width, height))


def middle(page: Image.Image) -> Image.Image:
    """The page between the bands, overlapping them a little so a line cut by a band's
    edge is read whole once."""
    width, height = page.size
    band = int(height * BAND)
    lap = int(height * 0.03)
    return page.crop((0, max(0, band - lap), width, min(height, height - band + lap)))


# --- the budget and the two passes ------------------------------------------------


class Budget:
    """One message's OCR allowance: pages and seconds, shared by all its files."""

    def __init__(self, config: OcrConfig) -> None:
        self.config = config
        self.pages = 0
        self.spent = 0.0

    @property
    def left(self) -> float:
        return self.config.time_budget - self.spent

    def engine(self) -> Engine:
        return engine(self.config.engine, tuple(self.config.languages))


PageSource = Callable[[int], Image.Image]  # page index -> prepared page


def page_limit(count: int, allowed: int) -> str:
    return f"OCR page limit reached: {count - allowed} of {count} image pages not read"


def plan(
    kind: str, data: bytes, src: str, budget: Budget, pages: Sequence[int] = ()
) -> Job | Outcome:
    """The job for one file's image pages, or its outcome when no engine is needed.

    Cheap and deterministic, so the inspecting process runs it whether the pages are
    then read in place or by the OCR processes: an image too large or too small, and
    pages past ``max_pages``, are settled here (the header only is read), and the
    pages the job may read are charged to the message's page budget.
    """
    if kind == IMAGE:
        img, reason = open_image(data, budget.config.max_pixels)
        if img is None:
            return Outcome(unread=[reason or "unreadable image"], pages=1, src=src)
        if min(img.size) < MIN_SIDE:
            return Outcome(src=src)
        count = frames(img)
    else:
        count = len(pages)
    allowed = max(0, min(count, budget.config.max_pages - budget.pages))
    if allowed == 0:
        return Outcome(unread=[page_limit(count, 0)], pages=count, src=src)
    budget.pages += allowed
    return Job(kind, data, src, tuple(pages), count, allowed)


def execute(job: Job, budget: Budget) -> Outcome:
    """Read ``job`` within what is left of ``budget``; never raises: a file the decoders
    or the engine choke on is an outcome with the reason, like any page not read."""
    try:
        outcome = read_pdf(job, budget) if job.kind == PDF else read_image(job, budget)
    except Image.DecompressionBombError:
        outcome = Outcome(unread=["image too large to read (decompression bomb)"], pages=job.count)
    except Exception as exc:  # a hostile file must cost its pages, not the message
        outcome = Outcome(unread=[f"OCR failed: {type(exc).__name__}"], pages=job.count)
    outcome.src = job.src
    return outcome


def run_jobs(config: OcrConfig, jobs: Sequence[Job]) -> list[Outcome]:
    """The OCR processes' side: one message's jobs, in the order the walk made them,
    sharing one time budget as they would have in the inspecting process."""
    budget = Budget(config)
    return [execute(job, budget) for job in jobs]


class Deferred:
    """OCR left to the OCR processes (``milter.app.inspection``), in two walks.

    The first walk records the jobs (``jobs``) and applies nothing for them; the second
    walk, given the ``outcomes`` the OCR processes returned (or the reason they returned
    none, ``failed``), applies each at the very point of the walk where the first one
    made its job. Labels, text, detectors, drafts and the files' reasons then come out
    in the order, and with the limits, of a walk that read the pages in place.
    """

    def __init__(
        self, outcomes: Sequence[Outcome] | None = None, *, failed: str | None = None
    ) -> None:
        self.jobs: list[Job] = []
        self.config: OcrConfig | None = None
        self._outcomes = list(outcomes) if outcomes is not None else None
        self._failed = failed
        self._next = 0

    def take(self, job: Job, config: OcrConfig) -> Outcome | None:
        """The outcome of ``job`` on the second walk; None on the first (recorded)."""
        if self._failed is not None:
            return Outcome(unread=[self._failed], pages=job.count, src=job.src)
        if self._outcomes is None:
            self.jobs.append(job)
            self.config = config
            return None
        index, self._next = self._next, self._next + 1
        if index < len(self._outcomes) and self._outcomes[index].src == job.src:
            return self._outcomes[index]
        # The walk did not make the same jobs twice (it ran out of time at another point).
        return Outcome(unread=["OCR result not matched to the file"], pages=job.count, src=job.src)


def read_pages(job: Job, load: PageSource, budget: Budget) -> Outcome:
    """Bands of every page first, then the rest of each page, within ``budget``.

    ``load`` renders or decodes one page (prepared); its cost counts against the
    budget like recognition does. Pages past ``max_pages`` (``job.allowed``) and time
    past the budget leave a reason in ``unread``.
    """
    count, allowed = job.count, job.allowed
    outcome = Outcome(pages=count)
    if allowed < count:
        outcome.unread.append(page_limit(count, allowed))
    try:
        ocr = budget.engine()
    except (OSError, RuntimeError, ImportError) as exc:
        outcome.unread.append(f"OCR unavailable: {exc}")
        return outcome
    pages: list[tuple[int, Image.Image]] = []  # read in bands, the rest still to read
    done = 0  # pages read in full
    stopped = False
    for index in range(allowed):
        if budget.left <= 0:
            stopped = True
            break
        started = time.monotonic()
        try:
            try:
                page = load(index)
            except Image.DecompressionBombError:
                outcome.unread.append(f"page {index + 1} too large to read")
                done += 1
                continue
            except _DECODE_ERRORS as exc:
                outcome.unread.append(f"page {index + 1} unreadable: {type(exc).__name__}")
                done += 1
                continue
            for band, region in bands(page):
                left = budget.left - (time.monotonic() - started)
                if left <= 0:
                    raise TimeoutError
                lines = ocr.read(region, timeout=left)
                outcome.regions.append(Region(index + 1, band, tuple(lines)))
                if band == "page":
                    done += 1
                elif band == "bottom":
                    pages.append((index, page))
        except TimeoutError:
            stopped = True
            break
        except RuntimeError as exc:  # the engine failed on this page; the rest may read
            outcome.unread.append(f"page {index + 1} not read: OCR failed ({exc})")
            done += 1
        finally:
            budget.spent += time.monotonic() - started
    for index, page in [] if stopped else pages:
        if budget.left <= 0:
            break
        started = time.monotonic()
        try:
            lines = ocr.read(middle(page), timeout=budget.left)
        except TimeoutError:
            break
        except RuntimeError as exc:
            outcome.unread.append(f"page {index + 1} not read: OCR failed ({exc})")
            done += 1
            continue
        finally:
            budget.spent += time.monotonic() - started
        outcome.regions.append(Region(index + 1, "page", tuple(lines)))
        done += 1
    if done < allowed:
        outcome.unread.append(
            f"OCR time budget reached ({budget.config.time_budget:g} s): "
            f"{allowed - done} of {count} image pages not read in full"
        )
    return outcome


def read_image(job: Job, budget: Budget) -> Outcome:
    """OCR of an image file: every frame of a multi-page TIFF is a page."""
    img, reason = open_image(job.data, budget.config.max_pixels)
    if img is None:  # ``plan`` opened it already; a file is not read twice differently
        return Outcome(unread=[reason or "unreadable image"], pages=1)
    dpi = image_dpi(img)

    def load(index: int) -> Image.Image:
        return prepare(decode(img, index, budget.config.max_pixels), dpi=dpi)

    return read_pages(job, load, budget)


def read_pdf(job: Job, budget: Budget) -> Outcome:
    """OCR of the image-only pages of a PDF (0-based ``job.pages``), each rendered in gray
    at ``TARGET_DPI``, or less when the page would pass ``max_pixels``."""
    import pypdfium2 as pdfium

    pages = job.pages
    try:
        doc = pdfium.PdfDocument(job.data)
    except (pdfium.PdfiumError, ValueError, OSError) as exc:
        return Outcome(unread=[f"unreadable PDF for OCR: {type(exc).__name__}"], pages=len(pages))
    try:

        def load(index: int) -> Image.Image:
            page = doc[pages[index]]
            try:
                width, height = page.get_size()
                scale = TARGET_DPI / 72
                area = max(1.0, width * height)
                scale = min(scale, (budget.config.max_pixels / area) ** 0.5)
                scale = min(scale, MAX_LONG_SIDE / max(width, height, 1.0))
                bitmap = page.render(scale=scale, grayscale=True)
                try:
                    return prepare(bitmap.to_pil(), dpi=TARGET_DPI)
                finally:
                    bitmap.close()
            finally:
                page.close()

        outcome = read_pages(job, load, budget)
    finally:
        doc.close()
    # Regions count pages of the PDF, not of the list of image-only pages.
    outcome.regions = [Region(pages[r.page - 1] + 1, r.band, r.lines) for r in outcome.regions]
    return outcome
