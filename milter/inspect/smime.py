"""S/MIME (CMS, RFC 5652): what a ``pkcs7-mime`` blob holds, read without a crypto library.

Signing hides nothing: opaque signed mail (``smime-type=signed-data``) carries its
message inside the signature structure, and a mail client shows it to the reader after
checking the signature. Treating it as unscannable let any signed message out unread,
so the encapsulated content is taken out here and walked like any other part. Only
enveloped (encrypted) content is unreadable; compressed data (RFC 3274, zlib) is
inflated within the caller's budget.

Nothing here verifies a signature: the gateway decides what leaves, not whom to trust,
and the content is the same whether the signature holds or not.

The reader is a small DER/BER walker rather than ``asn1crypto``: three structures are
needed (ContentInfo, SignedData, CompressedData, down to one OCTET STRING), a walker
that only skips elements by their lengths is about a hundred lines with no dependency,
and every step of it is bounded here (nesting depth, indefinite-length scans, the size
of the content it assembles), which a general decoder would have to be checked for.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

from milter.inspect import bounded

# Object identifiers, as their DER content octets.
_OID_DATA = bytes.fromhex("2a864886f70d010701")  # 1.2.840.113549.1.7.1
_OID_SIGNED = bytes.fromhex("2a864886f70d010702")  # 1.2.840.113549.1.7.2
_OID_ENVELOPED = bytes.fromhex("2a864886f70d010703")  # 1.2.840.113549.1.7.3
_OID_ENCRYPTED = bytes.fromhex("2a864886f70d010706")  # 1.2.840.113549.1.7.6
_OID_AUTH_ENVELOPED = bytes.fromhex("2a864886f70d0109100117")  # 1.2.840.113549.1.9.16.1.23
_OID_COMPRESSED = bytes.fromhex("2a864886f70d0109100109")  # 1.2.840.113549.1.9.16.1.9

_MAX_NESTING = 64  # BER elements inside each other; real CMS needs fewer than 10
_MAX_LAYERS = 8  # signed inside compressed inside signed ...
_B64_LINE = re.compile(rb"^[A-Za-z0-9+/=\r\n\t ]+$")

SIGNED = "signed"
ENVELOPED = "enveloped"
COMPRESSED = "compressed"
DATA = "data"


class CmsError(ValueError):
    """A CMS structure that cannot be read (truncated, lying lengths, too deep)."""


@dataclass
class Unwrapped:
    """What a CMS blob came to: the layers taken off, and the content inside if readable.

    ``content`` is None when the innermost layer is encrypted (``encrypted``) or the
    structure could not be read (``reason``); ``detached`` is a signature with no content
    in it (the content is the other half of a multipart/signed).
    """

    layers: tuple[str, ...] = ()
    content: bytes | None = None
    encrypted: bool = False
    detached: bool = False
    reason: str | None = None


def _der_blob(data: bytes) -> bytes | None:
    """DER as it is, or DER that a mailer base64-encoded once more (``.p7m`` files often are)."""
    if data[:1] == b"\x30":
        return data
    head = data[:4096].lstrip()
    if head.startswith(b"-----BEGIN"):
        start = data.find(b"\n", data.find(b"-----BEGIN")) + 1
        stop = data.find(b"-----END", start)
        data = data[start : stop if stop != -1 else len(data)]
    elif not _B64_LINE.match(head):
        return None
    try:
        raw = binascii.a2b_base64(data)
    except (binascii.Error, ValueError):
        return None
    return raw if raw[:1] == b"\x30" else None


def unwrap(data: bytes, *, limit: int, ratio: float) -> Unwrapped:
    """Take signed and compressed layers off until content, encryption or an error.

    ``limit`` bounds the content kept (an OCTET STRING assembled from BER chunks, or
    inflated compressed data); reaching it is an error, as a cut content is not the
    content.
    """
    blob = _der_blob(data)
    if blob is None:
        return Unwrapped(reason="unreadable S/MIME: not a CMS structure")
    layers: list[str] = []
    try:
        for _ in range(_MAX_LAYERS):
            kind, inner = _content_info(blob, limit)
            layers.append(kind)
            if kind in (ENVELOPED,):
                return Unwrapped(tuple(layers), encrypted=True)
            if kind == DATA:
                return Unwrapped(tuple(layers), content=inner)
            if inner is None:
                return Unwrapped(tuple(layers), detached=True)
            if kind == COMPRESSED:
                out = bounded.inflate(inner, limit=limit, ratio=ratio, pad=False)
                if out is None:
                    raise CmsError("compressed data is not zlib")
                if out.cut:
                    raise CmsError(out.cut)
                inner = out.data
            if _looks_like_content_info(inner):
                blob = inner
                continue
            return Unwrapped(tuple(layers), content=inner)
    except CmsError as exc:
        return Unwrapped(tuple(layers), reason=f"unreadable S/MIME: {exc}")
    return Unwrapped(tuple(layers), reason="unreadable S/MIME: too many layers")


def _looks_like_content_info(data: bytes) -> bool:
    """Signed content that is itself CMS (signed, then encrypted, then signed again)."""
    if data[:1] != b"\x30":
        return False
    try:
        tag, start, _stop, _next = _element(data, 0, len(data), 0)
        tag2, ostart, ostop, _ = _element(data, start, len(data), 0)
    except CmsError:
        return False
    return tag == 0x30 and tag2 == 0x06 and data[ostart:ostop].startswith(_OID_SIGNED[:8])


def _content_info(blob: bytes, limit: int) -> tuple[str, bytes | None]:
    """ContentInfo ::= SEQUENCE { contentType OID, content [0] EXPLICIT ANY }.

    Returns the kind and, for signed and compressed data, the encapsulated content
    (None when detached); for ``data`` the octets themselves.
    """
    end = len(blob)
    tag, start, stop, _ = _element(blob, 0, end, 0)
    if tag != 0x30:
        raise CmsError("no ContentInfo")
    oid, pos = _expect(blob, start, stop, 0x06)
    kind = _kind(blob[oid[0] : oid[1]])
    if kind == ENVELOPED:
        return kind, None
    ctag, cstart, cstop, _ = _element(blob, pos, stop, 0)
    if ctag != 0xA0:
        raise CmsError("no content")
    if kind == DATA:
        return kind, _octets(blob, cstart, cstop, limit)
    # SignedData / CompressedData: SEQUENCE { version, (digestAlgorithms SET | compression
    # AlgorithmIdentifier), encapContentInfo SEQUENCE { eContentType, [0] eContent } ... }
    seq, _ = _expect(blob, cstart, cstop, 0x30)
    _ver, pos = _expect(blob, seq[0], seq[1], 0x02)
    _algs, pos = _expect(blob, pos, seq[1], 0x31 if kind == SIGNED else 0x30)
    encap, _ = _expect(blob, pos, seq[1], 0x30)
    _etype, pos = _expect(blob, encap[0], encap[1], 0x06)
    if pos >= encap[1]:
        return kind, None  # detached signature: no eContent
    etag, estart, estop, _ = _element(blob, pos, encap[1], 0)
    if etag != 0xA0:
        raise CmsError("no encapsulated content")
    return kind, _octets(blob, estart, estop, limit)


def _kind(oid: bytes) -> str:
    if oid == _OID_SIGNED:
        return SIGNED
    if oid in (_OID_ENVELOPED, _OID_AUTH_ENVELOPED, _OID_ENCRYPTED):
        return ENVELOPED
    if oid == _OID_COMPRESSED:
        return COMPRESSED
    if oid == _OID_DATA:
        return DATA
    raise CmsError("unknown content type")


def _octets(blob: bytes, start: int, stop: int, limit: int) -> bytes:
    """The OCTET STRING in [start, stop): primitive, or BER-constructed from chunks."""
    tag, cstart, cstop, _ = _element(blob, start, stop, 0)
    if tag == 0x04:
        if cstop - cstart > limit:
            raise CmsError("content larger than the limit")
        return blob[cstart:cstop]
    if tag != 0x24:
        raise CmsError("content is not an OCTET STRING")
    chunks: list[bytes] = []
    size = 0
    # Chunks may themselves be constructed (BER allows it); walk them with a stack.
    stack = [(cstart, cstop)]
    while stack:
        pos, end = stack.pop()
        while pos < end:
            if blob[pos : pos + 2] == b"\x00\x00":
                break
            ctag, s, e, nxt = _element(blob, pos, end, 0)
            if ctag == 0x24:
                if len(stack) >= _MAX_NESTING:
                    raise CmsError("nesting too deep")
                stack.append((nxt, end))
                pos, end = s, e
                continue
            if ctag != 0x04:
                raise CmsError("bad OCTET STRING chunk")
            size += e - s
            if size > limit:
                raise CmsError("content larger than the limit")
            chunks.append(blob[s:e])
            pos = nxt
    return b"".join(chunks)


def _expect(blob: bytes, pos: int, end: int, want: int) -> tuple[tuple[int, int], int]:
    tag, start, stop, nxt = _element(blob, pos, end, 0)
    if tag != want:
        raise CmsError(f"expected tag {want:#x}, found {tag:#x}")
    return (start, stop), nxt


def _header(blob: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Tag, content start and length (-1: indefinite) of the element at ``pos``."""
    if pos + 2 > end:
        raise CmsError("truncated")
    tag = blob[pos]
    if tag & 0x1F == 0x1F:
        raise CmsError("high tag numbers are not used in CMS")
    first = blob[pos + 1]
    pos += 2
    if first < 0x80:
        return tag, pos, first
    if first == 0x80:
        if not tag & 0x20:
            raise CmsError("indefinite length on a primitive element")
        return tag, pos, -1
    count = first & 0x7F
    if count > 4 or pos + count > end:
        raise CmsError("bad length")
    length = int.from_bytes(blob[pos : pos + count], "big")
    return tag, pos + count, length


def _element(blob: bytes, pos: int, end: int, depth: int) -> tuple[int, int, int, int]:
    """Tag, content start, content end and the position after the element at ``pos``.

    An indefinite length is resolved by skipping the element's children up to its
    end-of-contents octets; only indefinite children are descended into, and only
    ``_MAX_NESTING`` deep, so a chain of unterminated openers costs a bounded walk.
    """
    if depth > _MAX_NESTING:
        raise CmsError("nesting too deep")
    tag, start, length = _header(blob, pos, end)
    if length >= 0:
        stop = start + length
        if stop > end:
            raise CmsError("length past the end")
        return tag, start, stop, stop
    cur = start
    while True:
        if cur + 2 > end:
            raise CmsError("unterminated indefinite length")
        if blob[cur] == 0 and blob[cur + 1] == 0:
            return tag, start, cur, cur + 2
        _t, _s, _e, cur = _element(blob, cur, end, depth + 1)


def is_mime_entity(data: bytes) -> bool:
    """Does signed content start with MIME headers (S/MIME), or is it a bare file (a
    ``report.pdf.p7m`` signed by a desktop signing tool)?"""
    head = data[:2048]
    line_end = head.find(b"\n")
    first = head[: line_end if line_end != -1 else len(head)]
    if b":" not in first:
        return False
    name = first.split(b":", 1)[0]
    return bool(name) and all(33 <= c <= 126 for c in name) and b"\n" in head
