"""Milter protocol packets as values: framing, command parsers, reply encoders.

Pure code: no sockets, no clock, no disk, so every corner of the wire format is
testable with plain bytes and the server stays a thin loop. The constants and
layouts follow Postfix's client side (src/milter/milter8.c), the authority on
what Postfix sends and accepts, and Sendmail's libmilter (mfdef.h) where the
two agree.

A packet is a 4-byte big-endian length (which counts the command byte), the
command byte, then the data. Strings are NUL-terminated; integers are 32-bit
big-endian except the 16-bit port of CONNECT.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

# Commands, MTA to filter.
SMFIC_ABORT: Final = ord("A")
SMFIC_BODY: Final = ord("B")
SMFIC_CONNECT: Final = ord("C")
SMFIC_MACRO: Final = ord("D")
SMFIC_BODYEOB: Final = ord("E")
SMFIC_HELO: Final = ord("H")
SMFIC_QUIT_NC: Final = ord("K")
SMFIC_HEADER: Final = ord("L")
SMFIC_MAIL: Final = ord("M")
SMFIC_EOH: Final = ord("N")
SMFIC_OPTNEG: Final = ord("O")
SMFIC_QUIT: Final = ord("Q")
SMFIC_RCPT: Final = ord("R")
SMFIC_DATA: Final = ord("T")
SMFIC_UNKNOWN: Final = ord("U")

COMMANDS: Final = frozenset(
    {
        SMFIC_ABORT,
        SMFIC_BODY,
        SMFIC_CONNECT,
        SMFIC_MACRO,
        SMFIC_BODYEOB,
        SMFIC_HELO,
        SMFIC_QUIT_NC,
        SMFIC_HEADER,
        SMFIC_MAIL,
        SMFIC_EOH,
        SMFIC_OPTNEG,
        SMFIC_QUIT,
        SMFIC_RCPT,
        SMFIC_DATA,
        SMFIC_UNKNOWN,
    }
)

# Replies and modification requests, filter to MTA.
SMFIR_ADDRCPT: Final = ord("+")
SMFIR_DELRCPT: Final = ord("-")
SMFIR_ADDRCPT_PAR: Final = ord("2")
SMFIR_SHUTDOWN: Final = ord("4")
SMFIR_ACCEPT: Final = ord("a")
SMFIR_REPLBODY: Final = ord("b")
SMFIR_CONTINUE: Final = ord("c")
SMFIR_DISCARD: Final = ord("d")
SMFIR_CHGFROM: Final = ord("e")
SMFIR_CONN_FAIL: Final = ord("f")
SMFIR_ADDHEADER: Final = ord("h")
SMFIR_INSHEADER: Final = ord("i")
SMFIR_SETSYMLIST: Final = ord("l")
SMFIR_CHGHEADER: Final = ord("m")
SMFIR_PROGRESS: Final = ord("p")
SMFIR_QUARANTINE: Final = ord("q")
SMFIR_REJECT: Final = ord("r")
SMFIR_SKIP: Final = ord("s")
SMFIR_TEMPFAIL: Final = ord("t")
SMFIR_REPLYCODE: Final = ord("y")

# Actions the filter may take at end of message (OPTNEG, second integer).
SMFIF_ADDHDRS: Final = 0x001
SMFIF_CHGBODY: Final = 0x002
SMFIF_ADDRCPT: Final = 0x004
SMFIF_DELRCPT: Final = 0x008
SMFIF_CHGHDRS: Final = 0x010
SMFIF_QUARANTINE: Final = 0x020
SMFIF_CHGFROM: Final = 0x040
SMFIF_ADDRCPT_PAR: Final = 0x080
SMFIF_SETSYMLIST: Final = 0x100

# Protocol flags (OPTNEG, third integer): events the filter does not want, events
# it will not answer, and protocol variants.
SMFIP_NOCONNECT: Final = 1 << 0
SMFIP_NOHELO: Final = 1 << 1
SMFIP_NOMAIL: Final = 1 << 2
SMFIP_NORCPT: Final = 1 << 3
SMFIP_NOBODY: Final = 1 << 4
SMFIP_NOHDRS: Final = 1 << 5
SMFIP_NOEOH: Final = 1 << 6
SMFIP_NR_HDR: Final = 1 << 7
SMFIP_NOHREPL: Final = SMFIP_NR_HDR
SMFIP_NOUNKNOWN: Final = 1 << 8
SMFIP_NODATA: Final = 1 << 9
SMFIP_SKIP: Final = 1 << 10
SMFIP_RCPT_REJ: Final = 1 << 11
SMFIP_NR_CONN: Final = 1 << 12
SMFIP_NR_HELO: Final = 1 << 13
SMFIP_NR_MAIL: Final = 1 << 14
SMFIP_NR_RCPT: Final = 1 << 15
SMFIP_NR_DATA: Final = 1 << 16
SMFIP_NR_UNKN: Final = 1 << 17
SMFIP_NR_EOH: Final = 1 << 18
SMFIP_NR_BODY: Final = 1 << 19
SMFIP_HDR_LEADSPC: Final = 1 << 20

# Macro stages, the index a SETSYMLIST entry names.
SMFIM_CONNECT: Final = 0
SMFIM_HELO: Final = 1
SMFIM_ENVFROM: Final = 2
SMFIM_ENVRCPT: Final = 3
SMFIM_DATA: Final = 4
SMFIM_EOM: Final = 5
SMFIM_EOH: Final = 6

# Address families of CONNECT.
SMFIA_UNKNOWN: Final = "U"
SMFIA_UNIX: Final = "L"
SMFIA_INET: Final = "4"
SMFIA_INET6: Final = "6"

PROTOCOL_VERSION: Final = 6
# Postfix sends body chunks of at most 65535 bytes and expects no larger ones back.
MAX_BODY_CHUNK: Final = 65535
# Room for the largest header Postfix passes on (header_size_limit, 100 KiB by
# default) and a generous macro packet.
DEFAULT_MAX_PACKET: Final = 1 << 20

_HEAD = struct.Struct(">IB")
_LEN = struct.Struct(">I")
_OPTNEG = struct.Struct(">III")
_PORT = struct.Struct(">H")


class MilterProtocolError(Exception):
    """The peer broke the protocol; the connection cannot continue."""


class FramingError(MilterProtocolError):
    """A packet length that cannot be honoured (zero, or over the limit)."""


class MalformedPacket(MilterProtocolError):
    """A packet whose data does not have the layout its command requires."""


class UnknownCommand(MilterProtocolError):
    """A command byte outside the protocol."""


class EncodeError(MilterProtocolError, ValueError):
    """A value that cannot be put on the wire (a NUL byte, an empty name ...)."""


class Packet(NamedTuple):
    command: int
    data: bytes


class PacketDecoder:
    """Splits a byte stream into packets, however the reads happen to cut it.

    The length is checked before the data is buffered, so an oversized or garbage
    length fails at once instead of making the server wait for (or hold) up to
    4 GB. After an error the decoder is unusable, as is the connection.
    """

    def __init__(self, max_packet: int = DEFAULT_MAX_PACKET) -> None:
        if max_packet < 1:
            raise ValueError("max_packet must be at least 1")
        self.max_packet = max_packet
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held that do not make a whole packet yet."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        buf = self._buf
        buf += data
        out: list[Packet] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (length,) = _LEN.unpack_from(buf, pos)
            if length == 0:
                raise FramingError("packet length 0")
            if length > self.max_packet:
                raise FramingError(f"packet length {length} over the limit {self.max_packet}")
            if end - pos - 4 < length:
                break
            out.append(Packet(buf[pos + 4], bytes(buf[pos + 5 : pos + 4 + length])))
            pos += 4 + length
        if pos:
            del buf[:pos]
        return out


def encode(command: int, data: bytes = b"") -> bytes:
    """One packet."""
    return _HEAD.pack(len(data) + 1, command) + data


# Parsers --------------------------------------------------------------------


def _text(raw: bytes) -> str:
    """Protocol strings are bytes; surrogateescape keeps 8-bit ones round-trippable."""
    return raw.decode("utf-8", "surrogateescape")


def split_strings(data: bytes) -> list[bytes]:
    """The NUL-terminated strings that make up a packet's data."""
    if not data:
        return []
    if data[-1] != 0:
        raise MalformedPacket("string not NUL-terminated")
    return data[:-1].split(b"\0")


def unbrace(name: str) -> str:
    """Sendmail names long macros ``{auth_authen}``; the gateway uses bare names."""
    if len(name) > 2 and name[0] == "{" and name[-1] == "}":
        return name[1:-1]
    return name


@dataclass(frozen=True)
class OptNeg:
    version: int
    actions: int
    protocol: int


def parse_optneg(data: bytes) -> OptNeg:
    if len(data) < _OPTNEG.size:
        raise MalformedPacket(f"OPTNEG needs 12 bytes, got {len(data)}")
    version, actions, protocol = _OPTNEG.unpack_from(data)
    return OptNeg(version, actions, protocol)


@dataclass(frozen=True)
class Connect:
    hostname: str
    family: str
    port: int
    address: str


def parse_connect(data: bytes) -> Connect:
    nul = data.find(b"\0")
    if nul < 0:
        raise MalformedPacket("CONNECT hostname not NUL-terminated")
    hostname = _text(data[:nul])
    rest = data[nul + 1 :]
    if not rest:
        raise MalformedPacket("CONNECT without address family")
    family = chr(rest[0])
    if family == SMFIA_UNKNOWN:
        return Connect(hostname, family, 0, "")
    if family not in (SMFIA_UNIX, SMFIA_INET, SMFIA_INET6):
        raise MalformedPacket(f"CONNECT address family {family!r}")
    if len(rest) < 3:
        raise MalformedPacket("CONNECT without port")
    (port,) = _PORT.unpack_from(rest, 1)
    strings = split_strings(rest[3:])
    if len(strings) != 1:
        raise MalformedPacket("CONNECT address not one NUL-terminated string")
    return Connect(hostname, family, port, _text(strings[0]))


def parse_macro(data: bytes) -> tuple[str, dict[str, str]]:
    """The stage (the command letter the macros belong to) and the unbraced names."""
    if not data:
        raise MalformedPacket("MACRO without stage")
    stage = chr(data[0])
    strings = split_strings(data[1:])
    if len(strings) % 2:
        raise MalformedPacket("MACRO with a name but no value")
    it = iter(strings)
    return stage, {unbrace(_text(name)): _text(value) for name, value in zip(it, it, strict=True)}


def parse_helo(data: bytes) -> str:
    strings = split_strings(data)
    if not strings:
        raise MalformedPacket("HELO without a name")
    return _text(strings[0])


def strip_brackets(address: str) -> str:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        return address[1:-1]
    return address


def parse_envelope(data: bytes) -> tuple[str, list[str]]:
    """MAIL and RCPT: the address without angle brackets, then its ESMTP parameters."""
    strings = split_strings(data)
    if not strings:
        raise MalformedPacket("MAIL/RCPT without an address")
    return strip_brackets(_text(strings[0])), [_text(s) for s in strings[1:] if s]


def parse_header(data: bytes) -> tuple[bytes, bytes]:
    """Name and value as sent: raw bytes, so the message is rebuilt byte for byte."""
    strings = split_strings(data)
    if len(strings) != 2 or not strings[0]:
        raise MalformedPacket("HEADER is not a name and a value")
    return strings[0], strings[1]


def expect_empty(command: int, data: bytes) -> None:
    if data:
        raise MalformedPacket(f"{chr(command)!r} packet carries {len(data)} unexpected bytes")


# Encoders ---------------------------------------------------------------------


def _cstring(value: str | bytes) -> bytes:
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if b"\0" in raw:
        raise EncodeError("NUL byte in a protocol string")
    return raw + b"\0"


_ANY_EOL = re.compile(r"\r\n|\r|\n")


def header_value(value: str) -> str:
    """Folded header text as Postfix wants it: lines joined by a bare LF.

    Postfix splits the value at LF into queue-file lines (cleanup_out_header); a
    CR left in would reach the next hop as a stray CR before the line end.
    """
    return _ANY_EOL.sub("\n", value)


_HEADER_NAME = re.compile(r"[!-9;-~]+")


def _header_name(name: str) -> str:
    if not _HEADER_NAME.fullmatch(name):
        raise EncodeError(f"bad header name {name!r}")
    return name


def _index(index: int) -> bytes:
    if not 0 <= index < 1 << 32:
        raise EncodeError(f"header index {index} out of range")
    return _LEN.pack(index)


def optneg_reply(
    version: int, actions: int, protocol: int, macros: Mapping[int, str] | None = None
) -> bytes:
    """The negotiation answer, with the per-stage macro lists when SETSYMLIST was agreed."""
    data = _OPTNEG.pack(version, actions, protocol)
    for stage, names in (macros or {}).items():
        data += _LEN.pack(stage) + _cstring(names)
    return encode(SMFIC_OPTNEG, data)


def continue_() -> bytes:
    return encode(SMFIR_CONTINUE)


def accept() -> bytes:
    return encode(SMFIR_ACCEPT)


def discard() -> bytes:
    return encode(SMFIR_DISCARD)


def reject() -> bytes:
    return encode(SMFIR_REJECT)


def tempfail() -> bytes:
    return encode(SMFIR_TEMPFAIL)


def progress() -> bytes:
    return encode(SMFIR_PROGRESS)


def reply_text(code: int, status: str, text: str) -> str:
    """An SMTP reply as SMFIR_REPLYCODE carries it; several lines when the text has them.

    Postfix checks every line against ``ddd[- ]`` with a 4xx or 5xx code and an
    enhanced status of the same class, and turns ``%%`` into ``%`` (Sendmail uses
    the text as a format string), so a literal ``%`` is doubled here.
    """
    if not 400 <= code <= 599:
        raise EncodeError(f"reply code {code} is not 4xx or 5xx")
    if status and (
        not re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", status) or status[0] != str(code)[0]
    ):
        raise EncodeError(f"enhanced status {status!r} does not fit reply code {code}")
    lines = [" ".join(line.split()) for line in _ANY_EOL.split(text)]
    lines = [line for line in lines if line] or [""]
    prefix = f"{status} " if status else ""
    last = len(lines) - 1
    out = [f"{code}{' ' if i == last else '-'}{prefix}{line}" for i, line in enumerate(lines)]
    return "\r\n".join(out).replace("%", "%%")


def replycode(code: int, status: str, text: str) -> bytes:
    return encode(SMFIR_REPLYCODE, _cstring(reply_text(code, status, text)))


def add_header(name: str, value: str) -> bytes:
    return encode(SMFIR_ADDHEADER, _cstring(_header_name(name)) + _cstring(header_value(value)))


def insert_header(index: int, name: str, value: str) -> bytes:
    """Index 0 puts the header on top (Postfix adds one internally)."""
    return encode(
        SMFIR_INSHEADER,
        _index(index) + _cstring(_header_name(name)) + _cstring(header_value(value)),
    )


def change_header(name: str, index: int, value: str) -> bytes:
    """Index 1 is the first header of that name; an empty value deletes it."""
    if index < 1:
        raise EncodeError(f"change header index {index}: the first is 1")
    return encode(
        SMFIR_CHGHEADER,
        _index(index) + _cstring(_header_name(name)) + _cstring(header_value(value)),
    )


def _angle(address: str) -> str:
    return address if address.startswith("<") and address.endswith(">") else f"<{address}>"


def add_rcpt(address: str) -> bytes:
    return encode(SMFIR_ADDRCPT, _cstring(_angle(address)))


def add_rcpt_par(address: str, args: Sequence[str] = ()) -> bytes:
    return encode(SMFIR_ADDRCPT_PAR, _cstring(_angle(address)) + _cstring(" ".join(args)))


def del_rcpt(address: str) -> bytes:
    return encode(SMFIR_DELRCPT, _cstring(_angle(address)))


def chg_from(address: str, args: Sequence[str] = ()) -> bytes:
    data = _cstring(_angle(address))
    if args:
        data += _cstring(" ".join(args))
    return encode(SMFIR_CHGFROM, data)


def quarantine(reason: str) -> bytes:
    return encode(SMFIR_QUARANTINE, _cstring(reason))


def replace_body(body: bytes, chunk: int = MAX_BODY_CHUNK) -> Iterable[bytes]:
    """SMFIR_REPLBODY packets; an empty body is one empty packet, so it still replaces."""
    if not body:
        yield encode(SMFIR_REPLBODY)
        return
    view = memoryview(body)
    for i in range(0, len(view), chunk):
        yield encode(SMFIR_REPLBODY, bytes(view[i : i + chunk]))
