"""The inspector's fast paths give what the straightforward code they replace gave.

The PDF text tokenizer is compared with the per-token regular-expression scanner it
replaced, and the header builder with ``email``'s feedparser (``mimetree.header_info``),
on generated input made of the pieces that matter to each.
"""

from __future__ import annotations

import re
from email.message import Message
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from milter import mimetree
from milter.inspect import filetype, inspect_message, mime, pdf

# The scanner the tokenizer replaced: every token, numbers included, one match at a time.
_OLD_TOKEN = re.compile(
    rb"\((?:\\.|[^\\()]|\((?:\\.|[^\\()])*\))*\)|<[0-9A-Fa-f\s]*>|\[|\]|-?\d*\.?\d+|"
    rb"T[jJdDm*]|'|\"|BT|ET"
)
_OLD_ESC = re.compile(rb"\\([0-7]{1,3}|.)", re.DOTALL)
_OLD_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}


def _old_string(token: bytes) -> str:
    if token.startswith(b"<"):
        digits = re.sub(rb"[^0-9A-Fa-f]", b"", token)
        raw = bytes.fromhex((digits + b"0" * (len(digits) % 2)).decode("ascii"))
    else:

        def sub(m: re.Match[bytes]) -> bytes:
            s = m.group(1)
            if s[:1].isdigit():
                return bytes([int(s, 8) & 0xFF])
            return b"" if s in (b"\n", b"\r") else _OLD_ESCAPES.get(s, s)

        raw = _OLD_ESC.sub(sub, token[1:-1])
    if raw.startswith(b"\xfe\xff"):
        return raw[2:].decode("utf-16-be", "replace")
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8", "replace")
    return raw.decode("cp1252", "replace")


def _old_content_text(stream: bytes) -> str:
    lines: list[str] = []
    current: list[str] = []
    pending: list[str] = []
    in_text = in_array = False
    for m in _OLD_TOKEN.finditer(stream):
        tok = m.group()
        if tok == b"BT":
            in_text = True
        elif tok == b"ET":
            in_text = False
            if current:
                lines.append("".join(current))
                current = []
        elif not in_text:
            continue
        elif tok[:1] in (b"(", b"<"):
            pending.append(_old_string(tok))
        elif tok in (b"Tj", b"TJ"):
            current.extend(pending)
            pending = []
        elif tok in (b"'", b'"'):
            if current:
                lines.append("".join(current))
            current, pending = list(pending), []
        elif tok in (b"Td", b"TD", b"T*", b"Tm"):
            if current:
                lines.append("".join(current))
                current = []
        elif tok == b"[":
            in_array = True
        elif tok == b"]":
            in_array = False
        elif in_array and pending and tok.startswith(b"-") and float(tok) < -250:
            pending.append(" ")
    if current:
        lines.append("".join(current))
    return "\n".join(lines)


_PDF_PIECES = [
    *(b"()\\<>[]-.'\" \n\r\t%\x00aTBEjJdDm*"),
    *(
        b"\\(",
        b"\\)",
        b"\\\n",
        b"\\101",
        b"\\8",
        b"41",
        b"FEFF",
        b"\xfe\xff",
        b"\xef\xbb\xbf",
        b"\xe9",
        b"-300",
        b"-251.5",
        b"-.9",
        b"250",
        b"1.5",
        b"Tj",
        b"TJ",
        b"Td",
        b"T*",
        b"Tm",
        b"BT",
        b"ET",
        b"word",
    ),
]
_PDF_PIECES = [p if isinstance(p, bytes) else bytes([p]) for p in _PDF_PIECES]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_PDF_PIECES), max_size=60))
def test_pdf_tokenizer_matches_the_regex_scanner(pieces: list[bytes]) -> None:
    stream = b"".join(pieces)
    try:
        expected = _old_content_text(stream)
    except ValueError:
        # The old scanner read \8 and \9 as octal and raised; the new one must not.
        pdf._content_text(stream)
        return
    assert pdf._content_text(stream) == expected


def test_pdf_tokenizer_cases() -> None:
    for stream in (
        b"BT /F1 12 Tf 72 700 Td [(He) -120 (llo) -300 (world)] TJ T* (next) Tj ET",
        b"BT (a) Tj (b) ' 1 2 (c) \" (deep (a (b) c) d) Tj ET",
        b"BT <FEFF00480069> Tj (\\101\\102\\n) Tj (\xfe\xff\x00H) Tj (caf\xe9) Tj ET",
        b"(outside BT) Tj BT (inside) Tj ET",
    ):
        assert pdf._content_text(stream) == _old_content_text(stream)


def _state(info: Message) -> dict[str, object]:
    out = dict(vars(info))
    out["defects"] = [(type(d).__name__, d.args) for d in info.defects]
    return out


_HEADER_PIECES = [
    b"Subject",
    b"X-A",
    b":",
    b": ",
    b" ",
    b"\t",
    b"\r\n",
    b"\n",
    b"\r",
    b"From ",
    b"v",
    b"\xe9",
    b"=?utf-8?q?x?=",
    b"a:b",
    b"\x00",
    b"Content-Type: multipart/mixed; boundary=x",
]


@settings(max_examples=3000, deadline=None)
@given(
    st.lists(st.sampled_from(_HEADER_PIECES), max_size=30),
    st.sampled_from(["text/plain", "message/rfc822"]),
)
def test_header_info_matches_the_feedparser(pieces: list[bytes], default: str) -> None:
    fields = mimetree.split_head(b"".join(pieces)).fields
    assert _state(mime.header_info(fields, default)) == _state(
        mimetree.header_info(fields, default)
    )


# -- top-level text bodies keep their declared type without libmagic -------------------


def _body_part(body: bytes, ctype: str = "text/plain") -> Any:
    msg = (
        b"From: a@jakarta.go.id\r\nTo: b@example.org\r\nSubject: t\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: " + ctype.encode() + b"; charset=utf-8\r\n\r\n" + body
    )
    return inspect_message(msg).parts[0]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"Selamat pagi, laporan terlampir.\r\n", "text/plain"),
        ("Rapat koordinasi \u2014 ruang 3.\r\n".encode(), "text/plain"),
    ],
)
def test_plain_text_body_keeps_its_declared_type(body: bytes, expected: str) -> None:
    assert filetype.text_body_type(body, "text/plain") == expected
    assert _body_part(body).true_type == expected


@pytest.mark.parametrize(
    "body",
    [
        b"MZ this body pretends to be text\r\n",
        b"PK\x03\x04 zip",
        b"#!/bin/sh\r\nrm -rf /\r\n",
        b"%PDF-1.4\r\n",
        b"caf\xe9 latin-1, not UTF-8\r\n",
        b"bell \x07 and escape \x1b[2J\r\n",
    ],
)
def test_anything_but_plain_text_is_left_to_libmagic(body: bytes) -> None:
    assert filetype.text_body_type(body, "text/plain") is None
    assert _body_part(body).true_type == filetype.sniff(body)


def test_an_executable_pasted_as_a_text_body_is_still_flagged() -> None:
    part = _body_part(b"MZ" + b"\x90\x00\x03" + b"\x00" * 60 + b"PE\x00\x00")
    assert filetype.is_executable(part.true_type, "")
    assert "executable" in part.flags


def test_bodies_inside_attached_messages_are_files_and_keep_libmagic() -> None:
    inner = (
        b"From: x@example.org\r\nSubject: inner\r\nContent-Type: text/html\r\n\r\n"
        b"<p>short fragment</p>\r\n"
    )
    outer = (
        b"From: a@jakarta.go.id\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
        b"see attached\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"--b--\r\n"
    )
    deep = [
        p for p in inspect_message(outer).parts if p.depth > 1 and p.declared_type == "text/html"
    ]
    assert deep and all(p.true_type == filetype.sniff(b"<p>short fragment</p>\r\n") for p in deep)
