"""Memory stays bounded by message size, and the byte-level split agrees with ``email``.

The inspector reads parts as slices of the message bytes (``milter.mimetree``); these
tests keep a large attachment from costing many times its size again, and check on
malformed multiparts that the parts, payloads and defects are the ones ``email``'s
parser finds, since the findings were defined by it.
"""

from __future__ import annotations

import email
import email.policy
import random
import time
import tracemalloc
from email.message import Message

import pytest

from bench.messages import big_message
from milter.config import InspectLimits
from milter.inspect import inspect_message
from milter.inspect.mime import Node

MB = 1 << 20


def _peak(data: bytes, limits: InspectLimits | None = None) -> tuple[int, list[str]]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        findings = inspect_message(data, limits=limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, list(findings.unscannable)


def test_large_attachment_costs_a_few_times_its_size() -> None:
    size = 16 * MB
    data = big_message(size)
    peak, unscannable = _peak(data)
    assert unscannable == []
    assert peak < 4 * size, f"peak {peak / MB:.0f} MB for a {size / MB:.0f} MB attachment"


def test_large_text_body_is_read_within_the_text_limit() -> None:
    rng = random.Random(3)
    line = " ".join("".join(rng.choice("abcdefgh") for _ in range(6)) for _ in range(12))
    body = "\n".join([line] * ((16 * MB) // len(line)))
    data = b"Subject: besar\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + body.encode(
        "ascii"
    )
    limits = InspectLimits(text_bytes=1 * MB)
    peak, unscannable = _peak(data, limits)
    assert "text limit reached" in unscannable
    # the decoded body (one copy) plus the text window: it was 5x the body's size
    assert peak < 2 * len(data), f"peak {peak / MB:.0f} MB"


_MALFORMED = [
    # repeated delimiters, no closing one, a lone closing one, a boundary folded over
    # two lines, a part with no blank line after its headers, an unsplittable nested
    # multipart before an outer delimiter, a delivery-status with several blocks
    b'Content-Type: multipart/mixed; boundary="b"\n\npre\n--b\n--b\nContent-Type: text/plain\n\n'
    b"one\n--b\n\n--b\r\ntwo\r\n--b--\nepi\n",
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\nlast\r\n\r\n',
    b'Content-Type: multipart/mixed; boundary="b"\n\nbefore\n--b--\nafter\n',
    b'Content-Type: multipart/mixed; boundary="x\n y"\n\n--x\n y\nbody\n--x\n y--\n',
    b'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\nnot a '
    b"header\nmore\n--b--\n",
    b'Content-Type: multipart/mixed; boundary="o"\n\n--o\nContent-Type: multipart/mixed\n\n'
    b'inner\n\n--o\nContent-Type: multipart/mixed; boundary="i"\n\n--i\n\nx\n\n--o--\n',
    b'Content-Type: multipart/report; boundary="r"\n\n--r\nContent-Type: message/delivery-'
    b"status\n\nReporting-MTA: dns; a\nbad line\n\nFinal-Recipient: rfc822; b\n--r\n"
    b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\nU3ViamVjdDogaGkKCmJvZHkK\n"
    b"--r--\n",
    b"From someone\nSubject: x\n Folded\n: no name\nContent-Type: multipart/alternative\n\nbody\n",
]


def _email_view(msg: Message) -> list[object]:
    payload = msg._payload  # the raw payload, before any charset decoding
    inner = [_email_view(p) for p in payload] if isinstance(payload, list) else payload
    return [msg.get_content_type(), [type(d).__name__ for d in msg.defects], inner]


def _node_view(node: Node) -> list[object]:
    if node.kind == "leaf":
        inner: object = bytes(node.payload()).decode("ascii", "surrogateescape")
    else:
        inner = [_node_view(p) for p in node.parts()]
    return [node.info.get_content_type(), node.defects, inner]


@pytest.mark.parametrize("data", _MALFORMED, ids=range(len(_MALFORMED)))
def test_split_agrees_with_email(data: bytes) -> None:
    want = _email_view(email.message_from_bytes(data, policy=email.policy.compat32))
    got = _node_view(Node.parse(data))
    if "delivery-status" in repr(want):
        # email keeps every header block of a delivery-status; the inspector reads the first
        ds_want = want[2][0][2]  # type: ignore[index]
        ds_got = got[2][0][2]  # type: ignore[index]
        assert ds_got == ds_want[:1]  # type: ignore[index]
        want[2][0][2] = got[2][0][2] = None  # type: ignore[index]
    assert got == want


def test_a_header_folded_a_million_times_costs_linear_time() -> None:
    # Joining each continuation line onto the field read so far made this quadratic:
    # 400k lines took minutes. The bound is generous; the linear cost is ~0.1 s.
    data = b"From: a@b.c\r\nX-Long: a\r\n" + b" b\r\n" * 400_000 + b"\r\nbody\r\n"
    started = time.perf_counter()
    found = inspect_message(data)
    assert time.perf_counter() - started < 5
    assert not any(r.startswith("internal error") for r in found.unscannable)
