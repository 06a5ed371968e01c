"""PDF: classification metadata, encryption, and the text of the pages.

Most PDFs mail gateways see are generated reports with simple fonts; their text sits
in Flate-compressed content streams and can be read with zlib and a tokenizer in well
under a millisecond, where a full renderer costs about 9 ms a page (pypdfium2) or 19 ms
(pypdf). So the cheap path runs first, and pypdfium2 takes over only when fonts need a
mapping the cheap path cannot do (CID fonts, ToUnicode maps) or streams use other
filters. Metadata (document info, XMP) is read from the raw bytes and object streams,
which needs no parser at all.

Whether fonts need the renderer is decided on what the fonts say, wherever they sit: a
PDF re-saved by qpdf, Ghostscript or an optimiser (and every OCRmyPDF output) keeps its
font dictionaries inside compressed object streams, where the raw bytes show none of
``/Type0`` or ``/ToUnicode``, and the cheap path would print glyph ids as text. So the
object streams and CMap streams are looked into as they are inflated.

An owner password alone (permissions, no user password) does not stop anyone from
reading a PDF: the renderer opens it without a password and it is read like any other.
Only a PDF that asks for a user password is ``encrypted``.

Pages that carry a scan-sized image and (almost) no text are listed in ``image_pages``
for OCR; the check costs a renderer pass, so it runs only when such an image exists.
"""

from __future__ import annotations

import codecs
import encodings.cp1252
import re
import time
import zlib
from dataclasses import dataclass, field

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from milter.inspect import bounded, documents, drafts
from milter.inspect.labels import is_classification_property

_STREAM = re.compile(rb">>\s*stream\r?\n")
# The last ``(?<!\d)\d+\s+\d+\s+obj\b`` before a stream, searched for backwards: in the
# reversed bytes it is the first match, found by its literal ``jbo`` where the forward
# pattern had to be tried at every byte. Two such matches never overlap, so the first
# one in the reversed bytes is the last one a forward scan would find.
_OBJ_REVERSED = re.compile(rb"jbo(?<![A-Za-z0-9_]jbo)\s+\d+\s+\d+(?!\d)")
_INFO_PAIR = re.compile(
    rb"/([A-Za-z0-9_#.\-]{3,80})\s*(\((?:\\.|[^\\)]){0,400}\)|<[0-9A-Fa-f\s]{0,800}>)"
)
# Everything the raw bytes are searched for, in one pass: at each ``/``, a name with a
# string value (``_INFO_PAIR``, hence ``documents._PDF_INFO`` as well), an object stream
# (``drafts._OBJSTM``), a review annotation (``drafts._ANNOT``), an ``/Encrypt``
# reference, or a font marker (``_COMPLEX_FONTS``). The alternatives sit in a lookahead,
# so the scan moves on one byte and every ``/`` is tried, as each separate scan would;
# only the name with a value can start where a font marker does (``/Type0 (x)``), and
# the caller looks for the marker in that name. Matches of a name with a value can
# hold one another (a value may contain ``/Title (x)``): which ones a ``finditer`` of
# their own pattern would give is worked out from the spans.
_NAMES = re.compile(
    rb"/(?=([A-Za-z0-9_#.\-]{3,80})\s*(\((?:\\.|[^\\)]){0,400}\)|<[0-9A-Fa-f\s]{0,800}>)"
    rb"|(Type\s*/ObjStm)"
    rb"|Subtype\s*/(Text|Highlight|StrikeOut|Caret)(?![A-Za-z0-9])"
    rb"|(Encrypt\s+\d+\s+\d+\s+R)"
    rb"|(?:Type0|Identity-H|ToUnicode|Differences))"
)
_FONT_NAMES = (b"Type0", b"Identity-H", b"ToUnicode", b"Differences")
_DOC_INFO = frozenset({b"Title", b"Subject", b"Keywords"})
_XMP_ELEM = re.compile(rb"<(?:[\w.\-]+:)?([\w.\-]{3,80})>([^<]{1,200})</")
_XMP_ATTR = re.compile(rb"\s(?:[\w.\-]+:)([\w.\-]{3,80})=\"([^\"]{1,200})\"")
# The tokens of a content stream that text extraction needs, and nothing else, so one
# ``findall`` does the scanning in C. Apart from the two kinds of literal string below,
# no two alternatives start with the same byte, so each token is told by its first one.
# Strings nest one level, as in most producers; a string nested deeper is not a token
# and the scan resumes inside it. The string loops are possessive (linear, no
# backtracking) and match what a backtracking loop would: their branches start with
# different bytes, none of them ``)``, so giving back an iteration could never let the
# closing ``)`` match. Runs of plain bytes go in one step instead of one alternation per
# byte, which is most of the scanning time; ``[\x00-'*-\[\]-\xff]`` is ``[^\\()]``
# written as ranges, which compiles to one bitmap test per byte instead of a test for
# each excluded byte. Only negative numbers are kept (a gap in a ``TJ`` array); a
# positive number's bytes (digits, ``.``) begin no other token, so leaving them out
# changes no other token.
# The first alternative is the usual text of a generated report: a plain literal string
# (no escape, no nested string) shown by ``Tj`` or ``TJ``, then any number of lines of
# ``T*`` and another such string and ``Tj``, all one token read in one step. Only
# whitespace, which starts no token, sits between them, so the tokens around are the
# same as if each were its own; the line that does not complete is scanned again from
# its string, once, as is a string that is not plain (by the general alternative).
_TOKEN = re.compile(
    rb"\([\x00-'*-\[\]-\xff]*+\)\s*+T[jJ]"
    rb"(?:\s*+T\*(?:\s*+\([\x00-'*-\[\]-\xff]*+\)\s*+T[jJ]\s*+T\*)*+)?"
    rb"|\((?:[\x00-'*-\[\]-\xff]++|\\.|\((?:[\x00-'*-\[\]-\xff]++|\\.)*+\))*+\)"
    rb"|<[0-9A-Fa-f\s]*+>|[\[\]'\"]|-\d*\.?\d+|T[jJdDm*]|BT|ET"
)
_HEX_JUNK = re.compile(rb"[^0-9A-Fa-f]")
_FILTERS = re.compile(rb"/(\w+Decode|Fl|AHx|A85|LZW|RL|DCT)\b")
# Inflated streams up to this size are inflated in one call (``_inflate_whole``).
_WHOLE_MAX = min(bounded.SQUEEZE_MIN, bounded.RATIO_ALLOWANCE, bounded.CHUNK)
_CP1252 = encodings.cp1252.decoding_table
# First bytes of the tokens above.
_OPEN, _CLOSE, _HEX, _ARRAY, _END_ARRAY, _QUOTE, _DQUOTE = b"()<[]'\""
_T, _B, _E, _j, _J, _STAR = b"TBEjJ*"
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}
_ESC = re.compile(rb"\\([0-7]{1,3}|.)", re.DOTALL)
_MSIP_KEY = re.compile(r"MSIP_Label_[0-9a-fA-F\-]{36}_(Name|Enabled)", re.IGNORECASE)
_NAME_ESC = re.compile(r"#([0-9A-Fa-f]{2})")

# A renderer fallback needs these: fonts whose codes are not characters.
_COMPLEX_FONTS = (b"/Type0", b"/Identity-H", b"/ToUnicode", b"/Differences")
# Streams that hold no text: images, fonts, the cross-reference stream, colour profiles.
# One search for all of them: ``in`` on bytes first tries its operand as a byte value,
# and raises and clears an exception for each of them.
_SKIP_STREAM = re.compile(
    rb"/(?:Image|Length[123]|FontFile|XRef|Type1C|CIDFontType0C|OpenType|ICCBased)"
)


# Fonts whose codes map to characters only through a table: markers in an inflated
# object stream (font dictionaries) or stream (a ToUnicode CMap).
_COMPLEX_BODY = (*_COMPLEX_FONTS, b"begincmap")
_IMAGE_SIZE = re.compile(rb"/(Width|Height)\s+(\d{1,6})\b")
# An image at least this big can be a scanned page (A4 at 100 dpi is 827 x 1169 pixels);
# smaller ones are logos, photos and signatures on pages that have text of their own.
SCAN_PIXELS = 500_000
SCAN_SIDE = 500
# A page with fewer characters than this is image-only: a page number or a stray
# header from the scanner software is not the letter's text.
FEW_CHARS = 32
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
    image_pages: list[int] = field(default_factory=list)  # 0-based, pages for OCR
    pages: int = 0  # page count, when the renderer opened the document
    # What ``documents.pdf_info_fields``, ``drafts.pdf_review_annotations`` and (unless
    # encrypted) ``documents.pdf_watermarks`` give for the same bytes, read from the
    # streams this pass inflated instead of inflating them again.
    info_fields: list[tuple[str, str, str]] = field(default_factory=list)
    review: list[str] = field(default_factory=list)
    watermarks: str = ""


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
    return _literal_text(raw)


def _literal_text(raw: bytes) -> str:
    """The bytes of a string (unescaped, or from hex) as text."""
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


@dataclass
class _Names:
    """What the one pass of ``_NAMES`` over a file's raw bytes found."""

    properties: list[tuple[str, str, str]] = field(default_factory=list)
    info_fields: list[tuple[bytes, bytes]] = field(default_factory=list)  # (name, value)
    annotations: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, subtype)
    object_streams: list[int] = field(default_factory=list)  # where ``/Type /ObjStm`` ends
    encrypt: bool = False
    fonts: bool = False


def _scan_names(data: bytes) -> _Names:
    """Document info properties, Title/Subject/Keywords, review annotations, object
    streams, an ``/Encrypt`` reference and font markers in the raw bytes, as the
    separate scans for each give them."""
    found = _Names()
    pair_end = field_end = 0  # where the last match of _INFO_PAIR / _PDF_INFO ended
    for m in _NAMES.finditer(data):
        name = m.group(1)
        if name is not None:
            at, end = m.start(), m.end(2)
            if at >= pair_end:
                pair_end = end
                key = _name(name)
                if is_classification_property(key) or _MSIP_KEY.fullmatch(key):
                    found.properties.append(("info", key, pdf_string(m.group(2)).strip()))
            if at >= field_end and name in _DOC_INFO:
                field_end = end
                found.info_fields.append((name, m.group(2)))
            if not found.fonts and name.startswith(_FONT_NAMES):
                found.fonts = True
        elif m.group(3) is not None:
            found.object_streams.append(m.end(3))
        elif m.group(4) is not None:
            found.annotations.append((m.start(), m.end(4), m.group(4).decode()))
        elif m.group(5) is not None:
            found.encrypt = True
        else:
            found.fonts = True
    return found


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
        if first == _OPEN:
            if not in_text:
                continue
            last = tok[-1]
            if last == _CLOSE:
                pending.append(pdf_string(tok))
                continue
            # Plain strings shown by ``Tj``/``TJ``: one, or lines of them ended by ``T*``.
            # A text of several lines is one item of ``lines``, which are joined by
            # line ends in the end.
            # Only its strings hold no parenthesis: split at both, they are every other piece.
            strings = tok.replace(b")", b"(").split(b"(")[1::2]
            joined = b"\n".join(strings)
            if joined.isascii():
                shown = joined.decode("ascii")
            else:
                shown = "\n".join([_literal_text(raw) for raw in strings])
            if pending:
                current.extend(pending)
                pending = []
            current.append(shown)
            if last == _STAR:
                lines.append("".join(current))
                current = []
        elif first == _B:  # BT
            in_text = True
        elif first == _E:  # ET
            in_text = False
            if current:
                lines.append("".join(current))
                current = []
        elif not in_text:
            continue
        elif first == _HEX:
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
    last = _OBJ_REVERSED.search(head[::-1])
    return head[len(head) - last.start() :] if last else head


def _decode_stream(
    dictionary: bytes, raw: bytes, budget: int, ratio: float
) -> tuple[bounded.Decoded | None, bytes | None]:
    """A stream's data within ``budget`` kept bytes; None when its filter is not Flate.

    Inflated text-like streams skip whitespace padding; embedded files are inflated as
    they are. A stream cut at a limit keeps what was read and says why. The second
    item is the whole inflated data of a small Flate stream (``_inflate_whole``).
    """
    if b"/Filter" not in dictionary:
        if len(raw) > budget:
            return bounded.Decoded(raw[:budget], len(raw), "expanded bytes limit reached"), None
        return bounded.Decoded(raw, len(raw)), None
    filters = _FILTERS.findall(dictionary.split(b"/Filter", 1)[1][:200])
    if filters in ([b"FlateDecode"], [b"Fl"]):
        whole = _inflate_whole(raw, budget)
        if whole is not None:
            return whole
        pad = b"/EmbeddedFile" not in dictionary
        return bounded.inflate(raw, limit=budget, ratio=ratio, pad=pad), None
    return None, None


def _inflate_whole(raw: bytes, budget: int) -> tuple[bounded.Decoded, bytes] | None:
    """A Flate stream small enough to inflate in one call, as ``bounded.inflate`` would
    give it, and its whole inflated data to share with the other readers of the same
    stream; None when it is not such a stream (``bounded.inflate`` then reads it).

    Such a stream is fed in one slice and yields one chunk, too small to be squeezed or
    to reach the ratio allowance: only the byte limit can cut it. That the inflater
    reached the end of the stream says its data is whole, and that the bytes after it
    (the line end before ``endstream``) change nothing.
    """
    if len(raw) > bounded.FEED:
        return None
    dec = zlib.decompressobj()
    try:
        out = dec.decompress(raw, _WHOLE_MAX + 1)
    except zlib.error:
        return None
    if not dec.eof or len(out) > _WHOLE_MAX:
        return None
    cut = "expanded bytes limit reached" if len(out) > budget else None
    return bounded.Decoded(out[:budget], len(out), cut), out


def inspect_pdf(
    data: bytes, *, max_text: int, max_expand: int, deadline: float, ratio: float = 100.0
) -> PdfResult:
    """Classification properties, encryption and page text of a PDF, within the given bounds;
    and its Title, Subject and Keywords, review annotations and watermark text.

    A stream cut at a limit (expanded bytes, expansion ratio, time) makes the reason;
    the renderer is then not asked either, since it would inflate the same streams
    without any bound. The readers of info fields, annotations and watermarks keep
    their own budgets and take what this pass inflated instead of inflating it again.
    """
    names = _scan_names(data)
    inflated: dict[int, bytes | int] = {}
    result = _read(
        data,
        names,
        inflated,
        max_text=max_text,
        max_expand=max_expand,
        deadline=deadline,
        ratio=ratio,
    )
    object_streams = list(drafts.pdf_object_streams(data, names.object_streams, inflated))
    result.info_fields = documents.pdf_info_fields(
        data, found=names.info_fields, object_streams=object_streams
    )
    result.review = drafts.pdf_review_annotations(
        data, found=names.annotations, object_streams=object_streams
    )
    if not result.encrypted:
        result.watermarks = documents.pdf_watermarks(data, inflated=inflated)
    return result


def _read(
    data: bytes,
    names: _Names,
    inflated: dict[int, bytes | int],
    *,
    max_text: int,
    max_expand: int,
    deadline: float,
    ratio: float,
) -> PdfResult:
    """``inspect_pdf`` but for the other readers; the streams it inflated whole go to
    ``inflated`` by the offset of their data: an object stream or one that names
    ``/Watermark`` as its data, any other by its size only."""
    result = PdfResult(properties=names.properties)
    trailer_zone = data[-4096:] if len(data) > 4096 else data
    _xmp_properties(data, result.properties)
    if b"/Encrypt" in trailer_zone or names.encrypt:
        return _read_encrypted(data, result, max_text=max_text, deadline=deadline)

    needs_renderer = names.fonts
    scan_sized = False
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
        if _SKIP_STREAM.search(dictionary):
            if not scan_sized and b"/Image" in dictionary:
                scan_sized = _scan_sized(dictionary)
            continue
        remaining = max_expand - expanded
        if remaining <= 0:
            cut = "PDF expansion limit reached"
            break
        raw = data[start:end].rstrip(b"\r\n")
        decoded, whole = _decode_stream(dictionary, raw, remaining, ratio)
        if whole is not None:
            keep = b"/ObjStm" in dictionary or b"/Watermark" in whole
            inflated[start] = whole if keep else len(whole)
        if decoded is None:
            if b"/DCTDecode" not in dictionary and b"/JPXDecode" not in dictionary:
                unreadable += 1
            continue
        body = decoded.data
        expanded += len(body)
        if decoded.cut is not None:
            cut = _CUTS.get(decoded.cut, f"PDF {decoded.cut}")
        if not needs_renderer and b"/ObjStm" not in dictionary and b"begincmap" in body:
            needs_renderer = True  # a ToUnicode CMap: some font maps codes through it
        if b"/ObjStm" in dictionary:
            _info_properties(body, "info", result.properties)
            if not needs_renderer and any(marker in body for marker in _COMPLEX_BODY):
                needs_renderer = True
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
    if needs_renderer or unreadable or scan_sized:
        rendered = _render_text(data, max_text=max_text, deadline=deadline, scan=scan_sized)
        result.image_pages = rendered.image_pages
        result.pages = rendered.count
        if rendered.pages is not None:
            if needs_renderer or unreadable:
                # The cheap path's text of such fonts is glyph codes: the renderer's replaces it.
                result.text = rendered.pages
                result.text_cut = sum(len(page) for page in rendered.pages) > max_text
            if rendered.reason == _RENDER_TIMEOUT:  # pages left unread
                result.reason = rendered.reason
        elif rendered.reason and not result.text:
            result.reason = rendered.reason
    return result


def _scan_sized(dictionary: bytes) -> bool:
    """Is this image stream big enough to be a scanned page?"""
    size = {m.group(1): int(m.group(2)) for m in _IMAGE_SIZE.finditer(dictionary)}
    width, height = size.get(b"Width", 0), size.get(b"Height", 0)
    return width * height >= SCAN_PIXELS and min(width, height) >= SCAN_SIDE


def _read_encrypted(data: bytes, result: PdfResult, *, max_text: int, deadline: float) -> PdfResult:
    """A PDF with an ``/Encrypt`` dictionary: read through the renderer when it opens
    without a password (an owner password only restricts printing or copying, and
    every reader opens it), else ``encrypted``. Its streams and strings are encrypted,
    so the renderer reads text and document info, and finds image-only pages."""
    # Names in the document info are in the clear, their values encrypted: the renderer
    # decrypts the values of the names that matter.
    names = {name for _, name, _ in result.properties} | {"Title", "Subject", "Keywords"}
    rendered = _render_text(
        data, max_text=max_text, deadline=deadline, scan=True, info=sorted(names)
    )
    # A trailer naming an /Encrypt the renderer does not apply is malformed: held, as
    # encrypted, rather than read on a guess.
    if rendered.password or not rendered.secured:
        result.encrypted = True
        result.reason = "encrypted PDF"
        return result
    # Strings read from the raw bytes were encrypted: the renderer's info replaces them.
    result.properties = []
    for name, value in rendered.info:
        result.properties.append(("info", name, value.strip()))
    result.image_pages = rendered.image_pages
    result.pages = rendered.count
    if rendered.pages is not None:
        result.text = rendered.pages
        result.text_cut = sum(len(page) for page in rendered.pages) > max_text
        if rendered.reason == _RENDER_TIMEOUT:
            result.reason = rendered.reason
    else:
        result.reason = rendered.reason
    return result


@dataclass
class _Rendered:
    pages: list[str] | None = None
    reason: str | None = None
    image_pages: list[int] = field(default_factory=list)
    count: int = 0
    info: list[tuple[str, str]] = field(default_factory=list)
    password: bool = False  # the document asks for a user password
    secured: bool = False  # the renderer applied a security handler (with ``info``)


def _render_text(
    data: bytes,
    *,
    max_text: int,
    deadline: float,
    scan: bool = False,
    info: list[str] | None = None,
) -> _Rendered:
    """Page text through pypdfium2, page by page, until the text or time budget runs out.

    With ``scan``, pages with a picture and fewer than ``FEW_CHARS`` characters are
    listed for OCR; with ``info``, those entries of the document information are read
    as well (and whether a security handler applies).
    """
    out = _Rendered()
    try:
        doc = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        out.password = getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD
        out.reason = f"unreadable PDF: {type(exc).__name__}"
        return out
    except (ValueError, OSError) as exc:
        out.reason = f"unreadable PDF: {type(exc).__name__}"
        return out
    pages: list[str] = []
    total = 0
    try:
        if info is not None:
            out.secured = pdfium_c.FPDF_GetSecurityHandlerRevision(doc.raw) != -1
            for name in info:
                value = str(doc.get_metadata_value(name))
                if value:
                    out.info.append((name, value))
        out.count = len(doc)
        for index in range(out.count):
            if time.monotonic() > deadline:
                out.pages, out.reason = pages, _RENDER_TIMEOUT
                return out
            page = doc[index]
            try:
                textpage = page.get_textpage()
                try:
                    text = str(textpage.get_text_range()) if total < max_text else ""
                    if scan and _image_only(page, textpage):
                        out.image_pages.append(index)
                finally:
                    textpage.close()
            finally:
                page.close()
            if total < max_text:
                pages.append(text.replace("\r\n", "\n"))
                total += len(text)
            elif not scan:
                break
    except (pdfium.PdfiumError, ValueError, OSError) as exc:
        out.pages = pages or None
        out.reason = f"unreadable PDF: {type(exc).__name__}"
        return out
    finally:
        doc.close()
    out.pages = pages
    return out


def _image_only(page: pdfium.PdfPage, textpage: pdfium.PdfTextPage) -> bool:
    """A page whose content is a picture: fewer than ``FEW_CHARS`` characters of text
    and at least one image (a scan, a photographed letter, a fax)."""
    if textpage.count_chars() >= FEW_CHARS:
        text = str(textpage.get_text_range())
        if sum(1 for c in text if not c.isspace()) >= FEW_CHARS:
            return False
    for _ in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,), max_depth=4):
        return True
    return False
