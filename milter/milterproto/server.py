"""The milter protocol server: Postfix connects, sends a session, gets verdicts.

One MTA connection is one SMTP session and may carry many transactions
(MAIL .. end of message, ABORT resets one). Everything up to the end of the
message is collected without answering where the MTA allows it (the SMFIP_NR_*
flags), which halves the round trips of a message; at end of message the injected
handler decides and its result goes back as modification packets followed by one
final reply.

Bad input never gets more than a close and one log line: Postfix then applies its
``milter_default_action`` to the session, which is the right outcome for a peer
that does not speak the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import socket
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from milter import log, metrics
from milter.milterproto import codec
from milter.milterproto.assembly import MessageBuilder
from milter.milterproto.codec import (
    SMFIF_ADDHDRS,
    SMFIF_ADDRCPT,
    SMFIF_ADDRCPT_PAR,
    SMFIF_CHGBODY,
    SMFIF_CHGHDRS,
    SMFIF_DELRCPT,
    SMFIF_QUARANTINE,
    SMFIF_SETSYMLIST,
    SMFIM_CONNECT,
    SMFIM_ENVFROM,
    SMFIM_ENVRCPT,
    SMFIM_EOM,
    SMFIM_HELO,
    SMFIP_HDR_LEADSPC,
    SMFIP_NODATA,
    SMFIP_NOUNKNOWN,
    SMFIP_NR_BODY,
    SMFIP_NR_CONN,
    SMFIP_NR_DATA,
    SMFIP_NR_EOH,
    SMFIP_NR_HDR,
    SMFIP_NR_HELO,
    SMFIP_NR_MAIL,
    SMFIP_NR_RCPT,
    SMFIP_NR_UNKN,
    EncodeError,
    MalformedPacket,
    MilterProtocolError,
    Packet,
    PacketDecoder,
    UnknownCommand,
)
from milter.milterproto.types import Handler, Macros, MilterResult, MilterTransaction
from milter.replies import TEMP_FAILURE, TOO_BIG, TOO_MANY_RECIPIENTS, Reply

__all__ = [
    "DEFAULT_MACROS",
    "Handler",
    "ListenSpec",
    "ListenSpecError",
    "MilterResult",
    "MilterServer",
    "MilterTransaction",
    "encode_result",
    "parse_listen",
]

TOO_MANY_HEADERS = Reply(552, "Header terlalu banyak / Too many header fields", "5.3.4")

# What the gateway asks for at each stage when the MTA lets it choose (SETSYMLIST).
DEFAULT_MACROS: Final[Mapping[int, str]] = {
    SMFIM_CONNECT: "j {client_addr} {client_name} {client_port} _",
    SMFIM_HELO: "{tls_version}",
    SMFIM_ENVFROM: "i {auth_authen} {auth_type} {mail_addr}",
    SMFIM_ENVRCPT: "{rcpt_addr}",
    SMFIM_EOM: "i",
}

ACTIONS: Final = (
    SMFIF_ADDHDRS
    | SMFIF_CHGHDRS
    | SMFIF_CHGBODY
    | SMFIF_ADDRCPT
    | SMFIF_ADDRCPT_PAR
    | SMFIF_DELRCPT
    | SMFIF_QUARANTINE
    | SMFIF_SETSYMLIST
)
# No reply to anything before end of message, no UNKNOWN or DATA events, and header
# values with their leading space so the message is rebuilt byte for byte.
PROTOCOL: Final = (
    SMFIP_NR_CONN
    | SMFIP_NR_HELO
    | SMFIP_NR_MAIL
    | SMFIP_NR_RCPT
    | SMFIP_NR_HDR
    | SMFIP_NR_EOH
    | SMFIP_NR_BODY
    | SMFIP_NR_DATA
    | SMFIP_NR_UNKN
    | SMFIP_NOUNKNOWN
    | SMFIP_NODATA
    | SMFIP_HDR_LEADSPC
)

_READ_SIZE = 256 * 1024
_CONNECTION_STAGES = frozenset({"C", "H"})


class ListenSpecError(ValueError):
    """A listen address the server cannot parse."""


@dataclass(frozen=True)
class ListenSpec:
    family: Literal["inet", "inet6", "unix"]
    host: str = ""
    port: int = 0
    path: str = ""


_INET = re.compile(r"(?P<host>[^:@\[\]]+):(?P<port>\d+)")
_INET6 = re.compile(r"\[(?P<host>[0-9A-Fa-f:.%\w]+)\]:(?P<port>\d+)")
_SENDMAIL = re.compile(r"(?P<port>\d+)@(?P<host>\[?[^@\[\]]+\]?)")


def parse_listen(spec: str) -> ListenSpec:
    """``inet:HOST:PORT``, ``inet6:[HOST]:PORT``, ``unix:/path`` (Postfix's spelling),
    and Sendmail's ``inet:PORT@HOST`` and ``local:/path``."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ListenSpecError(f"{spec!r}: expected inet:HOST:PORT, inet6:[HOST]:PORT or unix:PATH")
    if kind in ("unix", "local"):
        return ListenSpec("unix", path=rest)
    if kind not in ("inet", "inet6"):
        raise ListenSpecError(f"{spec!r}: unknown transport {kind!r}")
    m = (_INET6 if kind == "inet6" else _INET).fullmatch(rest) or _SENDMAIL.fullmatch(rest)
    if m is None:
        raise ListenSpecError(f"{spec!r}: expected {kind}:HOST:PORT")
    port = int(m["port"])
    if port > 65535:
        raise ListenSpecError(f"{spec!r}: port {port} out of range")
    family: Literal["inet", "inet6"] = "inet6" if kind == "inet6" else "inet"
    return ListenSpec(family, m["host"].strip("[]"), port)


def encode_result(result: MilterResult, actions: int, leadspc: bool) -> list[bytes]:
    """The packets for a handler's result: modifications first, the verdict last.

    A modification the MTA did not agree to is an error, not something to drop:
    the policy asked for it (a rewrite, a removed recipient), and passing the
    message on without it would be the wrong outcome.
    """
    kind = result.kind
    if kind == "discard":
        return [codec.discard()]
    if kind in ("reject", "tempfail"):
        if result.reply is not None:
            reply = result.reply
            return [codec.replycode(reply.code, reply.status, reply.text)]
        return [codec.reject() if kind == "reject" else codec.tempfail()]
    if kind not in ("continue", "accept"):
        raise EncodeError(f"unknown result kind {kind!r}")

    def need(flag: int, what: str) -> None:
        if not actions & flag:
            raise EncodeError(f"{what} requested but the MTA did not agree to it")

    def value(text: str) -> str:
        return " " + text if leadspc and text else text

    out: list[bytes] = []
    # Changes first: their indexes name the headers as the MTA received them, before
    # an inserted or added namesake could be counted among them.
    if result.change_headers:
        need(SMFIF_CHGHDRS, "changing headers")
        out += [codec.change_header(n, i, value(v)) for n, i, v in result.change_headers]
    if result.insert_headers:
        need(SMFIF_ADDHDRS, "inserting headers")
        out += [codec.insert_header(i, n, value(v)) for i, n, v in result.insert_headers]
    if result.add_headers:
        need(SMFIF_ADDHDRS, "adding headers")
        out += [codec.add_header(n, value(v)) for n, v in result.add_headers]
    if result.delete_rcpts:
        need(SMFIF_DELRCPT, "deleting recipients")
        out += [codec.del_rcpt(a) for a in result.delete_rcpts]
    if result.add_rcpts:
        need(SMFIF_ADDRCPT, "adding recipients")
        out += [codec.add_rcpt(a) for a in result.add_rcpts]
    if result.replace_body is not None:
        need(SMFIF_CHGBODY, "replacing the body")
        out += codec.replace_body(result.replace_body)
    out.append(codec.accept() if kind == "accept" else codec.continue_())
    return out


def _peer_name(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer) if peer else "local"


class _Connection:
    """One MTA connection: protocol state, one transaction at a time."""

    def __init__(
        self, server: MilterServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.peer = _peer_name(writer.get_extra_info("peername"))
        self.decoder = PacketDecoder(server.max_packet)
        self.out: list[bytes] = []
        self.busy = False
        self.negotiated = False
        self.actions = 0
        self.protocol = 0
        self.early = b""
        self._reset_session()

    def _reset_session(self) -> None:
        self.conn_macros: dict[str, str] = {}
        self.client_addr = ""
        self.client_name = ""
        self.client_port = 0
        self.helo = ""
        self._reset_transaction()

    def _reset_transaction(self) -> None:
        builder = getattr(self, "builder", None)
        if builder is not None:
            builder.discard()
        self.builder: MessageBuilder | None = None
        self.tx_macros: dict[str, str] = {}
        self.mail_from = ""
        self.mail_args: list[str] = []
        self.rcpts: list[str] = []
        self.rcpt_args: dict[str, list[str]] = {}
        self.headers: list[tuple[str, str]] = []
        self.in_transaction = False
        self.too_many_rcpts = False
        self.too_many_headers = False

    def _message(self) -> MessageBuilder:
        if self.builder is None:
            s = self.server
            self.builder = MessageBuilder(s.spool_threshold, s.spool_dir, s.max_message_size)
        return self.builder

    def _ack(self, no_reply_flag: int) -> None:
        if not self.protocol & no_reply_flag:
            self.out.append(codec.continue_())

    async def _flush(self) -> None:
        if self.out:
            self.writer.write(b"".join(self.out))
            self.out.clear()
            await self.writer.drain()

    async def run(self) -> None:
        metrics.MILTER_CONNECTIONS.inc()
        try:
            while True:
                if self.early:
                    data, self.early = self.early, b""
                else:
                    try:
                        async with asyncio.timeout(self.server.timeout):
                            data = await self.reader.read(_READ_SIZE)
                    except TimeoutError:
                        metrics.MILTER_PROTOCOL_ERRORS.labels("timeout").inc()
                        log.event(
                            "milter.timeout",
                            logging.WARNING,
                            peer=self.peer,
                            in_transaction=self.in_transaction,
                        )
                        return
                if not data:
                    if self.in_transaction or self.decoder.pending:
                        log.event(
                            "milter.disconnected",
                            logging.WARNING,
                            peer=self.peer,
                            pending=self.decoder.pending,
                        )
                    return
                for packet in self.decoder.feed(data):
                    if not await self._dispatch(packet):
                        return
                await self._flush()
                if self.server.closing and not self.busy:
                    return
        except MilterProtocolError as exc:
            metrics.MILTER_PROTOCOL_ERRORS.labels(type(exc).__name__).inc()
            log.event(
                "milter.protocol_error",
                logging.WARNING,
                peer=self.peer,
                error=f"{type(exc).__name__}: {exc}",
            )
        except (ConnectionError, OSError) as exc:
            log.failure("milter.connection_error", exc, logging.WARNING, peer=self.peer)
        finally:
            metrics.MILTER_CONNECTIONS.dec()
            self._reset_transaction()
            self.writer.close()

    async def _dispatch(self, packet: Packet) -> bool:
        """Handle one packet; False ends the connection."""
        cmd, data = packet
        if cmd == codec.SMFIC_OPTNEG:
            self._negotiate(data)
            return True
        if not self.negotiated:
            raise MalformedPacket(f"command {chr(cmd)!r} before option negotiation")
        if cmd == codec.SMFIC_MACRO:
            stage, macros = codec.parse_macro(data)
            (self.conn_macros if stage in _CONNECTION_STAGES else self.tx_macros).update(macros)
        elif cmd == codec.SMFIC_BODY:
            self._message().body(data)
            self._ack(SMFIP_NR_BODY)
        elif cmd == codec.SMFIC_HEADER:
            self._header(data)
            self._ack(SMFIP_NR_HDR)
        elif cmd == codec.SMFIC_RCPT:
            self._rcpt(data)
            self._ack(SMFIP_NR_RCPT)
        elif cmd == codec.SMFIC_MAIL:
            self._reset_transaction_keep_macros()
            self.in_transaction = True
            self.mail_from, self.mail_args = codec.parse_envelope(data)
            self._ack(SMFIP_NR_MAIL)
        elif cmd == codec.SMFIC_EOH:
            codec.expect_empty(cmd, data)
            self._message().end_of_headers()
            self._ack(SMFIP_NR_EOH)
        elif cmd == codec.SMFIC_BODYEOB:
            if data:  # libmilter treats data here as a last body chunk
                self._message().body(data)
            return await self._end_of_message() and not self.server.closing
        elif cmd == codec.SMFIC_CONNECT:
            conn = codec.parse_connect(data)
            self.client_name, self.client_addr, self.client_port = (
                conn.hostname,
                conn.address,
                conn.port,
            )
            self._ack(SMFIP_NR_CONN)
        elif cmd == codec.SMFIC_HELO:
            self.helo = codec.parse_helo(data)
            self._ack(SMFIP_NR_HELO)
        elif cmd == codec.SMFIC_ABORT:
            self._reset_transaction()
        elif cmd == codec.SMFIC_DATA:
            self._ack(SMFIP_NR_DATA)
        elif cmd == codec.SMFIC_UNKNOWN:
            self._ack(SMFIP_NR_UNKN)
        elif cmd == codec.SMFIC_QUIT:
            return False
        elif cmd == codec.SMFIC_QUIT_NC:
            self._reset_session()
        else:
            raise UnknownCommand(f"unknown command byte 0x{cmd:02x}")
        return True

    def _reset_transaction_keep_macros(self) -> None:
        """MAIL starts a transaction; its macros arrived just before it."""
        macros = self.tx_macros
        self._reset_transaction()
        self.tx_macros = macros

    def _negotiate(self, data: bytes) -> None:
        offer = codec.parse_optneg(data)
        if offer.version < 2:
            raise MalformedPacket(f"milter protocol version {offer.version} is too old")
        self.actions = ACTIONS & offer.actions
        self.protocol = PROTOCOL & offer.protocol
        macros = self.server.macros if self.actions & SMFIF_SETSYMLIST else None
        version = min(offer.version, codec.PROTOCOL_VERSION)
        self.out.append(codec.optneg_reply(version, self.actions, self.protocol, macros))
        self.negotiated = True

    def _header(self, data: bytes) -> None:
        name, value = codec.parse_header(data)
        leadspc = bool(self.protocol & SMFIP_HDR_LEADSPC)
        self._message().header(name, value, leadspc)
        if len(self.headers) >= self.server.max_headers:
            self.too_many_headers = True
            return
        text = value.decode("utf-8", "surrogateescape").replace("\r\n", "\n")
        if leadspc and text.startswith(" "):
            text = text[1:]
        self.headers.append((name.decode("utf-8", "surrogateescape"), text.replace("\n", "\r\n")))

    def _rcpt(self, data: bytes) -> None:
        address, args = codec.parse_envelope(data)
        if len(self.rcpts) >= self.server.max_recipients:
            self.too_many_rcpts = True
            return
        self.in_transaction = True
        self.rcpts.append(address)
        self.rcpt_args[address] = args

    def _refusal(self, builder: MessageBuilder) -> Reply | None:
        if builder.over:
            return TOO_BIG
        if self.too_many_headers:
            return TOO_MANY_HEADERS
        if self.too_many_rcpts:
            return TOO_MANY_RECIPIENTS
        return None

    def _transaction(self, builder: MessageBuilder) -> MilterTransaction:
        macros = Macros({**self.conn_macros, **self.tx_macros})
        port = self.client_port
        if not port and macros.get("client_port", "").isdigit():
            port = int(macros["client_port"])
        return MilterTransaction(
            macros=macros,
            client_addr=self.client_addr or macros.get("client_addr", ""),
            client_name=self.client_name or macros.get("client_name", ""),
            client_port=port,
            helo=self.helo,
            mail_from=self.mail_from,
            mail_args=self.mail_args,
            rcpts=self.rcpts,
            rcpt_args=self.rcpt_args,
            headers=self.headers,
            message=builder.finish(),
            smtputf8=any(a.upper() == "SMTPUTF8" for a in self.mail_args),
        )

    async def _end_of_message(self) -> bool:
        """False when the MTA went away while the handler ran."""
        builder = self._message()
        self.builder = None  # the transaction owns it now
        refusal = self._refusal(builder)
        if refusal is not None:
            builder.discard()
            log.event(
                "milter.refused",
                logging.WARNING,
                peer=self.peer,
                code=refusal.code,
                size=builder.size,
                rcpts=len(self.rcpts),
                headers=len(self.headers),
                sender=self.mail_from,
            )
            self.out.append(codec.replycode(refusal.code, refusal.status, refusal.text))
            self._reset_transaction()
            await self._flush()
            return True
        try:
            tx = self._transaction(builder)
        except OSError as exc:
            builder.discard()
            log.failure("milter.spool_error", exc, peer=self.peer)
            self.out.append(
                codec.replycode(TEMP_FAILURE.code, TEMP_FAILURE.status, TEMP_FAILURE.text)
            )
            self._reset_transaction()
            await self._flush()
            return True
        self._reset_transaction()
        await self._flush()
        self.busy = True
        self.server._busy_changed(self, True)
        try:
            return await self._decide(tx)
        finally:
            tx.message.close()
            self.busy = False
            self.server._busy_changed(self, False)

    async def _decide(self, tx: MilterTransaction) -> bool:
        """Run the handler, keep the MTA patient, and answer unless it went away."""
        handler = asyncio.ensure_future(self.server._call_handler(tx, self.peer))
        watch: asyncio.Task[bytes] | None = asyncio.ensure_future(self.reader.read(_READ_SIZE))
        gone = False
        try:
            while not handler.done():
                waiting: set[asyncio.Future[Any]] = {handler}
                if watch is not None:
                    waiting.add(watch)
                done, _ = await asyncio.wait(
                    waiting,
                    timeout=self.server.progress_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if watch is not None and watch in done:
                    try:
                        early = watch.result()
                    except (ConnectionError, OSError):
                        early = b""
                    watch = None
                    if not early:
                        if not gone:
                            log.event(
                                "milter.mta_gone",
                                logging.WARNING,
                                peer=self.peer,
                                queue_id=tx.macros.get("i", ""),
                            )
                        gone = True
                    else:
                        self.early += early  # not Postfix: keep it for after the reply
                if not done and not gone:
                    self.writer.write(codec.progress())
            result = handler.result()
        finally:
            if watch is not None:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                    await watch
            if not handler.done():  # only when the server itself is cancelled
                handler.cancel()
        if gone:
            log.event(
                "milter.reply_dropped",
                logging.WARNING,
                peer=self.peer,
                kind=result.kind,
                queue_id=tx.macros.get("i", ""),
            )
            if result.dropped is not None:
                try:
                    await result.dropped()
                except Exception as exc:
                    log.failure("milter.undo_failed", exc, peer=self.peer)
            return False
        try:
            packets = encode_result(result, self.actions, bool(self.protocol & SMFIP_HDR_LEADSPC))
        except EncodeError as exc:
            log.failure("milter.result_error", exc, peer=self.peer, queue_id=tx.macros.get("i", ""))
            t = TEMP_FAILURE
            packets = [codec.replycode(t.code, t.status, t.text)]
        self.out += packets
        await self._flush()
        return True


class MilterServer:
    """Listens on the given addresses and serves MTA connections until shut down."""

    def __init__(
        self,
        listen: Sequence[str],
        handler: Handler,
        *,
        max_message_size: int,
        spool_threshold: int,
        spool_dir: str | None,
        timeout: float,
        progress_interval: float = 10.0,
        max_packet: int = codec.DEFAULT_MAX_PACKET,
        max_recipients: int = 1000,
        max_headers: int = 5000,
        macros: Mapping[int, str] = DEFAULT_MACROS,
    ) -> None:
        self.specs = [parse_listen(s) for s in listen]
        self.handler = handler
        self.max_message_size = max_message_size
        self.spool_threshold = spool_threshold
        self.spool_dir = spool_dir
        self.timeout = timeout
        self.progress_interval = progress_interval
        self.max_packet = max_packet
        self.max_recipients = max_recipients
        self.max_headers = max_headers
        self.macros = dict(macros)
        self.closing = False
        self._servers: list[tuple[ListenSpec, asyncio.Server]] = []
        self._connections: dict[_Connection, asyncio.Task[Any]] = {}
        self._busy: set[_Connection] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(
        self, *, reuse_port: bool = False, unix_sockets: Mapping[str, socket.socket] | None = None
    ) -> None:
        """Listen on every spec. Worker processes of one gateway share an inet port
        through SO_REUSEPORT (``reuse_port``) and a unix socket their supervisor bound
        before forking (``unix_sockets``, by path): a path cannot be bound twice."""
        try:
            for spec in self.specs:
                inherited = (unix_sockets or {}).get(spec.path) if spec.family == "unix" else None
                self._servers.append((spec, await self._listen(spec, reuse_port, inherited)))
        except BaseException:
            await self._close_listeners()
            raise

    async def _listen(
        self, spec: ListenSpec, reuse_port: bool, inherited: socket.socket | None
    ) -> asyncio.Server:
        if spec.family == "unix":
            if inherited is not None:
                return await asyncio.start_unix_server(self._serve, sock=inherited)
            return await asyncio.start_unix_server(self._serve, sock=bind_unix(spec.path))
        family = socket.AF_INET6 if spec.family == "inet6" else socket.AF_INET
        return await asyncio.start_server(
            self._serve,
            spec.host,
            spec.port,
            family=family,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )

    def bound(self) -> list[str]:
        """Printable addresses listened on, with the real port when 0 was asked for."""
        out = []
        for spec, server in self._servers:
            if spec.family == "unix":
                out.append(f"unix:{spec.path}")
                continue
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                out.append(
                    f"inet6:[{host}]:{port}" if spec.family == "inet6" else f"inet:{host}:{port}"
                )
        return out

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.closing:
            writer.close()
            return
        conn = _Connection(self, reader, writer)
        # Its own task, so that shutdown can cancel it without cancelling the task
        # asyncio's stream server made (which reports that as an unhandled error).
        task = asyncio.ensure_future(conn.run())
        self._connections[conn] = task
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                task.cancel()
                raise
        finally:
            self._connections.pop(conn, None)

    async def _call_handler(self, tx: MilterTransaction, peer: str) -> MilterResult:
        try:
            return await self.handler(tx)
        except Exception as exc:
            log.failure("milter.handler_error", exc, peer=peer, queue_id=tx.macros.get("i", ""))
            return MilterResult("tempfail", TEMP_FAILURE)

    def _busy_changed(self, conn: _Connection, busy: bool) -> None:
        if busy:
            self._busy.add(conn)
        else:
            self._busy.discard(conn)
        if self._busy:
            self._idle.clear()
        else:
            self._idle.set()

    async def _close_listeners(self) -> None:
        for spec, server in self._servers:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
            if spec.family == "unix":
                with contextlib.suppress(OSError):
                    os.unlink(spec.path)
        self._servers.clear()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let end-of-message handlers finish (up to ``grace``
        seconds) and answer, then close every connection."""
        self.closing = True
        for _, server in self._servers:
            server.close()
        for conn, task in list(self._connections.items()):
            if not conn.busy:
                task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._idle.wait()
        tasks = list(self._connections.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._close_listeners()


def bind_unix(path: str) -> socket.socket:
    """A listening unix socket at ``path``, readable and writable by the owner and group
    only (the MTA's user joins the gateway's group), a stale file from a previous run
    removed first."""
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o660)
        sock.listen(512)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def unix_paths(listen: Sequence[str]) -> list[str]:
    """The unix socket paths among listen specs (what a supervisor binds before forking)."""
    return [spec.path for spec in map(parse_listen, listen) if spec.family == "unix"]


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a previous run blocks bind; one still served is not stale."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
    raise OSError(errno.EADDRINUSE, f"{path} is in use by another process")
