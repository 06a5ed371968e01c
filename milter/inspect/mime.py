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
import html
import re
from collections.abc import Iterator
from email.message import Message

from milter import mimetree
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
        return _WS.sub(" ", clean(text)).strip()
    text = value if isinstance(value, str) else str(value)
    text = clean(text)
    if "=?" in text and _ENCODED_WORD.search(text):
        text = decode_words(text)
    return _WS.sub(" ", clean(text)).strip()


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


_EOL_AT_END = re.compile(rb"(?:\r\n|\r|\n)\Z")
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
    if any(field.startswith(_UNUSUAL_FIELD_START) for field in fields):
        return mimetree.header_info(fields, default_type)
    info = Message()
    for field in fields:
        name, value = field.decode("ascii", "surrogateescape").split(":", 1)
        info.set_raw(name, value.lstrip(" \t").rstrip("\r\n"))
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
        "_spans",
        "_tail",
        "base",
        "body_start",
        "ctype",
        "cut",
        "defects",
        "end",
        "info",
        "kind",
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
    ) -> None:
        self.base = base
        self.end = end
        self.cut = cut
        head = mimetree.split_head(base[start:end])
        self.info: Message = header_info(head.fields, default_type)
        self.body_start = start + head.body_start
        self.defects: list[str] = ["MissingHeaderBodySeparatorDefect"] if head.missing_sep else []
        self.defects.extend(type(d).__name__ for d in self.info.defects)
        # A body that ran to the end of the span keeps the cut line end, as in ``email``;
        # a header block that did (no empty line) had it as its own last line end.
        self._spans: list[tuple[int, int, int]] = []
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
    def parse(cls, data: mimetree.Buffer) -> Node:
        """A whole message (``email.message_from_bytes``)."""
        view = memoryview(data)
        return cls(view, 0, len(view), root=True)

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
        body = self.base[self.body_start : self.end]
        found = mimetree.delimiters(body, sep)
        cur = next(found, None)
        if cur is None or cur.close:
            self.defects.append("StartBoundaryNotFoundDefect")
            if cur is not None:  # everything before a lone closing delimiter
                self.end, self.cut = self.body_start + cur.at, 0
            return
        base = self.body_start
        spans: list[tuple[int, int, int]] = []
        closed = False
        while True:
            nxt = next(found, None)
            while nxt is not None and nxt.at == cur.end:  # email swallows repeated delimiters
                cur, nxt = nxt, next(found, None)
            if nxt is None:  # the end of the body, with no closing delimiter
                stop, cut = self.end, self.cut
                if not cut:
                    m = _EOL_AT_END.search(self.base, base + cur.end, stop)
                    if m is not None:
                        stop, cut = m.start(), len(m.group())
                spans.append((base + cur.end, stop, cut))
                break
            stop = base + max(nxt.start, cur.end)
            spans.append((base + cur.end, stop, base + nxt.at - stop))
            if nxt.close:
                closed = True
                break
            cur = nxt
        if not closed:
            self.defects.append("CloseBoundaryNotFoundDefect")
        self.kind = "multipart"
        self._spans = spans

    def parts(self) -> Iterator[Node]:
        """The parts of a multipart, or the one message a ``message/*`` holds; built lazily."""
        default = "message/rfc822" if self.ctype == "multipart/digest" else None
        for start, end, cut in self._spans:
            yield Node(self.base, start, end, cut=cut, default_type=default or "text/plain")

    def payload(self) -> memoryview:
        """The body still transfer-encoded, as ``email`` would hand it out (a leaf's)."""
        return self.base[self.body_start : self.end + self._tail]

    def size(self) -> int:
        """The length of every leaf payload within, as ``email`` would count them."""
        total, stack = 0, [(self, 0)]
        while stack:
            node, level = stack.pop()
            if node.kind == "leaf":
                total += len(node.payload())
            elif level < 100:
                stack.extend((child, level + 1) for child in node.parts())
        return total


def payload_bytes(node: Node) -> tuple[bytes, str | None]:
    """The decoded body of a leaf part, and a defect description when decoding was lossy."""
    if node.kind != "leaf":
        return b"", None
    raw = node.payload()
    cte = str(node.info.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte == "base64":
        # a2b_base64 skips characters outside the alphabet (line ends included) and
        # reads the message's own buffer, so a large attachment costs its decoded size.
        try:
            return binascii.a2b_base64(raw), None
        except binascii.Error:
            pass
        compact = re.sub(rb"[^A-Za-z0-9+/]", b"", bytes(raw).split(b"=", 1)[0])
        compact = compact[: len(compact) - len(compact) % 4 if len(compact) % 4 == 1 else None]
        try:
            return binascii.a2b_base64(compact + b"=" * (-len(compact) % 4)), "invalid base64"
        except binascii.Error:
            return bytes(raw), "invalid base64"
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


_HTML_DROP = re.compile(r"<(script|style|head|title)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_HTML_BREAK = re.compile(
    r"<(?:br|/p|/div|/tr|/li|/h\d|p|div|tr|li|h\d|hr|table|/table)\b[^>]*>", re.IGNORECASE
)
_HTML_TAG = re.compile(r"<[^>]*>")
_HTML_CELL = re.compile(r"</t[dh]\s*>", re.IGNORECASE)


def html_to_text(markup: str) -> str:
    """Visible text of an HTML body, a line per block element (markings are lines)."""
    markup = _HTML_COMMENT.sub("", markup)
    markup = _HTML_DROP.sub("", markup)
    markup = _HTML_CELL.sub("\t", markup)
    markup = _HTML_BREAK.sub("\n", markup)
    text = html.unescape(_HTML_TAG.sub("", markup))
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())
