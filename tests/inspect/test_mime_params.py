"""Header fields, parameters and delimiter lines read fast, as ``email`` reads them.

``mime.Headers`` answers ``get_param`` from its own parse of the common value shapes,
``mimetree.split_head`` takes plain header lines in one pass and
``mimetree.delimiter_spans`` finds boundaries with ``bytes.find``. Each is compared
here with what it replaced (``email.message.Message``, the line-by-line splitter and
the regular-expression scan) on generated input made of the pieces that matter:
quoting, RFC 2231 names, 8-bit bytes, odd line ends, a header block cut by its limit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from email.header import Header
from email.message import Message

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from milter import mimetree
from milter.inspect import mime


def _outcome(call: Callable[..., object], *args: object) -> object:
    try:
        result = call(*args)
    except Exception as exc:  # the same exception is part of the same behaviour
        return ("raised", type(exc).__name__, str(exc))
    if isinstance(result, Header):  # 8-bit bytes: compared as text, which may raise
        return ("header", _outcome(str, result))
    return ("value", result)


_VALUE_PIECES = [
    "text/plain",
    "multipart/mixed",
    "attachment",
    ";",
    ";",
    " ",
    "\t",
    "\r\n ",
    '"',
    '"',
    "\\",
    "=",
    "=",
    "name",
    "NAME",
    "filename",
    "filename*",
    "filename*0*",
    "filename*1",
    "name*0",
    "name*1*",
    "boundary",
    "charset",
    "utf-8''%E2%82%AC",
    "us-ascii''a%20b",
    "'",
    "%",
    "%4",
    "<",
    ">",
    "(comment)",
    "=?utf-8?q?x?=",
    "*",
    "a",
    "b.pdf",
    "\xe9",
    "\udce9",
    "\u2003",
    "\x00",
]
_PARAMS = ["name", "NAME", "filename", "boundary", "charset", "smime-type", "a", "", "filename*"]


def _param_reads(msg: Message) -> list[object]:
    reads: list[object] = []
    for param in _PARAMS:
        for header in ("content-type", "Content-Disposition", "x-missing"):
            for unquote in (True, False):
                reads.append(_outcome(msg.get_param, param, "absent", header, unquote))
    reads += [
        _outcome(msg.get_filename, "absent"),
        _outcome(msg.get_boundary, "absent"),
        _outcome(msg.get_content_charset, "absent"),
        _outcome(msg.get, "content-type"),
        _outcome(msg.__getitem__, "content-disposition"),
        _outcome(mime.filename, msg),
        _outcome(mime.part_charset, msg),
        _outcome(mime.disposition, msg),
        [(name, _outcome(str, v) if isinstance(v, Header) else v) for name, v in msg.items()],
    ]
    return reads


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(st.sampled_from(_VALUE_PIECES), max_size=16),
    st.lists(st.sampled_from(_VALUE_PIECES), max_size=8),
    st.booleans(),
)
def test_parameters_are_read_as_email_reads_them(
    first: list[str], second: list[str], both: bool
) -> None:
    plain, fast = Message(), mime.Headers()
    for msg in (plain, fast):
        msg.set_raw("Content-Type", "".join(first))
        msg.set_raw("X-Other", "".join(second))
        if both:
            msg.set_raw("Content-Disposition", "".join(second))
            msg.set_raw("content-type", "text/html; charset=x")
    assert _param_reads(fast) == _param_reads(plain)


@pytest.mark.parametrize(
    "value",
    [
        'text/plain; charset="us-ascii"',
        'attachment; filename="laporan triwulan.pdf"',
        "attachment; filename=laporan.pdf; size=1234",
        "attachment; FileName=<x.pdf>",
        'application/pdf; name="a;b.pdf"',
        'application/pdf; name="a\\"b.pdf"',
        'application/pdf; name="unclosed',
        "attachment; filename*=utf-8''%E2%82%AC.pdf",
        "attachment; filename*0=a; filename*1=b.pdf",
        "attachment; filename*0*=utf-8''a; filename*=b",
        "attachment; filename*=''%ZZ",
        'attachment; filename="=?utf-8?b?w6kucGRm?="',
        'multipart/mixed; boundary="a\r\n b"',
        "attachment; filename",
        "; ; =",
        "",
    ],
)
def test_known_shapes_read_the_same(value: str) -> None:
    plain, fast = Message(), mime.Headers()
    for msg in (plain, fast):
        msg.set_raw("Content-Type", value)
        msg.set_raw("Content-Disposition", value)
    assert _param_reads(fast) == _param_reads(plain)
    assert _param_reads(fast) == _param_reads(plain)  # the remembered parse, too


def test_a_changed_header_is_read_again() -> None:
    info = mime.Headers()
    info.set_raw("Content-Type", 'text/plain; charset="us-ascii"')
    assert info.get_param("charset") == "us-ascii"
    info.replace_header("Content-Type", 'text/plain; charset="utf-8"')
    assert info.get_param("charset") == "utf-8"
    info["Content-Transfer-Encoding"] = "base64"
    assert info.get("content-transfer-encoding") == "base64"


# -- split_head: the line-by-line splitter it replaced ----------------------------------


def _split_head_by_line(raw: bytes, *, top: bool = False) -> mimetree.Head:
    view = memoryview(raw)
    size = len(view)
    prefix = b""
    pos = 0
    if top and view[:5].tobytes() == b"From ":
        m = mimetree.LINE_END.search(view)
        pos = m.end() if m else size
        prefix = bytes(view[:pos])
    fields: list[bytes] = []
    field: list[memoryview] = []
    sep = b""
    body_start = size
    missing = False
    limit = min(size, pos + mimetree.MAX_HEAD)
    while pos < size:
        if pos >= limit:
            body_start, missing = pos, True
            break
        m = mimetree.LINE_END.search(view, pos)
        nxt = m.end() if m else size
        if m is not None and m.start() == pos:
            sep, body_start = m.group(), nxt
            break
        if view[pos : pos + 1].tobytes() in (b" ", b"\t") and field:
            field.append(view[pos:nxt])
        elif mimetree.FIELD.match(view[pos:nxt]):
            if field:
                fields.append(b"".join(field))
            field = [view[pos:nxt]]
        else:
            body_start = pos
            missing = True
            break
        pos = nxt
    if field:
        fields.append(b"".join(field))
    return mimetree.Head(prefix, fields, sep, body_start, missing)


_HEAD_PIECES = [
    b"Subject",
    b"Content-Type",
    b"X-A",
    b":",
    b": ",
    b" ",
    b"\t",
    b"\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"From ",
    b"v",
    b"\xe9",
    b"a:b",
    b"\x00",
    b"\x0b",
    b"\x0c",
    b"\x1c",
    b"\x85",
    b"--b",
]


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(st.sampled_from(_HEAD_PIECES), max_size=30),
    st.booleans(),
    st.sampled_from([None, 3, 8, 12, 20]),
)
def test_split_head_matches_the_line_by_line_split(
    pieces: list[bytes], top: bool, limit: int | None
) -> None:
    raw = b"".join(pieces)
    with pytest.MonkeyPatch.context() as patch:
        if limit is not None:  # a small limit, so that lines straddle it
            patch.setattr(mimetree, "MAX_HEAD", limit)
        assert mimetree.split_head(raw, top=top) == _split_head_by_line(raw, top=top)
        assert mimetree.split_head(memoryview(raw)[1:], top=top) == _split_head_by_line(
            raw[1:], top=top
        )


# -- delimiter_spans: the regular-expression scan it replaced ---------------------------


def _delimiters_by_pattern(body: bytes, boundary: bytes) -> Iterator[tuple[int, int, int, bool]]:
    if b"\r" in boundary or b"\n" in boundary:
        return
    pattern = re.compile(b"--" + re.escape(boundary) + rb"(--)?[ \t]*(?=[\r\n]|\Z)")
    for m in pattern.finditer(body):
        at = m.start()
        if at and body[at - 1] not in (10, 13):
            continue
        start = at
        if at >= 2 and body[at - 2 : at] == b"\r\n":
            start -= 2
        elif at >= 1:
            start -= 1
        end = m.end()
        after = body[end : end + 2]
        if after == b"\r\n":
            end += 2
        elif after[:1] in (b"\n", b"\r"):
            end += 1
        yield start, at, end, bool(m.group(1))


_BODY_PIECES = [b"--", b"-", b"b", b"bb", b"\r\n", b"\n", b"\r", b" ", b"\t", b"x", b"--b--"]


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(st.sampled_from(_BODY_PIECES), max_size=24),
    st.sampled_from([b"b", b"bb", b"-", b"b ", b"", b"b\r", b"x"]),
    st.integers(0, 40),
    st.integers(0, 40),
)
def test_delimiter_spans_match_the_pattern_scan(
    pieces: list[bytes], boundary: bytes, cut_a: int, cut_b: int
) -> None:
    data = b"".join(pieces)
    first, last = sorted((min(cut_a, len(data)), min(cut_b, len(data))))
    want = [
        (start + first, at + first, end + first, close)
        for start, at, end, close in _delimiters_by_pattern(data[first:last], boundary)
    ]
    # bytes are searched with ``find``, a view of part of them with a pattern
    assert list(mimetree.delimiter_spans(data, boundary, first, last)) == want
    view = memoryview(b"<" + data)[1:]
    assert list(mimetree.delimiter_spans(view, boundary, first, last)) == want
    whole = list(_delimiters_by_pattern(data, boundary))
    assert [tuple(vars(d).values()) for d in mimetree.delimiters(data, boundary)] == whole
