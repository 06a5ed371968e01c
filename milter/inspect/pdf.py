"""PDF: classification metadata, encryption, and the text of the pages.

Most PDFs mail gateways see are generated reports with simple fonts; their text sits
in Flate-compressed content streams and can be read with zlib and a tokenizer in well
under a millisecond, where a full renderer costs about 9 ms a page (pypdfium2) or 19 ms
(pypdf). So the cheap path runs first, and pypdfium2 takes over only when fonts need a
mapping the cheap path cannot do (CID fonts, ToUnicode maps) or streams use other
filters. Metadata (document info, XMP) is read from the raw bytes and object streams,
which needs no parser at all.
"""

from __future__ import annotations

import codecs
import encodings.cp1252
import re
import time
from dataclasses import dataclass, field

import pypdfium2 as pdfium

from milter.inspect import bounded
from milter.inspect.labels import is_classification_property

_STREAM = re.compile(rb">>\s*stream\r?\n")
# Only from the start of a number: inside a run of digits ``\d+`` would retry each suffix.
_OBJ = re.compile(rb"(?<!\d)\d+\s+\d+\s+obj\b")
_INFO_PAIR = re.compile(
    rb"/([A-Za-z0-9_#.\-]{3,80})\s*(\((?:\\.|[^\\)]){0,400}\)|<[0-9A-Fa-f\s]{0,800}>)"
)
_XMP_ELEM = re.compile(rb"<(?:[\w.\-]+:)?([\w.\-]{3,80})>([^<]{1,200})</")
_XMP_ATTR = re.compile(rb"\s(?:[\w.\-]+:)([\w.\-]{3,80})=\"([^\"]{1,200})\"")
# The tokens of a content stream that text extraction needs, and nothing else, so one
# ``findall`` does the scanning in C. No two alternatives start with the same byte, so
# each token is told by its first one. Strings nest one level, as in most producers;
# a string nested deeper is not a token and the scan resumes inside it. The string
# loops are possessive (linear, no backtracking) and match what a backtracking loop
# would: their branches start with different bytes, none of them ``)``, so giving back
# an iteration could never let the closing ``)`` match. Runs of plain bytes go in one
# step instead of one alternation per byte, which is most of the scanning time.
# Only negative numbers are kept (a gap in a ``TJ`` array); a positive number's bytes
# (digits, ``.``) begin no other token, so leaving them out changes no other token.
_TOKEN = re.compile(
    rb"\((?:[^\\()]++|\\.|\((?:[^\\()]++|\\.)*+\))*+\)|<[0-9A-Fa-f\s]*+>|[\[\]'\"]|-\d*\.?\d+|"
    rb"T[jJdDm*]|BT|ET"
)
_HEX_JUNK = re.compile(rb"[^0-9A-Fa-f]")
_CP1252 = encodings.cp1252.decoding_table
# First bytes of the tokens above.
_OPEN, _HEX, _ARRAY, _END_ARRAY, _QUOTE, _DQUOTE = b"(<[]'\""
_T, _B, _E, _j, _J = b"TBEjJ"
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}
_ESC = re.compile(rb"\\([0-7]{1,3}|.)", re.DOTALL)
_MSIP_KEY = re.compile(r"MSIP_Label_[0-9a-fA-F\-]{36}_(Name|Enabled)", re.IGNORECASE)
_NAME_ESC = re.compile(r"#([0-9A-Fa-f]{2})")

# A renderer fallback needs these: fonts whose codes are not characters.
_COMPLEX_FONTS = (b"/Type0", b"/Identity-H", b"/ToUnicode", b"/Differences")
_SKIP_STREAM = (
    b"/Image",
    b"/Length1",
    b"/Length2",
    b"/Length3",
    b"/FontFile",
    b"/XRef",
    b"/Type1C",
    b"/CIDFontType0C",
    b"/OpenType",
    b"/ICCBased",
)


_RENDER_TIMEOUT = "time budget reached in PDF"
# Reasons for a stream cut by a ``bounded`` limit; the budget one as it always read.
_CUTS = {"expanded bytes limit reached": "PDF expansion limit reached"}


@dataclass
class PdfResult:
    """What one PDF yielded: text, classification properties, and why it was not readable."""

    text: list[str] = field(default_factory=list)
    properties: list[tuple[str, str, str]] = field(default_factory=list)  # (where, name, value)
    embedded: list[tuple[str, bytes]] = field(default_factory=list)
    encrypted: bool = False
    reason: str | None = None
    text_cut: bool = False  # text past ``max_text`` was left out


def _unescape_literal(raw: bytes) -> bytes:
    def sub(m: re.Match[bytes]) -> bytes:
        s = m.group(1)
        if b"0" <= s[:1] <= b"7":  # \8 and \9 are not octal: the backslash is dropped
            return bytes([int(s, 8) & 0xFF])
        if s in (b"\n", b"\r"):
            return b""
        return _ESCAPES.get(s, s)

    return _ESC.sub(sub, raw)


def pdf_string(token: bytes) -> str:
    """A PDF string object (literal or hex) as text: UTF-16 with a BOM, else Latin-1-ish."""
    if token[0] == _HEX:
        hexdigits = _HEX_JUNK.sub(b"", token)
        if len(hexdigits) % 2:
            hexdigits += b"0"
        raw = bytes.fromhex(hexdigits.decode("ascii"))
    else:
        raw = token[1:-1]
        if b"\\" in raw:
            raw = _unescape_literal(raw)
    if raw.isascii():  # the usual case; no BOM is ASCII, and cp1252 is ASCII below 0x80
        return raw.decode("ascii")
    if raw[:2] == b"\xfe\xff":
        return raw[2:].decode("utf-16-be", "replace")
    if raw[:3] == b"\xef\xbb\xbf":
        return raw[3:].decode("utf-8", "replace")
    # What ``raw.decode("cp1252", "replace")`` does, without the codec registry lookup
    # and the Python-level wrapper: this runs once per string shown on a page.
    return codecs.charmap_decode(raw, "replace", _CP1252)[0]


def _name(raw: bytes) -> str:
    return _NAME_ESC.sub(lambda m: chr(int(m.group(1), 16)), raw.decode("latin-1"))


def _info_properties(blob: bytes, where: str, out: list[tuple[str, str, str]]) -> None:
    for m in _INFO_PAIR.finditer(blob):
        name = _name(m.group(1))
        if is_classification_property(name) or _MSIP_KEY.fullmatch(name):
            out.append((where, name, pdf_string(m.group(2)).strip()))


def _xmp_properties(blob: bytes, out: list[tuple[str, str, str]]) -> None:
    start = blob.find(b"<x:xmpmeta")
    unclosed = False  # once no closer is left, none is searched for again
    while start != -1:
        end = -1 if unclosed else blob.find(b"</x:xmpmeta>", start)
        if end == -1:
            unclosed = True
            end = min(len(blob), start + (256 << 10))
        chunk = blob[start:end]
        for pattern in (_XMP_ELEM, _XMP_ATTR):
            for m in pattern.finditer(chunk):
                name = m.group(1).decode("latin-1")
                if is_classification_property(name) or _MSIP_KEY.fullmatch(name):
                    value = m.group(2).decode("utf-8", "replace").strip()
                    out.append(("xmp", name, value))
        start = blob.find(b"<x:xmpmeta", end)


def _content_text(stream: bytes) -> str:
    """Text shown by a content stream's string operators, one line per positioning op.

    Strings collect until an operator shows them (``Tj``, ``TJ``) or starts a new line
    with them (``'``, ``"``); ``Td``, ``TD``, ``T*`` and ``Tm`` end a line, and a gap
    wider than 250 thousandths of an em inside a ``TJ`` array is a space. Only what sits
    between ``BT`` and ``ET`` counts.
    """
    lines: list[str] = []
    current: list[str] = []
    pending: list[str] = []
    in_text = False
    in_array = False
    for tok in _TOKEN.findall(stream):
        first = tok[0]
        if first == _B:  # BT
            in_text = True
        elif first == _E:  # ET
            in_text = False
            if current:
                lines.append("".join(current))
                current = []
        elif not in_text:
            continue
        elif first in (_OPEN, _HEX):
            pending.append(pdf_string(tok))
        elif first == _T:
            if tok[1] in (_j, _J):  # Tj, TJ
                current.extend(pending)
                pending = []
            elif current:  # Td, TD, T*, Tm
                lines.append("".join(current))
                current = []
        elif first in (_QUOTE, _DQUOTE):
            if current:
                lines.append("".join(current))
            current = pending
            pending = []
        elif first == _ARRAY:
            in_array = True
        elif first == _END_ARRAY:
            in_array = False
        elif in_array and pending and float(tok) < -250:  # a negative number
            pending.append(" ")
    if current:
        lines.append("".join(current))
    return "\n".join(lines)


def _stream_dict(data: bytes, stream_pos: int, floor: int = 0) -> bytes:
    """The dictionary before a stream: at most 4 KB back, never before ``floor`` (the end
    of the previous stream), so no byte is searched for it twice."""
    lo = max(floor, stream_pos - 4096)
    head = data[lo:stream_pos]
    last = None
    for m in _OBJ.finditer(head):
        last = m
    return head[last.end() :] if last else head


def _decode_stream(
    dictionary: bytes, raw: bytes, budget: int, ratio: float
) -> bounded.Decoded | None:
    """A stream's data within ``budget`` kept bytes; None when its filter is not Flate.

    Inflated text-like streams skip whitespace padding; embedded files are inflated as
    they are. A stream cut at a limit keeps what was read and says why.
    """
    if b"/Filter" not in dictionary:
        if len(raw) > budget:
            return bounded.Decoded(raw[:budget], len(raw), "expanded bytes limit reached")
        return bounded.Decoded(raw, len(raw))
    filters = re.findall(
        rb"/(\w+Decode|Fl|AHx|A85|LZW|RL|DCT)\b", dictionary.split(b"/Filter", 1)[1][:200]
    )
    if filters and all(f in (b"FlateDecode", b"Fl") for f in filters) and len(filters) == 1:
        return bounded.inflate(
            raw, limit=budget, ratio=ratio, pad=b"/EmbeddedFile" not in dictionary
        )
    return None


def inspect_pdf(
    data: bytes, *, max_text: int, max_expand: int, deadline: float, ratio: float = 100.0
) -> PdfResult:
    """Classification properties, encryption and page text of a PDF, within the given bounds.

    A stream cut at a limit (expanded bytes, expansion ratio, time) makes the reason;
    the renderer is then not asked either, since it would inflate the same streams
    without any bound.
    """
    result = PdfResult()
    trailer_zone = data[-4096:] if len(data) > 4096 else data
    _info_properties(data, "info", result.properties)
    _xmp_properties(data, result.properties)
    if b"/Encrypt" in trailer_zone or re.search(rb"/Encrypt\s+\d+\s+\d+\s+R", data):
        result.encrypted = True
        result.reason = "encrypted PDF"
        return result

    needs_renderer = any(marker in data for marker in _COMPLEX_FONTS)
    expanded = 0
    text_len = 0
    unreadable = 0
    cut: str | None = None
    pos = 0
    while True:
        m = _STREAM.search(data, pos)
        if m is None:
            break
        if time.monotonic() > deadline:
            cut = "time budget reached in PDF"
            break
        start = m.end()
        end = data.find(b"endstream", start)
        if end == -1:
            end = len(data)
        # The next stream is looked for after this one: stream data may hold anything.
        floor, pos = pos, max(end, start)
        dictionary = _stream_dict(data, m.start() + 2, floor)
        if any(marker in dictionary for marker in _SKIP_STREAM):
            continue
        remaining = max_expand - expanded
        if remaining <= 0:
            cut = "PDF expansion limit reached"
            break
        decoded = _decode_stream(dictionary, data[start:end].rstrip(b"\r\n"), remaining, ratio)
        if decoded is None:
            if b"/DCTDecode" not in dictionary and b"/JPXDecode" not in dictionary:
                unreadable += 1
            continue
        body = decoded.data
        expanded += len(body)
        if decoded.cut is not None:
            cut = _CUTS.get(decoded.cut, f"PDF {decoded.cut}")
        if b"/ObjStm" in dictionary:
            _info_properties(body, "info", result.properties)
        elif b"/EmbeddedFile" in dictionary:
            if decoded.cut is None:
                result.embedded.append((f"embedded{len(result.embedded) + 1}", body))
        elif b"<x:xmpmeta" in body:
            _xmp_properties(body, result.properties)
        elif not needs_renderer and b"BT" in body:
            text = _content_text(body)
            if text.strip():
                if text_len < max_text:
                    result.text.append(text[: max_text - text_len])
                text_len += len(text)
                result.text_cut = result.text_cut or text_len > max_text
        if cut is not None:
            break
    if cut is not None:
        result.reason = cut
        return result
    if needs_renderer or unreadable:
        rendered, reason = _render_text(data, max_text=max_text, deadline=deadline)
        if rendered is not None:
            result.text = rendered
            result.text_cut = sum(len(page) for page in rendered) > max_text
            if reason == _RENDER_TIMEOUT:  # pages left unread
                result.reason = reason
        elif reason and not result.text:
            result.reason = reason
    return result


def _render_text(
    data: bytes, *, max_text: int, deadline: float
) -> tuple[list[str] | None, str | None]:
    """Page text through pypdfium2, page by page, until the text or time budget runs out."""
    try:
        doc = pdfium.PdfDocument(data)
    except (pdfium.PdfiumError, ValueError, OSError) as exc:
        return None, f"unreadable PDF: {type(exc).__name__}"
    pages: list[str] = []
    total = 0
    try:
        for index in range(len(doc)):
            if time.monotonic() > deadline:
                return pages, _RENDER_TIMEOUT
            page = doc[index]
            try:
                textpage = page.get_textpage()
                try:
                    text = str(textpage.get_text_range())
                finally:
                    textpage.close()
            finally:
                page.close()
            pages.append(text.replace("\r\n", "\n"))
            total += len(text)
            if total >= max_text:
                break
    except (pdfium.PdfiumError, ValueError, OSError) as exc:
        return pages or None, f"unreadable PDF: {type(exc).__name__}"
    finally:
        doc.close()
    return pages, None
