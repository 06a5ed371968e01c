"""A small MTA side of the milter protocol, sending what Postfix sends, for tests and bench.

It follows Postfix's milter8.c: macros before each event, no wait for a reply
where the filter negotiated SMFIP_NR_*, headers without the leading space unless
SMFIP_HDR_LEADSPC, continuation lines joined by LF, body chunks of 65535 bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from milter.message import normalize
from milter.milterproto import codec
from milter.milterproto.codec import Packet, PacketDecoder

# What Postfix 3.x offers with milter_protocol = 6.
POSTFIX_ACTIONS = 0x1FF
POSTFIX_PROTOCOL = 0x1FFFFF
FINAL = frozenset(b"acdrty4f")


@dataclass
class Negotiated:
    version: int
    actions: int
    protocol: int
    macros: dict[int, str] = field(default_factory=dict)


def macro_data(stage: str, macros: Mapping[str, str]) -> bytes:
    data = stage.encode()
    for name, value in macros.items():
        data += name.encode() + b"\0" + value.encode() + b"\0"
    return data


def strings(*values: str) -> bytes:
    return b"".join(v.encode("utf-8", "surrogateescape") + b"\0" for v in values)


def split_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers (name, value with LF between folded lines, leading space kept) and body,
    from a message with any line ends (Postfix sends CRLF whatever the client did)."""
    message = normalize(message)
    end = message.find(b"\r\n\r\n")
    head, body = (message[:end], message[end + 4 :]) if end >= 0 else (message, b"")
    headers: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + b"\n" + line)
        elif line:
            name, _, value = line.partition(b":")
            headers.append((name, value))
    return headers, body


class Mta:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = PacketDecoder(1 << 24)
        self.pending: list[Packet] = []
        self.negotiated = Negotiated(0, 0, 0)

    @classmethod
    async def connect(cls, address: str) -> Mta:
        if address.startswith("unix:"):
            reader, writer = await asyncio.open_unix_connection(address[5:])
        else:
            host, _, port = address.partition(":")[2].rpartition(":")
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        return cls(reader, writer)

    def send(self, command: int, data: bytes = b"") -> None:
        self.writer.write(codec.encode(command, data))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def read(self, within: float = 10.0) -> Packet | None:
        """The next packet from the filter, None at end of stream."""
        async with asyncio.timeout(within):
            while not self.pending:
                data = await self.reader.read(1 << 16)
                if not data:
                    return None
                self.pending += self.decoder.feed(data)
        return self.pending.pop(0)

    async def closed(self, within: float = 10.0) -> bool:
        """True when the filter closed the connection (read ends or resets)."""
        try:
            async with asyncio.timeout(within):
                while True:
                    data = await self.reader.read(1 << 16)
                    if not data:
                        return True
        except ConnectionError:
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    async def negotiate(
        self, version: int = 6, actions: int = POSTFIX_ACTIONS, protocol: int = POSTFIX_PROTOCOL
    ) -> Negotiated:
        self.send(codec.SMFIC_OPTNEG, struct.pack(">III", version, actions, protocol))
        await self.writer.drain()
        packet = await self.read()
        assert packet is not None and packet.command == codec.SMFIC_OPTNEG, packet
        data = packet.data
        v, a, p = struct.unpack(">III", data[:12])
        macros: dict[int, str] = {}
        rest = data[12:]
        while rest:
            (stage,) = struct.unpack(">I", rest[:4])
            nul = rest.index(b"\0", 4)
            macros[stage] = rest[4:nul].decode()
            rest = rest[nul + 1 :]
        self.negotiated = Negotiated(v, a, p, macros)
        return self.negotiated

    async def event(
        self,
        command: int,
        data: bytes,
        no_reply: int,
        macros: Mapping[str, str] | None = None,
    ) -> None:
        """One event as Postfix sends it; waits for the filter's continue when it owes one."""
        if macros is not None:
            self.send(codec.SMFIC_MACRO, macro_data(chr(command), macros))
        self.send(command, data)
        if not self.negotiated.protocol & no_reply:
            await self.writer.drain()
            packet = await self.read()
            assert packet is not None and packet.command == codec.SMFIR_CONTINUE, packet

    async def session(
        self,
        *,
        hostname: str = "client.example",
        address: str = "192.0.2.7",
        port: int = 40001,
        helo: str = "client.example",
        macros: Mapping[str, str] | None = None,
    ) -> None:
        conn = struct.pack(">H", port)
        await self.event(
            codec.SMFIC_CONNECT,
            hostname.encode() + b"\0" + b"4" + conn + address.encode() + b"\0",
            codec.SMFIP_NR_CONN,
            macros if macros is not None else {"j": "mx.example", "_": f"{hostname} [{address}]"},
        )
        await self.event(codec.SMFIC_HELO, strings(helo), codec.SMFIP_NR_HELO, {})

    async def envelope(
        self,
        sender: str,
        recipients: Sequence[str],
        *,
        mail_args: Sequence[str] = (),
        mail_macros: Mapping[str, str] | None = None,
    ) -> None:
        await self.event(
            codec.SMFIC_MAIL,
            strings(f"<{sender}>", *mail_args),
            codec.SMFIP_NR_MAIL,
            mail_macros if mail_macros is not None else {"{mail_addr}": sender},
        )
        for rcpt in recipients:
            await self.event(
                codec.SMFIC_RCPT, strings(f"<{rcpt}>"), codec.SMFIP_NR_RCPT, {"{rcpt_addr}": rcpt}
            )

    async def content(
        self,
        headers: Iterable[tuple[bytes, bytes]],
        body_chunks: Iterable[bytes],
        eom_macros: Mapping[str, str] | None = None,
    ) -> None:
        """Headers, EOH and body; stops short of end of message."""
        leadspc = bool(self.negotiated.protocol & codec.SMFIP_HDR_LEADSPC)
        for name, raw in headers:
            value = raw[1:] if not leadspc and raw[:1] == b" " else raw
            await self.event(
                codec.SMFIC_HEADER, name + b"\0" + value + b"\0", codec.SMFIP_NR_HDR, {}
            )
        await self.event(codec.SMFIC_EOH, b"", codec.SMFIP_NR_EOH, {})
        for chunk in body_chunks:
            await self.event(codec.SMFIC_BODY, chunk, codec.SMFIP_NR_BODY, eom_macros or {})

    async def end_of_message(
        self, eom_macros: Mapping[str, str] | None = None, within: float = 10.0
    ) -> list[Packet]:
        """Every packet the filter sends up to and including its final reply."""
        self.send(codec.SMFIC_MACRO, macro_data("E", eom_macros or {}))
        self.send(codec.SMFIC_BODYEOB)
        await self.writer.drain()
        out: list[Packet] = []
        while True:
            packet = await self.read(within)
            assert packet is not None, f"connection closed after {out}"
            out.append(packet)
            if packet.command in FINAL:
                return out

    async def message(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        *,
        chunk: int = codec.MAX_BODY_CHUNK,
        eom_macros: Mapping[str, str] | None = None,
    ) -> list[Packet]:
        headers, body = split_message(message)
        await self.envelope(sender, recipients)
        chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]
        await self.content(headers, chunks, eom_macros)
        return await self.end_of_message(eom_macros)
