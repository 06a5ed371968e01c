"""The milter server over real loopback sockets, driven the way Postfix drives it."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import stat
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from milter.message import stuff
from milter.milterproto import codec
from milter.milterproto.server import (
    ACTIONS,
    DEFAULT_MACROS,
    PROTOCOL,
    ListenSpec,
    ListenSpecError,
    MilterServer,
    parse_listen,
)
from milter.milterproto.types import MilterResult, MilterTransaction
from milter.replies import Reply
from tests.milterproto.mta import Mta, split_message

MESSAGE = (
    b"Received: from client.example (client.example [192.0.2.7])\r\n"
    b"\tby mx.example (Postfix) with ESMTP id ABC123\r\n"
    b"From: Budi <budi@jakarta.go.id>\r\n"
    b"To: Siti <siti@example.org>\r\n"
    b"Subject:  Laporan\r\n"
    b"Subject:\ttab\r\n"
    b"\r\n"
    b"Halo,\r\n"
    b".baris dengan titik\r\n"
    b"..dua titik\r\n"
    b"\r\n"
    b".\r\n"
    b"akhir\r\n"
)


@dataclass
class Seen:
    tx: MilterTransaction
    content: bytes
    wire: bytes
    spooled: bool


@dataclass
class Recorder:
    """The handler under test: records what it got, answers what the test set."""

    result: MilterResult = field(default_factory=lambda: MilterResult("continue"))
    seen: list[Seen] = field(default_factory=list)
    gate: asyncio.Event | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    fail: bool = False

    async def __call__(self, tx: MilterTransaction) -> MilterResult:
        self.seen.append(
            Seen(
                tx,
                tx.message.content(),
                b"".join(bytes(c) for c in tx.message.wire_chunks()),
                tx.message.path is not None,
            )
        )
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self.finished.set()
        if self.fail:
            raise RuntimeError("policy exploded")
        return self.result


class LogWatch(logging.Handler):
    """Log records as events a test can wait for."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.changed.set()

    def events(self) -> list[str]:
        return [r.getMessage() for r in self.records]

    async def wait_for(self, name: str, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while name not in self.events():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def logs() -> Iterator[LogWatch]:
    watch = LogWatch()
    logger = logging.getLogger("milter")
    logger.addHandler(watch)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield watch
    logger.removeHandler(watch)
    logger.setLevel(old)


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    assert errors == []


Start = Callable[..., Awaitable[tuple[MilterServer, str]]]


@pytest.fixture
async def start(tmp_path: Path, loop_errors: list[dict[str, Any]]) -> AsyncIterator[Start]:
    servers: list[MilterServer] = []

    async def run(handler: Recorder, **kw: Any) -> tuple[MilterServer, str]:
        options: dict[str, Any] = {
            "max_message_size": 10 << 20,
            "spool_threshold": 1 << 20,
            "spool_dir": str(tmp_path / "spool"),
            "timeout": 10.0,
            "progress_interval": 10.0,
        }
        options.update(kw)
        listen = options.pop("listen", ["inet:127.0.0.1:0"])
        server = MilterServer(listen, handler, **options)
        await server.start()
        servers.append(server)
        return server, server.bound()[0]

    yield run
    for server in servers:
        await server.shutdown(1.0)


async def postfix(address: str, **kw: Any) -> Mta:
    mta = await Mta.connect(address)
    await mta.negotiate(**kw)
    await mta.session()
    return mta


# Negotiation ------------------------------------------------------------------------


async def test_negotiation_with_postfix_offer(start: Start) -> None:
    _, address = await start(Recorder())
    mta = await Mta.connect(address)
    got = await mta.negotiate()
    assert got.version == 6
    assert got.actions == ACTIONS == 0x1BF  # all we need; not CHGFROM
    assert got.protocol == PROTOCOL
    for flag in (
        codec.SMFIP_NR_CONN,
        codec.SMFIP_NR_HELO,
        codec.SMFIP_NR_MAIL,
        codec.SMFIP_NR_RCPT,
        codec.SMFIP_NR_HDR,
        codec.SMFIP_NR_EOH,
        codec.SMFIP_NR_BODY,
        codec.SMFIP_NOUNKNOWN,
        codec.SMFIP_NODATA,
    ):
        assert got.protocol & flag
    assert not got.protocol & (codec.SMFIP_NOBODY | codec.SMFIP_NOHDRS | codec.SMFIP_RCPT_REJ)
    assert got.macros == dict(DEFAULT_MACROS)
    assert got.macros[codec.SMFIM_CONNECT] == "j {client_addr} {client_name} {client_port} _"
    await mta.close()


async def test_negotiation_takes_only_what_is_offered(start: Start) -> None:
    handler = Recorder()
    _, address = await start(handler)
    mta = await Mta.connect(address)
    got = await mta.negotiate(version=2, actions=0x3F, protocol=0x7F)
    assert (got.version, got.actions, got.protocol, got.macros) == (2, 0x3F, 0, {})
    # Nothing is skipped now: every event is answered with continue (Mta checks).
    await mta.session()
    headers, body = split_message(MESSAGE)
    await mta.envelope("budi@jakarta.go.id", ["siti@example.org"])
    await mta.content(headers, [body])
    final = await mta.end_of_message()
    assert [p.command for p in final] == [codec.SMFIR_CONTINUE]
    # Without HDR_LEADSPC the space after the colon is put back.
    assert handler.seen[0].content.startswith(b"Received: from client.example")
    assert b"\r\nSubject:  Laporan\r\n" in handler.seen[0].content
    assert b"\r\nSubject: \ttab\r\n" in handler.seen[0].content  # not exact: leading tab
    await mta.close()


# Transactions ---------------------------------------------------------------------------


async def test_transaction_fields_macros_and_message(start: Start) -> None:
    handler = Recorder()
    _, address = await start(handler)
    mta = await Mta.connect(address)
    await mta.negotiate()
    await mta.session(
        macros={
            "j": "mx.example",
            "{client_addr}": "192.0.2.7",
            "{client_port}": "40001",
            "_": "client.example [192.0.2.7]",
        }
    )
    headers, body = split_message(MESSAGE)
    await mta.envelope(
        "budi@jakarta.go.id",
        ["siti@example.org", "andi@example.net"],
        mail_args=["SIZE=500", "SMTPUTF8"],
        mail_macros={
            "{auth_authen}": "budi",
            "{auth_type}": "PLAIN",
            "{mail_addr}": "budi@jakarta.go.id",
        },
    )
    # A body cut where it hurts: inside CRLF, right before a line-leading dot.
    cuts = [body[:6], body[6:7], body[7:8], body[8:30], body[30:]]
    assert b"".join(cuts) == body
    await mta.content(headers, cuts)
    final = await mta.end_of_message({"i": "ABC123"})
    assert [p.command for p in final] == [codec.SMFIR_CONTINUE]

    seen = handler.seen[0]
    tx = seen.tx
    assert tx.client_addr == "192.0.2.7" and tx.client_port == 40001
    assert tx.client_name == "client.example"
    assert tx.helo == "client.example"
    assert tx.mail_from == "budi@jakarta.go.id"
    assert tx.mail_args == ["SIZE=500", "SMTPUTF8"] and tx.smtputf8
    assert tx.rcpts == ["siti@example.org", "andi@example.net"]
    assert tx.rcpt_args == {"siti@example.org": [], "andi@example.net": []}
    assert tx.macros["i"] == "ABC123"
    assert tx.macros["j"] == "mx.example"
    assert tx.macros["auth_authen"] == tx.macros["{auth_authen}"] == "budi"
    assert tx.macros["rcpt_addr"] == "andi@example.net"
    assert tx.headers[0] == (
        "Received",
        "from client.example (client.example [192.0.2.7])\r\n\tby mx.example (Postfix) with"
        " ESMTP id ABC123",
    )
    assert ("Subject", " Laporan") in tx.headers and ("Subject", "\ttab") in tx.headers
    assert seen.content == MESSAGE  # byte for byte, thanks to HDR_LEADSPC
    assert seen.wire == stuff(MESSAGE)
    assert b"\r\n...\r\n" not in seen.wire and b"\r\n..\r\n" in seen.wire
    await mta.close()


async def test_second_transaction_keeps_session_not_envelope(start: Start) -> None:
    handler = Recorder()
    _, address = await start(handler)
    mta = await postfix(address)
    await mta.envelope(
        "a@jakarta.go.id",
        ["x@example.org"],
        mail_macros={"{auth_authen}": "a", "{mail_addr}": "a@jakarta.go.id"},
    )
    await mta.content([(b"Subject", b" satu")], [b"satu\r\n"])
    await mta.end_of_message({"i": "Q1"})
    await mta.envelope("b@jakarta.go.id", ["y@example.org"])
    await mta.content([(b"Subject", b" dua")], [b"dua\r\n"])
    await mta.end_of_message({"i": "Q2"})
    first, second = (s.tx for s in handler.seen)
    assert second.mail_from == "b@jakarta.go.id" and second.rcpts == ["y@example.org"]
    assert second.macros["i"] == "Q2" and "auth_authen" not in second.macros
    assert second.macros["j"] == "mx.example" and second.helo == "client.example"
    assert first.headers == [("Subject", "satu")] and second.headers == [("Subject", "dua")]
    assert handler.seen[1].content == b"Subject: dua\r\n\r\ndua\r\n"
    await mta.close()


async def test_abort_mid_message_then_next_transaction(start: Start, tmp_path: Path) -> None:
    handler = Recorder()
    _, address = await start(handler, spool_threshold=64)
    mta = await postfix(address)
    await mta.envelope("a@jakarta.go.id", ["x@example.org"])
    await mta.content([(b"Subject", b" batal")], [b"z" * 500 + b"\r\n"])
    mta.send(codec.SMFIC_ABORT)
    await mta.envelope("b@jakarta.go.id", ["y@example.org"])
    await mta.content([(b"Subject", b" jadi")], [b"ok\r\n"])
    final = await mta.end_of_message()
    assert [p.command for p in final] == [codec.SMFIR_CONTINUE]
    assert len(handler.seen) == 1
    assert handler.seen[0].tx.mail_from == "b@jakarta.go.id"
    assert handler.seen[0].content == b"Subject: jadi\r\n\r\nok\r\n"
    assert os.listdir(tmp_path / "spool") == []  # the aborted spool file is gone
    await mta.close()


async def test_large_message_spools_and_file_is_removed(start: Start, tmp_path: Path) -> None:
    handler = Recorder()
    _, address = await start(handler, spool_threshold=4096)
    mta = await postfix(address)
    body = b"".join(b".%05d baris\r\n" % i for i in range(20000))
    final = await mta.message(
        "a@jakarta.go.id", ["x@example.org"], b"Subject: besar\r\n\r\n" + body
    )
    assert [p.command for p in final] == [codec.SMFIR_CONTINUE]
    seen = handler.seen[0]
    assert seen.spooled
    assert seen.content == b"Subject: besar\r\n\r\n" + body
    assert seen.wire == stuff(seen.content)
    assert os.listdir(tmp_path / "spool") == []
    await mta.close()


# Results on the wire ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (MilterResult("continue"), [codec.continue_()]),
        (MilterResult("accept"), [codec.accept()]),
        (MilterResult("discard"), [codec.discard()]),
        (MilterResult("reject"), [codec.reject()]),
        (MilterResult("tempfail"), [codec.tempfail()]),
        (
            MilterResult("reject", Reply(550, "Ditolak / Rejected by policy", "5.7.1")),
            [codec.encode(ord("y"), b"550 5.7.1 Ditolak / Rejected by policy\0")],
        ),
        (
            MilterResult("tempfail", Reply(451, "Coba lagi\nTry again later", "4.3.0")),
            [codec.encode(ord("y"), b"451-4.3.0 Coba lagi\r\n451 4.3.0 Try again later\0")],
        ),
        (
            MilterResult(
                "continue",
                add_headers=[("X-Klasifikasi", "RAHASIA")],
                insert_headers=[(0, "X-Top", "atas")],
                change_headers=[("Subject", 2, ""), ("Subject", 1, "Baru\r\n lipat")],
                delete_rcpts=["x@example.org"],
                add_rcpts=["arsip@jakarta.go.id"],
                replace_body=b"isi baru\r\n",
            ),
            [
                # Changes first: their indexes count only the headers received.
                codec.encode(ord("m"), b"\0\0\0\x02Subject\0\0"),
                codec.encode(ord("m"), b"\0\0\0\x01Subject\0 Baru\n lipat\0"),
                codec.encode(ord("i"), b"\0\0\0\0X-Top\0 atas\0"),
                codec.encode(ord("h"), b"X-Klasifikasi\0 RAHASIA\0"),
                codec.encode(ord("-"), b"<x@example.org>\0"),
                codec.encode(ord("+"), b"<arsip@jakarta.go.id>\0"),
                codec.encode(ord("b"), b"isi baru\r\n"),
                codec.continue_(),
            ],
        ),
    ],
    ids=["continue", "accept", "discard", "reject", "tempfail", "reply", "multiline", "mods"],
)
async def test_result_packets(start: Start, result: MilterResult, expected: list[bytes]) -> None:
    handler = Recorder(result=result)
    _, address = await start(handler)
    mta = await postfix(address)
    final = await mta.message("a@jakarta.go.id", ["x@example.org"], MESSAGE)
    assert [codec.encode(p.command, p.data) for p in final] == expected
    # The connection goes on after any verdict.
    handler.result = MilterResult("continue")
    final = await mta.message("a@jakarta.go.id", ["x@example.org"], MESSAGE)
    assert [p.command for p in final] == [codec.SMFIR_CONTINUE]
    await mta.close()


async def test_modification_not_agreed_is_a_tempfail(start: Start, logs: LogWatch) -> None:
    handler = Recorder(result=MilterResult("continue", replace_body=b"x\r\n"))
    _, address = await start(handler)
    mta = await Mta.connect(address)
    await mta.negotiate(actions=0x1FF & ~codec.SMFIF_CHGBODY)
    await mta.session()
    final = await mta.message("a@jakarta.go.id", ["x@example.org"], MESSAGE)
    assert [p.command for p in final] == [codec.SMFIR_REPLYCODE]
    assert final[0].data.startswith(b"451 4.3.0 ")
    assert "milter.result_error" in logs.events()
    await mta.close()


async def test_handler_exception_is_a_tempfail(start: Start, logs: LogWatch) -> None:
    handler = Recorder(fail=True)
    _, address = await start(handler)
    mta = await postfix(address)
    final = await mta.message("a@jakarta.go.id", ["x@example.org"], MESSAGE)
    assert final == [
        codec.Packet(
            codec.SMFIR_REPLYCODE,
            b"451 4.3.0 Kesalahan sementara, coba lagi / Temporary local problem, try again"
            b" later\0",
        )
    ]
    assert logs.events().count("milter.handler_error") == 1
    await mta.close()


async def test_message_over_the_size_limit(start: Start, logs: LogWatch) -> None:
    handler = Recorder()
    _, address = await start(handler, max_message_size=1000, spool_threshold=100)
    mta = await postfix(address)
    final = await mta.message(
        "a@jakarta.go.id", ["x@example.org"], b"Subject: besar\r\n\r\n" + b"x" * 2000 + b"\r\n"
    )
    assert final == [
        codec.Packet(
            codec.SMFIR_REPLYCODE,
            b"552 5.3.4 Pesan terlalu besar / Message size exceeds fixed limit\0",
        )
    ]
    assert handler.seen == []
    assert "milter.refused" in logs.events()
    final = await mta.message("a@jakarta.go.id", ["x@example.org"], b"Subject: kecil\r\n\r\nx\r\n")
    assert [p.command for p in final] == [codec.SMFIR_CONTINUE]
    await mta.close()


async def test_too_many_recipients_and_headers(start: Start) -> None:
    handler = Recorder()
    _, address = await start(handler, max_recipients=2, max_headers=3)
    mta = await postfix(address)
    small = b"Subject: x\r\n\r\nx\r\n"
    final = await mta.message("a@jakarta.go.id", ["1@x.id", "2@x.id", "3@x.id"], small)
    assert final[0].data.startswith(b"452 4.5.3 ")
    final = await mta.message("a@jakarta.go.id", ["1@x.id"], MESSAGE)  # 5 headers
    assert final[0].data.startswith(b"552 5.3.4 ")
    assert handler.seen == []
    await mta.close()


# Progress, drops, shutdown ------------------------------------------------------------------


async def test_progress_while_the_handler_runs(start: Start) -> None:
    handler = Recorder(gate=asyncio.Event())
    _, address = await start(handler, progress_interval=0.02)
    mta = await postfix(address)
    await mta.envelope("a@jakarta.go.id", ["x@example.org"])
    headers, body = split_message(MESSAGE)
    await mta.content(headers, [body])
    mta.send(codec.SMFIC_BODYEOB)
    for _ in range(3):
        packet = await mta.read()
        assert packet == codec.Packet(codec.SMFIR_PROGRESS, b"")
    assert handler.gate is not None
    handler.gate.set()
    while (packet := await mta.read()) == codec.Packet(codec.SMFIR_PROGRESS, b""):
        pass
    assert packet == codec.Packet(codec.SMFIR_CONTINUE, b"")
    await mta.close()


async def test_mta_drops_while_handler_runs(start: Start, logs: LogWatch) -> None:
    handler = Recorder(gate=asyncio.Event(), result=MilterResult("reject"))
    _, address = await start(handler, progress_interval=60)
    mta = await postfix(address)
    await mta.envelope("a@jakarta.go.id", ["x@example.org"])
    await mta.content([(b"Subject", b" x")], [b"x\r\n"])
    mta.send(codec.SMFIC_BODYEOB)
    await mta.writer.drain()
    await handler.entered.wait()
    await mta.close()
    await logs.wait_for("milter.mta_gone")
    assert not handler.finished.is_set()  # not cancelled: still waiting on its gate
    assert handler.gate is not None
    handler.gate.set()
    await handler.finished.wait()
    await logs.wait_for("milter.reply_dropped")
    # The server still serves.
    handler.gate = None
    handler.result = MilterResult("accept")
    mta = await postfix(address)
    final = await mta.message("a@jakarta.go.id", ["x@example.org"], MESSAGE)
    assert [p.command for p in final] == [codec.SMFIR_ACCEPT]
    await mta.close()
    assert not [r for r in logs.records if r.levelno >= logging.ERROR]


async def test_shutdown_waits_for_the_handler_in_flight(start: Start) -> None:
    handler = Recorder(gate=asyncio.Event(), result=MilterResult("accept"))
    server, address = await start(handler)
    idle = await postfix(address)
    mta = await postfix(address)
    await mta.envelope("a@jakarta.go.id", ["x@example.org"])
    await mta.content([(b"Subject", b" x")], [b"x\r\n"])
    mta.send(codec.SMFIC_BODYEOB)
    await mta.writer.drain()
    await handler.entered.wait()
    stopping = asyncio.ensure_future(server.shutdown(grace=30))
    assert await idle.closed()  # idle connections close at once
    with pytest.raises(OSError):
        await Mta.connect(address)  # no longer accepting
    assert not stopping.done()
    assert handler.gate is not None
    handler.gate.set()
    packet = await mta.read()
    assert packet == codec.Packet(codec.SMFIR_ACCEPT, b"")
    assert await mta.closed()
    await stopping


async def test_shutdown_grace_expires(start: Start) -> None:
    handler = Recorder(gate=asyncio.Event())
    server, address = await start(handler)
    mta = await postfix(address)
    await mta.envelope("a@jakarta.go.id", ["x@example.org"])
    await mta.content([(b"Subject", b" x")], [b"x\r\n"])
    mta.send(codec.SMFIC_BODYEOB)
    await mta.writer.drain()
    await handler.entered.wait()
    await server.shutdown(grace=0.05)
    assert await mta.closed()


# Bad input -----------------------------------------------------------------------------


OPTNEG = codec.encode(codec.SMFIC_OPTNEG, struct.pack(">III", 6, 0x1FF, 0x1FFFFF))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (codec.encode(codec.SMFIC_OPTNEG, b"\0\0\0\x06"), "milter.protocol_error"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "milter.protocol_error"),
        (OPTNEG + codec.encode(ord("Z"), b"??"), "milter.protocol_error"),
        (OPTNEG + struct.pack(">I", 50_000_000) + b"B", "milter.protocol_error"),
        (OPTNEG + b"\0\0\0\0", "milter.protocol_error"),
        (codec.encode(codec.SMFIC_HELO, b"early\0"), "milter.protocol_error"),
        (OPTNEG + codec.encode(codec.SMFIC_CONNECT, b"host-without-nul"), "milter.protocol_error"),
        (
            OPTNEG + codec.encode(codec.SMFIC_MAIL, b"<a@b>\0") + b"\0\0\x01\0B",
            "milter.disconnected",
        ),
    ],
    ids=[
        "short-optneg",
        "garbage",
        "unknown",
        "oversized",
        "zero",
        "before-optneg",
        "bad-connect",
        "dropped-mid-packet",
    ],
)
async def test_bad_input_closes_cleanly(
    start: Start, logs: LogWatch, raw: bytes, reason: str
) -> None:
    handler = Recorder()
    _, address = await start(handler, max_packet=1 << 20)
    mta = await Mta.connect(address)
    mta.send_raw(raw)
    await mta.writer.drain()
    if reason == "milter.disconnected":
        mta.writer.write_eof()
    assert await mta.closed()
    await logs.wait_for(reason)
    assert logs.events().count(reason) == 1
    assert not [r for r in logs.records if r.exc_info]
    mta = await postfix(address)
    final = await mta.message("a@jakarta.go.id", ["x@example.org"], MESSAGE)
    assert [p.command for p in final] == [codec.SMFIR_CONTINUE]
    await mta.close()


async def test_idle_timeout_closes(start: Start, logs: LogWatch) -> None:
    _, address = await start(Recorder(), timeout=0.05)
    mta = await postfix(address)
    assert await mta.closed()
    await logs.wait_for("milter.timeout")


async def test_quit_closes_without_a_log_line(start: Start, logs: LogWatch) -> None:
    _, address = await start(Recorder())
    mta = await postfix(address)
    mta.send(codec.SMFIC_QUIT)
    assert await mta.closed()
    assert logs.events() == []


# Listening ---------------------------------------------------------------------------------


def test_parse_listen() -> None:
    assert parse_listen("inet:127.0.0.1:8890") == ListenSpec("inet", "127.0.0.1", 8890)
    assert parse_listen("inet:8890@localhost") == ListenSpec("inet", "localhost", 8890)
    assert parse_listen("inet6:[::1]:8890") == ListenSpec("inet6", "::1", 8890)
    assert parse_listen("unix:/run/milter/milter.sock") == ListenSpec(
        "unix", path="/run/milter/milter.sock"
    )
    for bad in ("inet:8890", "tcp:1.2.3.4:5", "inet:host:99999", "unix:", "/path"):
        with pytest.raises(ListenSpecError):
            parse_listen(bad)


async def test_unix_socket_mode_and_stale_file(start: Start, tmp_path: Path) -> None:
    path = str(tmp_path / "milter.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: stale
    handler = Recorder()
    server, address = await start(handler, listen=[f"unix:{path}", "inet6:[::1]:0"])
    assert address == f"unix:{path}"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    assert server.bound()[1].startswith("inet6:[::1]:")
    mta = await postfix(address)
    final = await mta.message("a@jakarta.go.id", ["x@example.org"], MESSAGE)
    assert [p.command for p in final] == [codec.SMFIR_CONTINUE]
    await mta.close()
    second = MilterServer(
        [f"unix:{path}"],
        handler,
        max_message_size=1000,
        spool_threshold=100,
        spool_dir=None,
        timeout=1,
    )
    with pytest.raises(OSError, match="in use"):
        await second.start()


# Debian's miltertest ---------------------------------------------------------------------------

LUA = """
local conn = mt.connect("inet:%(port)d@127.0.0.1")
if conn == nil then error("mt.connect() failed") end
mt.set_timeout(10)
if mt.conninfo(conn, "client.example", "192.0.2.7") ~= nil then error("conninfo") end
if mt.helo(conn, "client.example") ~= nil then error("helo") end
mt.macro(conn, SMFIC_MAIL, "i", "QID1", "{auth_authen}", "budi")
if mt.mailfrom(conn, "<budi@jakarta.go.id>") ~= nil then error("mailfrom") end
if mt.rcptto(conn, "<siti@example.org>") ~= nil then error("rcptto") end
if mt.header(conn, "Subject", "Laporan") ~= nil then error("header") end
if mt.eoh(conn) ~= nil then error("eoh") end
if mt.bodystring(conn, "Halo\\r\\n.titik\\r\\n") ~= nil then error("body") end
if mt.eom(conn) ~= nil then error("eom") end
-- miltertest offers SMFIP_HDR_LEADSPC, so the value carries its own leading space
if not mt.eom_check(conn, MT_HDRADD, "X-Klasifikasi", " RAHASIA") then
  error("no header added")
end
if not mt.eom_check(conn, MT_RCPTDELETE, "<siti@example.org>") then
  error("no recipient deleted")
end
if mt.getreply(conn) ~= SMFIR_ACCEPT then error("not accepted") end
mt.disconnect(conn)
"""


async def test_miltertest_lua_script(start: Start, tmp_path: Path) -> None:
    binary = shutil.which("miltertest")
    if binary is None:
        pytest.skip("miltertest is not installed (apt-get install miltertest)")
    handler = Recorder(
        result=MilterResult(
            "accept",
            add_headers=[("X-Klasifikasi", "RAHASIA")],
            delete_rcpts=["siti@example.org"],
        )
    )
    _, address = await start(handler)
    port = int(address.rpartition(":")[2])
    script = tmp_path / "t.lua"
    script.write_text(LUA % {"port": port})
    proc = await asyncio.create_subprocess_exec(
        binary, "-s", str(script), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    async with asyncio.timeout(30):
        output, _ = await proc.communicate()
    assert proc.returncode == 0, output.decode()
    tx = handler.seen[0].tx
    assert tx.mail_from == "budi@jakarta.go.id" and tx.rcpts == ["siti@example.org"]
    assert tx.macros["i"] == "QID1" and tx.macros["auth_authen"] == "budi"
    assert tx.client_addr == "192.0.2.7"
    assert handler.seen[0].wire.endswith(b"\r\nHalo\r\n..titik\r\n")
