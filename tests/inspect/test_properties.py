"""Property tests: generated MIME trees and damaged input never raise and give stable findings."""

from __future__ import annotations

import base64

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from milter.inspect import inspect_message
from milter.inspect.findings import Findings

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

charsets = st.sampled_from(["utf-8", "iso-8859-1", "koi8-r", "x-unknown", "utf-16", "", "big5"])
encodings = st.sampled_from(["7bit", "base64", "quoted-printable", "8bit", "x-uuencode", "bogus"])
names = st.one_of(
    st.text(min_size=0, max_size=20),
    st.just("=?utf-8?b?bGFwb3Jhbi5wZGY=?="),
    st.just("=?bogus?q?x=ZZ?="),
)
bodies = st.binary(max_size=300) | st.text(max_size=300).map(lambda s: s.encode("utf-8", "replace"))


@st.composite
def leaf(draw: st.DrawFn) -> bytes:
    ctype = draw(
        st.sampled_from(
            [
                "text/plain",
                "text/html",
                "application/pdf",
                "application/zip",
                "image/jpeg",
                "message/rfc822",
                "application/pkcs7-mime",
                "application/ms-tnef",
                "text/x-weird",
            ]
        )
    )
    cte = draw(encodings)
    body = draw(bodies)
    if cte == "base64" and draw(st.booleans()):
        body = base64.b64encode(body)
        if draw(st.booleans()):
            body = body[: max(0, len(body) - draw(st.integers(1, 3)))] + b"!@#"
    name = draw(names)
    name_param = ""
    if draw(st.booleans()):
        name_param = f"; filename*=utf-8''{name.encode('utf-8', 'replace').hex()}"
    elif name:
        name_param = f'; filename="{name}"'
    head = (
        f"Content-Type: {ctype}; charset={draw(charsets)}\r\n"
        f"Content-Transfer-Encoding: {cte}\r\n"
        f"Content-Disposition: attachment{name_param}\r\n\r\n"
    )
    return head.encode("utf-8", "surrogateescape") + body


@st.composite
def tree(draw: st.DrawFn, depth: int = 0) -> bytes:
    if depth >= 3 or draw(st.booleans()):
        return draw(leaf())
    boundary = draw(st.sampled_from(["b1", "b 2", "", "=_x", "b1"]))
    children = [draw(tree(depth + 1)) for _ in range(draw(st.integers(0, 3)))]
    parts = b"".join(b"--" + boundary.encode() + b"\r\n" + c + b"\r\n" for c in children)
    if draw(st.booleans()):
        parts += b"--" + boundary.encode() + b"--\r\n"
    sub = draw(st.sampled_from(["mixed", "alternative", "signed", "encrypted", "digest"]))
    return f'Content-Type: multipart/{sub}; boundary="{boundary}"\r\n\r\n'.encode() + parts


def message(top: bytes, subject: str) -> bytes:
    head = f"From: a@b.c\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n".encode(
        "utf-8", "surrogateescape"
    )
    return head + top


def check(data: bytes) -> Findings:
    first = inspect_message(data)
    assert first == inspect_message(data)
    assert not any(r.startswith("internal error") for r in first.unscannable), first.unscannable
    return first


@SETTINGS
@given(tree(), st.text(max_size=40))
def test_generated_mime_trees(top: bytes, subject: str) -> None:
    check(message(top, subject.replace("\r", " ").replace("\n", " ")))


@SETTINGS
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(data: bytes) -> None:
    check(data)


@SETTINGS
@given(tree(), st.integers(0, 400), st.binary(min_size=1, max_size=20))
def test_damaged_messages(top: bytes, cut: int, junk: bytes) -> None:
    data = message(top, "x")
    check(data[:cut] + junk + data[cut:])


def test_encoded_word_with_a_broken_charset_name() -> None:
    # Found by test_damaged_messages: a stray byte inside "=?utf-8?..." names a
    # charset the email package refuses with CharsetError (not a ValueError).
    top = (b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n"
           b'Content-Disposition: attachment; filename="=?\x80utf-8?b?bGFwb3Jhbi5wZGY=?="\r\n\r\n')
    found = check(message(top, "=?\x80utf-8?q?x?="))
    [part] = [p for p in found.parts if p.filename]
    assert "bGFwb3Jhbi5wZGY=" in (part.filename or "")
