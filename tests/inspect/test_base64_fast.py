"""Base64 bodies: the strict SIMD decoder gives what ``binascii`` gives, or steps aside.

``mime._strict_base64`` decodes only well-formed base64 (line ends deleted); for every
other body it returns None and ``binascii.a2b_base64`` decodes as before. Compared on
generated bodies: clean ones of every line length, and ones spoiled the ways mail
spoils them (spaces, junk bytes, padding inside, a short last quantum, data after
the padding).
"""

from __future__ import annotations

import base64
import binascii

from hypothesis import given, settings
from hypothesis import strategies as st

from milter.inspect import mime


def _body(data: bytes, width: int) -> bytes:
    text = base64.b64encode(data)
    return b"".join(text[i : i + width] + b"\r\n" for i in range(0, len(text), width))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=3100, max_size=9000), width=st.integers(4, 200))
def test_clean_bodies_take_the_fast_path_and_decode_the_same(data: bytes, width: int) -> None:
    body = _body(data, width)
    fast = mime._strict_base64(memoryview(body))
    assert fast == binascii.a2b_base64(body) == data
    assert mime._base64(memoryview(body)) == (data, None)


_SPOILERS = [b" ", b"\t", b"*", b"=", b"==", b"A", b"AB=", b"\x00", b"\xff", b"-", b"_"]


@settings(max_examples=400, deadline=None)
@given(
    data=st.binary(min_size=3100, max_size=6000),
    width=st.integers(8, 120),
    spoiler=st.sampled_from(_SPOILERS),
    where=st.floats(0, 1),
)
def test_spoiled_bodies_decode_as_binascii_does(
    data: bytes, width: int, spoiler: bytes, where: float
) -> None:
    body = _body(data, width)
    at = int(where * len(body))
    spoiled = memoryview(body[:at] + spoiler + body[at:])
    fast = mime._strict_base64(spoiled)
    if fast is not None:  # the spoiler happened to leave well-formed base64
        assert fast == binascii.a2b_base64(spoiled)
    assert mime._base64(spoiled) == _lenient_only(spoiled)


def _lenient_only(raw: memoryview) -> tuple[bytes, str | None]:
    """What ``_base64`` made of ``raw`` before the strict decoder stood in front."""
    strict = mime._strict_base64
    mime._strict_base64 = lambda raw: None  # type: ignore[assignment]
    try:
        return mime._base64(raw)
    finally:
        mime._strict_base64 = strict
