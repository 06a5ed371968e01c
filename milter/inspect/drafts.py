"""Documents visibly not final (SE 79/SE/2019 clause 2.f: no spreading of what is not yet
official).

A draft shows itself in a few ways people do not remove by accident: tracked changes
and reviewers' comments left in a Word or OpenDocument file, a ``KONSEP`` / ``DRAFT`` /
``RANCANGAN`` marking or watermark, review annotations on a PDF. Each is reported with
its evidence, so an officer sees why a message counted as carrying a draft; the
marking forms are read by position and form, as classification markings are, because
"rancangan" in a sentence is prose.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator, Mapping

from milter.inspect import labels

_TRIM = " \t\r*_=-~#.:[]()<>|\u00a0"
_DRAFT_WORD = re.compile(
    r"(?:konsep|draft|draf|rancangan)"
    r"(?:[ \t]*[-:]?[ \t]*(?:v(?:ersi|ersion)?\.?[ \t]*)?\d{1,3}(?:\.\d{1,3})?)?",
    re.IGNORECASE,
)


def text_evidence(text: str, place: str, *, low: str | None = None) -> list[str]:
    """Draft markings in a document text: a line that is only ``KONSEP``/``DRAFT``/
    ``RANCANGAN`` (with a version number at most); in capitals anywhere in a document,
    in any case in a page header or footer and in a watermark. Mail bodies do not count:
    clause 2.f is about documents. ``low`` is ``text.lower()`` when the caller has it."""
    if place == labels.BODY or not text:
        return []
    low = text.lower() if low is None else low
    if "konsep" not in low and "draf" not in low and "rancangan" not in low:
        return []  # the common case, found at C speed before any line is looked at
    any_case = place in (labels.BAND, labels.WATERMARK)
    what = {
        labels.BAND: "page header or footer line",
        labels.WATERMARK: "watermark",
    }.get(place, "marking line")
    found: list[str] = []
    for line in text.splitlines():
        if len(line) > 120:
            continue
        word = line.strip(_TRIM)
        if not word or len(word) > 30 or _DRAFT_WORD.fullmatch(word) is None:
            continue
        letters = "".join(c for c in word if c.isalpha())
        if not (letters.isupper() or (any_case and (letters.istitle() or letters.islower()))):
            continue
        entry = f"{what} {word}"
        if entry not in found:
            found.append(entry)
            if len(found) >= 5:
                break
    return found


_STATUS_KEYS = frozenset({"contentstatus", "status", "docstatus", "documentstatus"})
_DRAFT_STATUS = frozenset({"draft", "konsep", "draf", "rancangan", "in review", "review"})


def property_evidence(name: str, value: str) -> str | None:
    """A document status property that says draft (``cp:contentStatus``: Draft)."""
    key = name.strip().casefold().replace(" ", "")
    status = " ".join(value.split()).casefold()
    if (
        key in ("contentstatus", "status", "docstatus", "documentstatus")
        and status in _DRAFT_STATUS
    ):
        return f"document property {name.strip()} {value.strip()}"
    return None


# --- Word and OpenDocument review traces -----------------------------------------------

_W_INS = re.compile(r"<w:ins\b")
_W_DEL = re.compile(r"<w:del\b")
_W_COMMENT = re.compile(r"<w:comment\b")
_ODF_REGION = re.compile(r"<text:changed-region\b")
_ODF_ANNOTATION = re.compile(r"<office:annotation\b")


def word_evidence(document_xml: str, comments_xml: str | None) -> list[str]:
    """Tracked insertions and deletions, and comments, left in a Word document."""
    found: list[str] = []
    ins = len(_W_INS.findall(document_xml))
    dels = len(_W_DEL.findall(document_xml))
    if ins or dels:
        found.append(f"tracked changes ({ins} insertions, {dels} deletions)")
    comments = len(_W_COMMENT.findall(comments_xml or ""))
    if comments:
        found.append(f"{comments} reviewer comments")
    return found


def odf_evidence(content_xml: str) -> list[str]:
    """Tracked changes and comments left in an OpenDocument file."""
    found: list[str] = []
    start = content_xml.find("<text:tracked-changes")
    if start != -1:
        end = content_xml.find("</text:tracked-changes>", start)
        block = content_xml[start : end if end != -1 else len(content_xml)]
        regions = len(_ODF_REGION.findall(block))
        if regions:
            found.append(f"tracked changes ({regions} changed regions)")
    notes = len(_ODF_ANNOTATION.findall(content_xml))
    if notes:
        found.append(f"{notes} reviewer comments")
    return found


# --- PDF review annotations --------------------------------------------------------------

_ANNOT = re.compile(rb"/Subtype\s*/(Text|Highlight|StrikeOut|Caret)(?![A-Za-z0-9])")
_OBJSTM = re.compile(rb"/Type\s*/ObjStm")
_STREAM = re.compile(rb"stream\r?\n")
_MAX_OBJSTM = 64
_MAX_INFLATE = 4 << 20


def pdf_review_annotations(
    data: bytes,
    *,
    found: list[tuple[int, int, str]] | None = None,
    object_streams: list[bytes] | None = None,
) -> list[str]:
    """Review annotations (sticky notes, highlights, strike-outs, insertion carets) on a PDF.

    Annotation dictionaries sit in the file as they are or inside compressed object
    streams (any PDF re-saved by an optimiser); both are read, the latter inflated within
    a small fixed budget. Only the subtypes of review count: links and form fields are
    not evidence of a draft. A caller that has already scanned the file passes what
    ``_ANNOT`` finds in it as ``found`` and the ``pdf_object_streams`` as ``object_streams``.
    """
    counts: dict[str, int] = {}
    _count_annotations(data, _annotations(data) if found is None else found, counts)
    for blob in pdf_object_streams(data) if object_streams is None else object_streams:
        _count_annotations(blob, _annotations(blob), counts)
    return [f"review annotations {name} ({n})" for name, n in sorted(counts.items())]


def _annotations(blob: bytes) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), m.group(1).decode()) for m in _ANNOT.finditer(blob)]


def _count_annotations(
    blob: bytes, found: list[tuple[int, int, str]], counts: dict[str, int]
) -> None:
    for start, end, key in found:
        # A ``/Subtype /Text`` outside an annotation is rare, but an annotation
        # dictionary always names /Annot or carries a /Rect: require one nearby.
        around = blob[max(0, start - 400) : end + 400]
        if b"/Annot" in around or b"/Rect" in around:
            counts[key] = counts.get(key, 0) + 1


def pdf_object_streams(
    data: bytes,
    found: Iterable[int] | None = None,
    inflated: Mapping[int, bytes | int] | None = None,
) -> Iterator[bytes]:
    """Each compressed object stream of a PDF inflated, within a small fixed budget.

    ``found`` is where each ``/Type /ObjStm`` ends, when the caller has scanned the file
    already; ``inflated`` holds streams the caller has inflated whole, by the offset of
    their data (an ``int`` is the size of one not kept), and is used as zlib's output.
    """
    budget = _MAX_INFLATE
    seen = 0
    for after in (m.end() for m in _OBJSTM.finditer(data)) if found is None else found:
        if seen >= _MAX_OBJSTM or budget <= 0:
            return
        seen += 1
        s = _STREAM.search(data, after, after + 4096)
        if s is None:
            continue
        end = data.find(b"endstream", s.end())
        if end == -1:
            continue
        whole = inflated.get(s.end()) if inflated else None
        if isinstance(whole, bytes):
            out = whole[:budget]
        else:
            try:
                out = zlib.decompressobj().decompress(data[s.end() : end], budget)
            except zlib.error:
                continue
        budget -= len(out)
        yield out
