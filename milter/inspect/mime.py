"""MIME helpers: the parts of a message, headers, names, payloads and charsets.

A message is split at the byte level (``Node``, over ``milter.mimetree``) and each
part's headers are read with ``email``'s ``compat32`` policy: on a 5 KB message that
costs a tenth of ``policy.default``, and no part is decoded, or even copied, before
the walk reaches it. The price is that decoding is ours to do, so every helper here
accepts any garbage (unknown charsets, broken RFC 2047 words, 8-bit bytes smuggled as
surrogates) and returns text.
"""

from __future__ import annotations

import binascii
import email.header
import email.utils
import functools
import html
import itertools
import re
from collections.abc import Iterator
from email.message import Message
from email.policy import compat32
from typing import Any

import pybase64

from milter import mimetree
from milter.inspect import bounded
from milter.mimetree import decode_words

_WS = re.compile(r"\s+")
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


def clean(text: str) -> str:
    """Text safe to print and serialise: 8-bit bytes smuggled as surrogates re-decoded."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("cp1252", "replace").encode("utf-8", "replace").decode("utf-8")
    return text


def decode_header_value(value: object) -> str:
    """An RFC 2047 header value as one unfolded line of text; never raises."""
    if isinstance(value, email.header.Header):
        try:
            text = str(value)
        except (LookupError, UnicodeError):
            text = value.encode()
        return _one_line(clean(text))
    text = value if isinstance(value, str) else str(value)
    text = clean(text)
    if "=?" in text and _ENCODED_WORD.search(text):
        text = clean(decode_words(text))
    return _one_line(text)


def _one_line(text: str) -> str:
    """``text`` with each run of white space made one space, and stripped.

    Most values have no white space but single spaces, which ``isprintable`` tells at
    C speed (every other white space character is unprintable); ``_WS`` then has
    nothing to replace, and trying it at every position would cost more than the rest.
    """
    if "  " not in text and text.isprintable():
        return text.strip()
    return _WS.sub(" ", text).strip()


def filename(part: Message) -> str | None:
    """The declared file name: RFC 2231 ``filename*``, RFC 2047 words, or ``name=``."""
    try:
        raw = part.get_filename() or part.get_param("name")
    except (LookupError, UnicodeError, ValueError, IndexError):
        return None
    if raw is None:
        return None
    if isinstance(raw, tuple):
        charset, _lang, value = raw
        try:
            raw = value.encode("latin-1", "surrogateescape").decode(
                charset or "us-ascii", "replace"
            )
        except LookupError:
            raw = value
    name = decode_header_value(raw)
    name = name.replace("\x00", "").strip().strip('"')
    return name or None


def content_type(part: Message) -> str:
    """The declared type, lower-case; RFC 2045's default when missing or unparsable."""
    try:
        return part.get_content_type()
    except (ValueError, IndexError, AttributeError):
        return "text/plain"


def disposition(part: Message) -> str:
    value = part.get("Content-Disposition")
    if value is None:
        return ""
    return str(value).split(";", 1)[0].strip().lower()


_MISSING = object()
# Parameter values of at most this length are remembered (``_cached_params``): the
# common Content-Type and Content-Disposition values recur in every message, while a
# hostile header a megabyte long must not be kept.
_CACHED_VALUE = 512

_Param = str | tuple[str | None, str | None, str]  # a tuple when RFC 2231 encoded


def _parse_params(value: str) -> dict[str, tuple[_Param, _Param]] | None:
    """The parameters ``Message.get_param`` finds in a header value, or None if unusual.

    Each lower-cased name maps to the value of its first occurrence as ``get_param``
    returns it, with ``unquote=False`` and with ``unquote=True``. ``email`` splits at
    the semicolons outside quoted strings, taking a backslash before a quote as an escape;
    with no backslash in the value and an even number of quotes between semicolons,
    every semicolon splits, and the pieces are trimmed here as ``_parseparam`` and
    ``_get_params_preserve`` trim them. Anything else (None) is left to ``email``, whose
    way with broken quoting is what findings have always shown. RFC 2231 names
    (``filename*``, ``name*0``) go through ``email.utils.decode_params`` itself.
    """
    if "\\" in value:
        return None
    params: list[tuple[str, str]] = []
    for piece in value.split(";"):
        if piece.count('"') % 2:
            return None
        i = piece.find("=")
        if i < 0:
            params.append((piece.strip(), ""))
        else:
            params.append((piece[:i].strip().lower(), piece[i + 1 :].strip()))
    decoded: list[tuple[str, _Param]]
    if any("*" in name for name, _ in params[1:]):
        decoded = email.utils.decode_params(params)
    else:
        # What decode_params makes of a name without "*": unquoted, then quoted again.
        decoded = [params[0]]
        decoded.extend(
            (name, '"' + email.utils.quote(email.utils.unquote(val)) + '"')
            for name, val in params[1:]
        )
    found: dict[str, tuple[_Param, _Param]] = {}
    for name, val in decoded:
        key = name.lower()
        if key not in found:
            if isinstance(val, tuple):
                found[key] = (val, (val[0], val[1], email.utils.unquote(val[2])))
            else:
                found[key] = (val, email.utils.unquote(val))
    return found


_cached_params = functools.lru_cache(maxsize=256)(_parse_params)


class Headers(Message):
    """A part's header block: ``email``'s ``Message``, its fields and parameters read faster.

    ``get_param`` (and with it ``get_filename``, ``get_boundary`` and
    ``get_content_charset``) answers from ``_parse_params``, so a header value is split
    and unquoted once, not on each of the several times a part's type, name, charset
    and boundary are asked for. Values that parse cannot vouch for, and 8-bit values
    (which ``email`` hands out as ``Header`` objects), take ``email``'s own way.
    """

    __slots__ = ()
    _headers: list[tuple[str, Any]]  # ``Message``'s own list of (name, value)

    def get(self, name: str, failobj: Any = None) -> Any:
        """``Message.get``, without the policy's two calls for a plain ASCII value.

        ``compat32`` hands such a value back as it is; only one with surrogates (8-bit
        bytes) becomes a ``Header``.
        """
        name = name.lower()
        for k, v in self._headers:
            if k.lower() == name:
                if type(v) is str and v.isascii() and self.policy is compat32:
                    return v
                return self.policy.header_fetch_parse(k, v)
        return failobj

    def items(self) -> list[tuple[str, Any]]:
        """``Message.items``, without the policy's two calls for each plain ASCII value."""
        policy = self.policy
        if policy is not compat32:
            return super().items()
        return [
            (k, v if type(v) is str and v.isascii() else policy.header_fetch_parse(k, v))
            for k, v in self._headers
        ]

    def get_param(  # type: ignore[override]
        self,
        param: str,
        failobj: object = None,
        header: str = "content-type",
        unquote: bool = True,
    ) -> object:
        value = self.get(header, _MISSING)
        if value is _MISSING:
            return failobj
        params = None
        if type(value) is str:
            params = _cached_params(value) if len(value) <= _CACHED_VALUE else _parse_params(value)
        if params is None:
            return super().get_param(param, failobj, header, unquote)
        found = params.get(param.lower())
        if found is None:
            return failobj
        return found[1] if unquote else found[0]


_UNUSUAL_FIELD_START = (b" ", b"\t", b":", b"From ")


def header_info(fields: list[bytes], default_type: str) -> Message:
    """``mimetree.header_info`` without the feedparser when the fields need none of it.

    The feedparser joins the fields, decodes them, splits them into lines again and
    runs a generator per entity; with ``compat32`` all it then keeps of an ordinary
    field is the name before the first colon and the rest with leading blanks and the
    final line end stripped (``Compat32.header_source_parse``). Fields the feedparser
    treats specially (a leading continuation line, an mbox ``From `` line, a colon in
    the first column: each a defect or an envelope) still go through it, so the
    ``Message`` and its defects are the same either way.
    """
    headers = []
    for field in fields:
        if field.startswith(_UNUSUAL_FIELD_START):
            return mimetree.header_info(fields, default_type, factory=Headers)
        name, value = field.decode("ascii", "surrogateescape").split(":", 1)
        headers.append((name, value.lstrip(" \t").rstrip("\r\n")))
    info = Headers()
    info._headers = headers  # what ``set_raw`` would have appended, one by one
    info.set_payload("")
    info.set_default_type(default_type)
    return info


class Node:
    """One MIME entity as ``email`` (``compat32``) would parse it, as offsets into the bytes.

    The split itself is ``milter.mimetree``'s, shared with the rewriter; this class adds
    what ``email``'s feedparser makes of it, so findings stay what they were when the
    inspector used ``email.message_from_bytes``: which line end a part's payload keeps,
    delimiter lines that follow one another (swallowed, no empty part between them),
    a multipart without a usable boundary (a leaf), ``message/*`` bodies (one nested
    message; for ``message/delivery-status`` the first header block) and the defects.
    A payload is a ``memoryview`` of the one buffer, so a 25 MB attachment is decoded
    straight from the message bytes, never copied as text first.

    ``cut`` is the length of the line end removed after ``end`` because it belonged to
    the delimiter that follows: ``email`` leaves it in the payload of a multipart that
    could not be split, and so does this class.
    """

    __slots__ = (
        "_children",
        "_spans",
        "_tail",
        "base",
        "body_start",
        "ctype",
        "cut",
        "defects",
        "delimiter_lines",
        "end",
        "info",
        "kind",
        "max_lines",
    )

    def __init__(
        self,
        base: memoryview,
        start: int,
        end: int,
        *,
        cut: int = 0,
        default_type: str = "text/plain",
        root: bool = False,
        max_lines: int | None = None,
    ) -> None:
        self.base = base
        self.max_lines = max_lines
        self._children: list[Node] | None = None
        self.end = end
        self.cut = cut
        head = mimetree.split_head(base[start:end])
        self.info: Message = header_info(head.fields, default_type)
        self.body_start = start + head.body_start
        self.defects: list[str] = ["MissingHeaderBodySeparatorDefect"] if head.missing_sep else []
        if self.info.defects:
            self.defects.extend(type(d).__name__ for d in self.info.defects)
        # A body that ran to the end of the span keeps the cut line end, as in ``email``;
        # a header block that did (no empty line) had it as its own last line end.
        self._spans: list[tuple[int, int, int]] = []
        self.delimiter_lines = 0
        if not head.sep and not head.missing_sep:
            self.cut = 0
        self.kind = "leaf"
        # Parsed once here: ``get_content_type`` re-parses the header on every call.
        self.ctype = self.info.get_content_type()
        maintype = self.ctype.split("/")[0]
        if self.ctype == "message/delivery-status":
            self.kind = "message"
            self._spans = [(self.body_start, self._first_block_end(), self.cut)]
        elif maintype == "message":
            self.kind = "message"
            self._spans = [(self.body_start, end, self.cut)]
        elif maintype == "multipart":
            self._split()
            if root and self.kind == "leaf":
                self.defects.append("MultipartInvariantViolationDefect")
        # Only a multipart that stayed a leaf keeps the cut line end in its payload.
        self._tail = self.cut if maintype == "multipart" and self.kind == "leaf" else 0

    @classmethod
    def parse(cls, data: mimetree.Buffer, *, max_lines: int | None = None) -> Node:
        """A whole message (``email.message_from_bytes``).

        With ``max_lines``, a multipart stops reading delimiter lines after that many
        (its ``delimiter_lines`` then exceeds it): the caller's part limit is reached
        and the rest need not be split, however many thousands of lines there are.
        """
        view = memoryview(data)
        return cls(view, 0, len(view), root=True, max_lines=max_lines)

    def _first_block_end(self) -> int:
        """Where ``email`` ends the first header block of a delivery-status body."""
        head = mimetree.split_head(self.base[self.body_start : self.end])
        pos = self.body_start + head.body_start
        if head.sep or not head.missing_sep:
            return pos  # the block's headers ended at an empty line: no body
        while pos < self.end:  # otherwise its body runs to the next empty line
            m = mimetree.LINE_END.search(self.base, pos, self.end)
            if m is None:
                return self.end
            if m.start() == pos:
                return pos
            pos = m.end()
        return self.end

    def _split(self) -> None:
        try:
            boundary = self.info.get_boundary()
        except (ValueError, LookupError, IndexError):
            boundary = None
        if boundary is None:
            self.defects.append("NoBoundaryInMultipartDefect")
            return
        cte = str(self.info.get("content-transfer-encoding", "8bit")).lower()
        if cte not in ("7bit", "8bit", "binary"):
            self.defects.append("InvalidMultipartContentTransferEncodingDefect")
        try:
            sep = boundary.encode("ascii", "surrogateescape")
        except UnicodeEncodeError:  # never equal to a line of the message
            self.defects.append("StartBoundaryNotFoundDefect")
            return
        # (start, at, end, close) of each delimiter line, as in ``mimetree.Delimiter``
        found: Iterator[tuple[int, int, int, bool]] = mimetree.delimiter_spans(
            self.base, sep, self.body_start, self.end
        )
        if self.max_lines is not None:
            found = itertools.islice(found, self.max_lines + 1)
        cur = next(found, None)
        if cur is None or cur[3]:
            self.defects.append("StartBoundaryNotFoundDefect")
            if cur is not None:  # everything before a lone closing delimiter
                self.end, self.cut = cur[1], 0
            return
        spans: list[tuple[int, int, int]] = []
        closed = False
        lines = 1
        while True:
            nxt = next(found, None)
            lines += nxt is not None
            while nxt is not None and nxt[1] == cur[2]:  # email swallows repeated delimiters
                cur, nxt = nxt, next(found, None)
                lines += nxt is not None
            if nxt is None:  # the end of the body, with no closing delimiter
                stop, cut = self.end, self.cut
                if not cut:
                    cut = _eol_at_end(self.base, cur[2], stop)
                    stop -= cut
                spans.append((cur[2], stop, cut))
                break
            stop = max(nxt[0], cur[2])
            spans.append((cur[2], stop, nxt[1] - stop))
            if nxt[3]:
                closed = True
                break
            cur = nxt
        if not closed:
            self.defects.append("CloseBoundaryNotFoundDefect")
        # Swallowed delimiters make no part, but they are parts to the limit: a
        # multipart of 200,000 delimiter lines is not one part, whatever email makes of it.
        self.delimiter_lines = lines
        self.kind = "multipart"
        self._spans = spans

    def parts(self) -> Iterator[Node]:
        """The parts of a multipart, or the one message a ``message/*`` holds; built lazily
        and kept, so ``size`` and the walk split each part once."""
        if self._children is not None:
            yield from self._children
            return
        children: list[Node] = []
        default = "message/rfc822" if self.ctype == "multipart/digest" else None
        for start, end, cut in self._spans:
            child = Node(
                self.base,
                start,
                end,
                cut=cut,
                default_type=default or "text/plain",
                max_lines=self.max_lines,
            )
            children.append(child)
            yield child
        self._children = children

    def payload(self) -> memoryview:
        """The body still transfer-encoded, as ``email`` would hand it out (a leaf's)."""
        return self.base[self.body_start : self.end + self._tail]

    def size(self, max_depth: int = 100) -> int:
        """The length of every leaf payload within, as ``email`` would count them.

        Only ``max_depth`` levels down: each level splits the rest of the message once
        more, so a chain of nested multiparts must not be followed further than the
        walk itself will follow it.
        """
        total, stack = 0, [(self, 0)]
        while stack:
            node, level = stack.pop()
            if node.kind == "leaf":
                total += len(node.payload())
            elif level < max_depth:
                stack.extend((child, level + 1) for child in node.parts())
        return total


def _eol_at_end(buf: memoryview, start: int, stop: int) -> int:
    """The length of the line end that ends ``buf[start:stop]`` (0 if none), read in place.

    What ``re.search(rb"(?:\\r\\n|\\r|\\n)\\Z", buf, start, stop)`` finds, without
    trying every offset of the span on the way.
    """
    if stop - start >= 2 and buf[stop - 2] == 13 and buf[stop - 1] == 10:
        return 2
    if stop > start and buf[stop - 1] in (10, 13):
        return 1
    return 0


_B64_PAD = re.compile(rb"=")
_B64_DATA = re.compile(rb"[A-Za-z0-9+/]")
# Everything but the alphabet and the padding character, deleted in one ``translate``.
_B64_JUNK = bytes(
    c for c in range(256) if not (chr(c).isascii() and chr(c).isalnum()) and c not in b"+/="
)
# Said of a part whose decoded bytes are not all the part holds: the scanner marks it
# unscannable, because what was not decoded was not inspected.
BASE64_AFTER_PAD = "base64 data after padding"


_LINE_ENDS = b"\r\n"
_STRICT_MIN = 4 << 10  # below this, the copies cost more than the faster decoding saves


def _strict_base64(raw: memoryview) -> bytes | None:
    """A body of well-formed base64 lines, decoded; None for anything else.

    ``binascii.a2b_base64`` decodes about 40 MB/s, a byte at a time; pybase64 decodes
    ten times faster with SIMD, but only strictly (``validate=True``): the alphabet,
    padding at the end only, nothing else. So the line ends are deleted first, and what
    still fails the strict check (spaces, junk, padding inside, a short last quantum)
    is decoded by ``a2b_base64`` as before. Where both succeed they give the same
    bytes: strict input leaves no room for the lenient decoder's choices.
    """
    if len(raw) < _STRICT_MIN:
        return None
    compact = bytes(raw).translate(None, _LINE_ENDS)
    try:
        return pybase64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return None


def _base64(raw: memoryview) -> tuple[bytes, str | None]:
    """A base64 body decoded as ``email`` does, and what went wrong doing so.

    ``a2b_base64`` stops at the padding that ends a quantum and ignores the rest, so
    a body with more base64 after its padding (garbage, or a second document a lenient
    reader would show) decodes to a fraction of itself; that is reported, never passed.
    It reads the message's own buffer, skipping line ends and other characters outside
    the alphabet, so a large attachment costs its decoded size.
    """
    out = _strict_base64(raw)
    if out is not None:
        return out, None
    try:
        out = binascii.a2b_base64(raw)
        problem = None
    except binascii.Error:
        compact = bytes(raw).translate(None, _B64_JUNK).split(b"=", 1)[0]
        compact = compact[: len(compact) - len(compact) % 4 if len(compact) % 4 == 1 else None]
        try:
            out = binascii.a2b_base64(compact + b"=" * (-len(compact) % 4))
        except binascii.Error:
            return bytes(raw), "invalid base64"
        problem = "invalid base64"
    pad = _B64_PAD.search(raw)
    if pad is not None and _B64_DATA.search(raw, pad.end()) is not None:
        # Alphabet after an "=": a stray one is skipped, padding ends the decoding. Only
        # in the second case are fewer bytes decoded than the alphabet characters hold.
        alphabet = len(bytes(raw).translate(None, _B64_JUNK + b"="))
        if len(out) < alphabet * 3 // 4:
            problem = BASE64_AFTER_PAD
    return out, problem


def payload_bytes(node: Node) -> tuple[bytes, str | None]:
    """The decoded body of a leaf part, and a defect description when decoding was lossy."""
    if node.kind != "leaf":
        return b"", None
    raw = node.payload()
    cte = str(node.info.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte == "base64":
        return _base64(raw)
    if cte == "quoted-printable":
        return binascii.a2b_qp(raw), None
    if cte in ("x-uuencode", "uuencode", "x-uue", "uue"):
        carrier = Message()
        carrier["Content-Transfer-Encoding"] = cte
        carrier.set_payload(bytes(raw).decode("ascii", "surrogateescape"))
        try:
            uu: object = carrier.get_payload(decode=True)
        except (ValueError, binascii.Error):
            return bytes(raw), "invalid uuencode"
        return (uu if isinstance(uu, bytes) else bytes(raw)), None
    return bytes(raw), None


def decode_text(data: bytes, charset: str | None) -> str:
    """Bytes of a text part as str: declared charset, then UTF-8, then Windows-1252."""
    if charset:
        try:
            return data.decode(charset.strip().strip('"').lower(), "replace")
        except (LookupError, ValueError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def part_charset(part: Message) -> str | None:
    try:
        charset = part.get_param("charset")
    except (ValueError, IndexError):
        return None
    if isinstance(charset, tuple):
        charset = charset[2]
    return str(charset) if charset else None


# Elements whose content is not shown; each name's closing tag found forward only
# (``bounded.drop_elements``), so unclosed openers cannot make the scan quadratic.
_HTML_DROP_OPEN = re.compile(r"<(script|style|head|title)\b", re.IGNORECASE)
_HTML_DROP_CLOSE = {
    name: re.compile(rf"</{name}\s*>", re.IGNORECASE)
    for name in ("script", "style", "head", "title")
}
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_HTML_BREAK = re.compile(
    r"<(?:br|/p|/div|/tr|/li|/h\d|p|div|tr|li|h\d|hr|table|/table)\b[^>]*>", re.IGNORECASE
)
_HTML_TAG = re.compile(r"<[^>]*>")
_HTML_CELL = re.compile(r"</t[dh]\s*>", re.IGNORECASE)


def html_to_text(markup: str) -> str:
    """Visible text of an HTML body, a line per block element (markings are lines).

    Comments, tags and breaks are removed only up to the last ``-->`` or ``>``: past
    it none of them can match, and leaving that tail to the patterns is what made
    60,000 unclosed ``<!--`` take most of a minute (see ``bounded.sub_before_last``).
    """
    markup = bounded.sub_before_last(_HTML_COMMENT, "", markup, "-->")
    markup = bounded.drop_elements(markup, _HTML_DROP_OPEN, _HTML_DROP_CLOSE)
    markup = _HTML_CELL.sub("\t", markup)
    markup = bounded.sub_before_last(_HTML_BREAK, "\n", markup, ">")
    text = html.unescape(bounded.sub_before_last(_HTML_TAG, "", markup, ">"))
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())
