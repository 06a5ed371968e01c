"""Byte-level MIME splitting, shared by the inspector and the rewriter.

Both need to know where a header block ends and where the parts of a multipart
begin, and they must agree on it: the rewriter strips the attachment the inspector
reported, not its neighbour. So the rules live here once, and they are CPython's
feedparser's (the header-line test, the empty-line separator, boundary lines with
optional trailing blanks), applied to bytes instead of decoded line strings.

Working on ``memoryview`` slices of the original bytes is the point: the stdlib
parser turns a message into a str, a list of line strings and joined payload
strings, several copies of every attachment. Here a part is a pair of offsets into
the one buffer the message already occupies; only header fields are copied.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from email.errors import MessageError
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

# The header-line test of CPython's feedparser (``headerRE``), so a message splits
# here exactly where ``email`` would split it.
FIELD = re.compile(rb"^(From |[\041-\071\073-\176]*:|[\t ])")
LINE_END = re.compile(rb"\r\n|\r|\n")

Buffer = bytes | memoryview
# A header block larger than this is cut there (what follows counts as body). Real
# header blocks are a few KB; the bound keeps a hostile one from costing unbounded time.
MAX_HEAD = 1 << 20
_FOLD = re.compile(r"(?:\r\n|\r|\n)[ \t]")
# A run of lines that ``FIELD`` accepts as a field or as a continuation line, each with
# its line end, then the empty line that ends the block if it comes next. "From " lines
# are left out: a run stops where ``split_head`` has more to decide than where a field
# begins.
_HEADER_LINES = re.compile(
    rb"((?:(?:[\041-\071\073-\176]*+:|[ \t])[^\r\n]*+(?:\r\n?|\n))*+)(\r\n?|\n)?"
)
_BLANK = (32, 9)  # the first byte of a continuation line: a space or a tab


def decode_words(value: str) -> str:
    """A header value unfolded, RFC 2047 words decoded; as written when they cannot be.

    Header values come from strangers: an unknown charset, bad base64 or a broken
    encoded word must leave the text readable, never raise.
    """
    text = _FOLD.sub(" ", value).strip()
    if "=?" not in text:
        return text
    try:
        return str(make_header(decode_header(text)))
    except (ValueError, LookupError, UnicodeError, MessageError):
        return text


def eol_of(data: Buffer) -> bytes:
    """The message's line ending; like ``email``, a bare CR counts as one."""
    m = LINE_END.search(data)
    return m.group() if m else b"\r\n"


@dataclass
class Head:
    """Where an entity's header block ends.

    ``prefix`` is an mbox ``From`` line (only taken at the top level), ``fields`` the
    header fields with their continuation lines and line ends, ``sep`` the empty line
    ending the block (empty when there is none) and ``body_start`` the offset of the
    body. ``missing_sep`` says a non-header line started the body without an empty
    line first, which ``email`` reports as ``MissingHeaderBodySeparatorDefect``.
    """

    prefix: bytes
    fields: list[bytes]
    sep: bytes
    body_start: int
    missing_sep: bool


def split_head(raw: Buffer, *, top: bool = False) -> Head:
    """Split ``raw`` into header fields and the body offset, copying only the fields."""
    view = memoryview(raw)
    size = len(view)
    prefix = b""
    pos = 0
    if top and view[:5].tobytes() == b"From ":
        m = LINE_END.search(view)
        pos = m.end() if m else size
        prefix = bytes(view[:pos])
    fields: list[bytes] = []
    field: list[Buffer] = []  # the field being read: its line and continuation lines
    sep = b""
    body_start = size
    missing = False
    limit = min(size, pos + MAX_HEAD)
    # The lines that are plainly header lines, and the empty line after them, found in
    # one pass: the loop below is left what is unusual. A line ending where the search
    # had to stop may have been cut short (half of a CR LF), so that one is left to it.
    stop = min(size, limit + 1)
    run = _HEADER_LINES.match(view, pos, stop)
    if run is not None:
        end = run.end(1)
        if end > pos:
            lines = view[pos:end].tobytes().splitlines(keepends=True)
            if end == stop < size:
                end -= len(lines.pop())
            for line in lines:
                if line[0] in _BLANK and field:
                    field.append(line)
                else:
                    if field:
                        fields.append(b"".join(field))
                    field = [line]
            pos = end
        if run.start(2) == pos < limit:
            sep, body_start = run.group(2), run.end(2)
    while not sep and pos < size:
        if pos >= limit:  # a header block no mail needs: the rest is body, and a defect
            body_start, missing = pos, True
            break
        m = LINE_END.search(view, pos)
        nxt = m.end() if m else size
        if m is not None and m.start() == pos:  # an empty line: the separator
            sep, body_start = m.group(), nxt
            break
        if view[pos : pos + 1].tobytes() in (b" ", b"\t") and field:
            field.append(view[pos:nxt])  # joined once below: folding costs linear time
        elif FIELD.match(view[pos:nxt]):  # includes a stray continuation or "From " line
            if field:
                fields.append(b"".join(field))
            field = [view[pos:nxt]]
        else:  # not a header: the body starts without an empty line
            body_start = pos
            missing = True
            break
        pos = nxt
    if field:
        fields.append(b"".join(field))
    return Head(prefix, fields, sep, body_start, missing)


def header_info(
    fields: Sequence[bytes],
    default_type: str = "text/plain",
    *,
    factory: Callable[..., Message] | None = None,
) -> Message:
    """The header block as a headers-only ``Message`` (``compat32``), with its defects.

    ``factory`` makes the ``Message`` when given: a subclass, as the inspector's
    ``mime.Headers``.
    """
    parser = BytesHeaderParser(factory, policy=compat32)
    info = parser.parsebytes(b"".join(fields) + b"\n")
    info.set_default_type(default_type)
    return info


def boundary_of(info: Message) -> bytes | None:
    """The multipart boundary as bytes; None when missing, unparsable or unmatchable.

    A boundary that is not ASCII (a decoded RFC 2231 value) can never match a line
    ``email`` reads, since it compares against bytes decoded as ASCII: none it is.
    """
    try:
        boundary = info.get_boundary()
    except (ValueError, LookupError, IndexError):
        return None
    if boundary is None:
        return None
    try:
        return boundary.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return None


@dataclass(frozen=True)
class Delimiter:
    """One boundary line in a multipart body.

    ``at`` is where its ``--`` starts, ``start`` that minus the line end before it
    (RFC 2046: the line end belongs to the delimiter, not to the part before), ``end``
    the offset after its own line end, ``close`` whether it is the closing one.
    """

    start: int
    at: int
    end: int
    close: bool


def delimiters(body: Buffer, boundary: bytes) -> Iterator[Delimiter]:
    """Every boundary line of ``body`` in order, closing ones included; lazily.

    A line is a delimiter when it is ``--boundary``, optionally ``--`` after it, then
    only blanks up to the line end (feedparser's ``boundaryre``); a boundary folded
    over lines (``compat32`` keeps the line end) therefore matches nothing. Callers decide what
    follows a closing delimiter: the rewriter stops there, the inspector follows
    ``email`` in swallowing delimiter lines that come straight after another.
    """
    for start, at, end, close in delimiter_spans(body, boundary):
        yield Delimiter(start, at, end, close)


@functools.lru_cache(maxsize=64)
def _delimiter_line(boundary: bytes) -> re.Pattern[bytes]:
    """A delimiter line's start: ``--boundary``, maybe ``--``, blanks up to a line end."""
    return re.compile(b"--" + re.escape(boundary) + rb"(--)?[ \t]*(?=[\r\n]|\Z)")


def delimiter_spans(
    data: Buffer, boundary: bytes, first: int = 0, last: int | None = None
) -> Iterator[tuple[int, int, int, bool]]:
    """``delimiters`` of the body ``data[first:last]``, as tuples of offsets into ``data``.

    The lines are those ``delimiters`` finds in the slice, and ``\\Z`` and the line
    ends are the slice's own; only the offsets count from the start of ``data``. When
    ``data`` is bytes or a view of all of it, ``bytes.find`` skips to where the boundary
    next occurs, many times faster than ``re`` scans an attachment for it; the pattern
    then starts there, and still does the scanning where the boundary occurs often
    without making a delimiter line (``--b1`` in ``--b10``).
    """
    if b"\r" in boundary or b"\n" in boundary:
        return  # email compares line by line: a boundary spanning lines matches none
    pattern = _delimiter_line(boundary)
    view = memoryview(data)
    stop = len(view) if last is None else last
    literal = b"--" + boundary
    whole = view.obj
    find = None
    if type(whole) is bytes and view.c_contiguous and view.nbytes == len(whole):
        find = whole.find
    pos = first
    while True:
        if find is not None:
            pos = find(literal, pos, stop)
            if pos < 0:
                return
        m = pattern.search(view, pos, stop)
        if m is None:
            return
        at, end = m.span()
        pos = end
        if at > first and view[at - 1] not in (10, 13):  # not at the start of a line
            continue
        start = at
        if at - first >= 2 and view[at - 2 : at].tobytes() == b"\r\n":
            start -= 2
        elif at > first:  # a lone LF or CR
            start -= 1
        after = view[end : min(end + 2, stop)].tobytes()
        if after == b"\r\n":
            end += 2
        elif after[:1] in (b"\n", b"\r"):
            end += 1
        yield start, at, end, m.group(1) is not None
