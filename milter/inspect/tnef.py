"""TNEF (winmail.dat): the message body Outlook keeps as compressed RTF.

Outlook sends rich-text mail to recipients it believes use Outlook as a TNEF attachment
whose plain ``attBody`` is often empty or a stub: the text the reader sees is in the MAPI
property ``PR_RTF_COMPRESSED`` (0x1009) inside ``attMsgProps``, compressed with the
LZ77 variant of MS-OXRTFCP. This module finds that property and decompresses it within
a byte limit; ``legacy.rtf_text`` reads the RTF. Attachments, subject and the plain body
are read by ``documents.read_tnef``.
"""

from __future__ import annotations

import struct

from milter.inspect.documents import TNEF_SIGNATURE
from milter.inspect.errors import DocumentError

_ATT_MSG_PROPS = 0x9003
_PR_RTF_COMPRESSED = struct.pack("<HH", 0x0102, 0x1009)  # PT_BINARY, property id
_LZFU = 0x75465A4C
_MELA = 0x414C454D
# MS-OXRTFCP 2.1.3.1.1: the dictionary starts with these 207 bytes.
_PREBUF = (
    b"{\\rtf1\\ansi\\mac\\deff0\\deftab720{\\fonttbl;}{\\f0\\fnil \\froman \\fswiss "
    b"\\fmodern \\fscript \\fdecor MS Sans SerifSymbolArialTimes New RomanCourier"
    b"{\\colortbl\\red0\\green0\\blue0\r\n\\par \\pard\\plain\\f0\\fs20\\b\\i\\u\\tab\\tx"
)


def compressed_rtf(data: bytes) -> bytes | None:
    """The ``PR_RTF_COMPRESSED`` value of a TNEF stream's message properties, if any."""
    if not data.startswith(TNEF_SIGNATURE):
        return None
    pos = 6
    while pos + 9 <= len(data):
        level = data[pos]
        attr_id, length = struct.unpack_from("<II", data, pos + 1)
        start = pos + 9
        end = start + length
        if level not in (1, 2) or end > len(data):
            return None
        if level == 1 and attr_id & 0xFFFF == _ATT_MSG_PROPS:
            props = data[start:end]
            at = props.find(_PR_RTF_COMPRESSED)
            # Value layout: count of values (1), then length and bytes.
            if at != -1 and at + 12 <= len(props):
                count, size = struct.unpack_from("<II", props, at + 4)
                if count == 1 and at + 12 + size <= len(props):
                    return props[at + 12 : at + 12 + size]
        pos = end + 2
    return None


def decompress_rtf(blob: bytes, limit: int) -> tuple[bytes, bool]:
    """MS-OXRTFCP: the RTF in a compressed-RTF blob, at most ``limit`` bytes; and whether
    it was cut there. One pass over the input, one output byte per step."""
    if len(blob) < 16:
        raise DocumentError("compressed RTF too short")
    comp_size, raw_size, kind, _crc = struct.unpack_from("<IIII", blob, 0)
    body = blob[16 : 4 + comp_size] if comp_size >= 12 else blob[16:]
    if kind == _MELA:
        return body[:limit], len(body) > limit
    if kind != _LZFU:
        raise DocumentError("unknown compressed RTF type")
    window = bytearray(4096)
    window[: len(_PREBUF)] = _PREBUF
    write = len(_PREBUF)
    out = bytearray()
    want = min(raw_size, limit)
    pos = 0
    while pos < len(body) and len(out) < want:
        control = body[pos]
        pos += 1
        for bit in range(8):
            if pos >= len(body) or len(out) >= want:
                break
            if not control & (1 << bit):
                byte = body[pos]
                pos += 1
                out.append(byte)
                window[write] = byte
                write = (write + 1) & 0xFFF
                continue
            if pos + 2 > len(body):
                pos = len(body)
                break
            ref = (body[pos] << 8) | body[pos + 1]
            pos += 2
            offset, length = ref >> 4, (ref & 0xF) + 2
            if offset == write:  # the end marker
                return bytes(out), False
            for i in range(length):
                byte = window[(offset + i) & 0xFFF]
                out.append(byte)
                window[write] = byte
                write = (write + 1) & 0xFFF
    return bytes(out[:want]), raw_size > limit
