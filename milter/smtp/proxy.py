"""The SMTP front-end: aiosmtpd speaks the protocol, the pipeline decides.

Only protocol lives here (STYLE.md): envelope checks that need no message
(client network, size, recipient count), reading DATA, and turning the pipeline's
outcome into one reply. DATA is read in large chunks rather than aiosmtpd's line by
line loop, which is most of a pass-through relay's CPU at 100 KB.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from milter import log, metrics
from milter.app.pipeline import Pipeline
from milter.config import GatewayConfig
from milter.envelope import Dsn, Envelope, new_id
from milter.message import Message, SpoolWriter, process_started, smuggling, sweep_spool
from milter.replies import (
    BAD_ADDRESS,
    LINE_TOO_LONG,
    NOT_PERMITTED,
    SHUTTING_DOWN,
    TEMP_FAILURE,
    TOO_BIG,
    TOO_MANY_CONNECTIONS,
    TOO_MANY_RECIPIENTS,
    Reply,
)
from milter.replies import SMUGGLING as SMUGGLING_REPLY

_TERMINATOR = b"\r\n.\r\n"
_HAS_STATUS = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")
# Enhanced codes for aiosmtpd's own replies (RFC 2034: every reply but the
# greeting and the EHLO lines carries one once ENHANCEDSTATUSCODES is offered).
_DEFAULT_STATUS = {
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "538": "5.7.11",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
    "421": "4.3.2",
    "450": "4.2.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "221": "2.0.0",
    "250": "2.0.0",
    "251": "2.1.5",
    "252": "2.0.0",
}
_READ_LIMIT = 1 << 20
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# The common <local@domain> form, answered without the email package's full RFC 5322
# parser (a fifth of a pass-through relay's CPU); anything else takes the full path.
_SIMPLE_ADDR = re.compile(
    rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    rf"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)>(.*)\Z",
    re.DOTALL,
)
NEEDS_SMTPUTF8 = Reply(
    553,
    "Alamat non-ASCII memerlukan SMTPUTF8 / Non-ASCII address requires SMTPUTF8",
    "5.6.7",
)
DATA_TIMEOUT = Reply(421, "Batas waktu habis / Timeout waiting for data, closing", "4.4.2")


_BAD_ADDRESS_CHAR = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
_library_sanitized_log = aiosmtpd.smtp.sanitized_log


def _sanitized_log(func: Any, msg: Any, *args: Any, **kwargs: Any) -> None:
    """aiosmtpd's ``sanitized_log``, skipped when its logger would drop the call.

    aiosmtpd masks AUTH data in every command line it logs (a pattern match and a list
    per line, twice per command) before the logger, which ``log.setup`` sets to WARNING,
    drops the DEBUG and INFO calls anyway: a noticeable share of relaying a small message.
    """
    logger = getattr(func, "__self__", None)
    level = _LEVELS.get(getattr(func, "__name__", ""))
    if isinstance(logger, logging.Logger) and level is not None and not logger.isEnabledFor(level):
        return
    _library_sanitized_log(func, msg, *args, **kwargs)


aiosmtpd.smtp.sanitized_log = _sanitized_log


def _address_problem(address: str, smtputf8: bool) -> Reply | None:
    """Why an envelope address cannot be relayed as given, or None.

    aiosmtpd hands over bytes that are not UTF-8 as lone surrogates and lets
    control characters through; neither can go into the next hop's envelope.
    """
    if _BAD_ADDRESS_CHAR.search(address):
        return BAD_ADDRESS
    if not smtputf8 and not address.isascii():
        return NEEDS_SMTPUTF8
    return None


def _spool_failed(exc: OSError) -> Reply:
    """A message that cannot be kept (disk full, spool unwritable) is the gateway's
    trouble, not the sender's: 451, and the operator hears about it."""
    log.event("spool-failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
    return TEMP_FAILURE


def _line_lengths(chunk: bytes, run: int) -> tuple[int, int]:
    """(length of the unfinished last line, longest line seen) for one DATA chunk."""
    first = chunk.find(b"\n")
    if first < 0:
        return run + len(chunk), run + len(chunk)
    lines = chunk.split(b"\n")
    longest = max(run + first, *map(len, lines[1:]))
    return len(lines[-1]), longest


TAKEN_PARAMS = frozenset({"RET", "ENVID", "NOTIFY", "ORCPT", "AUTH"})
XFORWARD_ATTRIBUTES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")
_NOTIFY = re.compile(r"NEVER|(?:SUCCESS|FAILURE|DELAY)(?:,(?:SUCCESS|FAILURE|DELAY))*", re.I)


def xtext_decode(value: str) -> str:
    """RFC 3461 xtext: ``+XX`` stands for the byte XX."""
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), value)


def _bad(what: str) -> Reply:
    return Reply(501, f"Parameter {what} tidak sah / Bad {what} parameter", "5.5.4")


@dataclass
class _Extra:
    """What MAIL and RCPT said beyond the address: DSN requests and the AUTH identity."""

    ret: str = ""
    envid: str = ""
    login: str = ""
    notify: dict[str, str] = field(default_factory=dict)
    orcpt: dict[str, str] = field(default_factory=dict)


def mail_extra(taken: dict[str, str]) -> tuple[_Extra, Reply | None]:
    """RET, ENVID and AUTH of one MAIL command, checked (RFC 3461 section 4, RFC 4954)."""
    extra = _Extra()
    for key, value in taken.items():
        if key == "RET":
            if value.upper() not in ("FULL", "HDRS"):
                return extra, _bad("RET")
            extra.ret = value.upper()
        elif key == "ENVID":
            if len(value) > 100 or not _XTEXT.fullmatch(value):
                return extra, _bad("ENVID")
            extra.envid = value
        elif key == "AUTH":
            if not _XTEXT.fullmatch(value) or len(value) > 500:
                return extra, _bad("AUTH")
            login = xtext_decode(value)
            extra.login = "" if login == "<>" else login.strip("<>")
        else:
            return extra, Reply(555, f"{key} hanya untuk RCPT / {key} belongs to RCPT", "5.5.4")
    return extra, None


def rcpt_extra(extra: _Extra, address: str, taken: dict[str, str]) -> Reply | None:
    """NOTIFY and ORCPT of one RCPT command, checked and kept per recipient."""
    for key, value in taken.items():
        if key == "NOTIFY":
            if not _NOTIFY.fullmatch(value):
                return _bad("NOTIFY")
            extra.notify[address] = value.upper()
        elif key == "ORCPT":
            kind, sep, rest = value.partition(";")
            if not sep or not kind or len(value) > 500 or not _XTEXT.fullmatch(rest):
                return _bad("ORCPT")
            extra.orcpt[address] = value
        else:
            return Reply(555, f"{key} hanya untuk MAIL / {key} belongs to MAIL", "5.5.4")
    return None


def parse_xforward(arg: str) -> tuple[dict[str, str], Reply | None]:
    """``NAME=value ...`` of one XFORWARD command; ``[UNAVAILABLE]`` clears a value."""
    out: dict[str, str] = {}
    if not arg.strip():
        return out, Reply(501, "Syntax: XFORWARD attribute=value...", "5.5.4")
    for token in arg.split():
        name, eq, value = token.partition("=")
        name = name.upper()
        if not eq or name not in XFORWARD_ATTRIBUTES:
            return {}, Reply(501, f"Bad XFORWARD attribute name: {name}", "5.5.4")
        if not _XTEXT.fullmatch(value) or len(value) > 255:
            return {}, Reply(501, f"Bad XFORWARD attribute value: {name}", "5.5.4")
        text = xtext_decode(value)
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            return {}, Reply(501, f"Bad XFORWARD attribute value: {name}", "5.5.4")
        out[name] = "" if text in ("[UNAVAILABLE]", "[TEMPUNAVAIL]") else text
    if out.get("ADDR", "").upper().startswith("IPV6:"):
        out["ADDR"] = out["ADDR"][5:]
    return out, None


class Gateway:
    """Shared state of one process's listeners: config, pipeline, live sessions."""

    def __init__(self, config: GatewayConfig, pipeline: Pipeline) -> None:
        self.config = config
        self.pipeline = pipeline
        self.sessions: set[GatewaySMTP] = set()
        self.per_client: dict[str, int] = {}
        self.closing = False
        self.tls_context: ssl.SSLContext | None = None
        if config.tls_cert and config.tls_key:
            self.tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls_context.load_cert_chain(config.tls_cert, config.tls_key)
        self.servers: list[asyncio.Server] = []
        self._changed = asyncio.Event()
        self.inflight: set[asyncio.Future[Any]] = set()
        # Answers of ``allowed`` for the configuration they were computed under; asked
        # at every MAIL and RCPT, and a reload may change ``clients``.
        self._allowed: tuple[GatewayConfig, dict[str, bool]] = (config, {})

    def allowed(self, addr: str) -> bool:
        config, known = self._allowed
        if config is not self.config:
            config, known = self._allowed = (self.config, {})
        answer = known.get(addr)
        if answer is None:
            if len(known) >= 4096:
                known.clear()
            answer = known[addr] = self._allowed_now(addr, config)
        return answer

    @staticmethod
    def _allowed_now(addr: str, config: GatewayConfig) -> bool:
        try:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in net for net in config.clients)

    def factory(self) -> GatewaySMTP:
        return GatewaySMTP(self)

    def sweep(self, reuse_port: bool) -> None:
        """Remove spool files that killed processes left behind, before taking mail.

        ``reuse_port`` means this is one of several workers forked by a supervisor
        (``workers: N``), possibly a replacement while its siblings are mid-message:
        only files older than the supervisor, whose start is this worker's parent's,
        are leftovers then.
        """
        before = process_started(os.getppid()) if reuse_port else None
        removed = sweep_spool(self.config.spool_dir, before)
        if removed:
            log.event(
                "spool-swept", logging.WARNING, removed=removed, directory=self.config.spool_dir
            )

    async def start(self, reuse_port: bool = False) -> None:
        self.sweep(reuse_port)
        loop = asyncio.get_running_loop()
        for host, port in self.config.listen:
            server = await loop.create_server(
                self.factory, host=host, port=port, reuse_port=reuse_port or None, backlog=512
            )
            self.servers.append(server)

    def bound(self) -> list[tuple[str, int]]:
        """The addresses actually listened on (port 0 in tests picks a free one)."""
        out = []
        for s in self.servers:
            for sock in s.sockets:
                name = sock.getsockname()
                out.append((name[0], name[1]))
        return out

    def changed(self) -> None:
        """A session finished a transaction or went away: wake the shutdown waiter."""
        self._changed.set()

    async def wait_until(self, predicate: Callable[[], bool], seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()

    def track(self, task: asyncio.Future[Any], message: Message) -> None:
        """Keep a message's processing alive on its own, and clean up after it."""
        self.inflight.add(task)

        def done(t: asyncio.Future[Any]) -> None:
            self.inflight.discard(t)
            message.close()
            if not t.cancelled():
                t.exception()  # retrieved: an error was answered (451) or logged already
            self.changed()

        task.add_done_callback(done)

    def abandon(self, envelope: Envelope, task: asyncio.Future[Any]) -> None:
        """The client went away before its reply was written: once the message's
        processing ends, take back what the client's retry would duplicate."""

        def done(t: asyncio.Future[Any]) -> None:
            if t.cancelled() or t.exception() is not None:
                return
            cleanup = asyncio.ensure_future(self.pipeline.abandoned(envelope, t.result()))
            self.inflight.add(cleanup)
            cleanup.add_done_callback(self.inflight.discard)

        task.add_done_callback(done)

    async def shutdown(self, grace: float, *, close_pipeline: bool = True) -> None:
        """Stop accepting; let transactions in flight finish; close the rest politely.

        The pipeline is shared with the other front-ends of the process: whoever runs
        the process closes it once all of them have stopped.
        """
        self.closing = True
        for s in self.servers:
            s.close()
        for session in list(self.sessions):
            if not session.busy:
                session.close_politely()
        await self.wait_until(
            lambda: not self.inflight and not any(s.busy for s in self.sessions), grace
        )
        for task in list(self.inflight):
            task.cancel()  # past the grace period: never acknowledged, the client retries
        await self.wait_until(lambda: not self.sessions, 1.5)
        for session in list(self.sessions):
            session.abort()
        for s in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.wait_closed(), 1)
        if close_pipeline:
            await self.pipeline.close()


class GatewaySMTP(SMTP):
    """aiosmtpd's state machine with chunked DATA, limits and polite shutdown."""

    def __init__(self, gateway: Gateway) -> None:
        cfg = gateway.config
        super().__init__(
            _Handler(gateway),
            data_size_limit=cfg.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=cfg.hostname,
            ident="ESMTP milter",
            tls_context=gateway.tls_context,
            require_starttls=False,
            timeout=cfg.command_timeout,
        )
        self.gateway = gateway
        self.busy = False
        self.client_ip = ""
        self.refused = False  # not a client: 554 at once, and never counted as a session
        self._in_ehlo = False
        self._receiving = False  # reading DATA: data_timeout counts from the last bytes
        self._last_read = 0.0
        # Parameters taken out of MAIL/RCPT before aiosmtpd sees them: it upper-cases
        # the whole parameter string, and ENVID, ORCPT and AUTH values are case-exact.
        self._taken: dict[str, str] = {}
        self._param_error: Reply | None = None
        self.xforward: dict[str, str] = {}  # XFORWARD attributes for the next transaction
        self.extra = _Extra()  # this transaction's DSN requests and AUTH identity
        # The transaction being answered: its envelope and processing, until the reply
        # is written (to take back what it did should the client never hear it).
        self._answering: tuple[Envelope, asyncio.Future[Any]] | None = None

    # -- connection bookkeeping -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Admission: a host outside ``clients`` may never submit, so it is refused
        before the greeting and takes no slot of ``max_connections`` or of
        ``max_connections_per_client``; otherwise idle connections from anywhere
        could hold every slot and turn the real clients away."""
        first = self.transport is None
        if first:
            peer = transport.get_extra_info("peername") or ("", 0)
            self.client_ip = str(peer[0])
            self.refused = not self.gateway.allowed(self.client_ip)
        super().connection_made(transport)
        if first and not self.refused:
            gw = self.gateway
            gw.sessions.add(self)
            gw.per_client[self.client_ip] = gw.per_client.get(self.client_ip, 0) + 1
            metrics.SESSIONS.inc()

    def connection_lost(self, error: Exception | None) -> None:
        gw = self.gateway
        if self in gw.sessions:
            gw.sessions.discard(self)
            n = gw.per_client.get(self.client_ip, 1) - 1
            if n <= 0:
                gw.per_client.pop(self.client_ip, None)
            else:
                gw.per_client[self.client_ip] = n
            metrics.SESSIONS.dec()
            gw.changed()
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        """A client that closed its side has nothing more to say (SMTP ends with
        QUIT, never with a half-close), so the connection is closed now and its slot
        freed. aiosmtpd keeps a half-closed plain connection open and relies on the
        handler, which it cancels here, to close it; a handler cancelled before its
        first step never does, and under uvloop such a connection (a port probe, a
        scanner) held its slot of ``max_connections_per_client`` until the idle
        timeout."""
        super().eof_received()
        return False

    def data_received(self, data: bytes) -> None:
        self._last_read = self.loop.time()
        super().data_received(data)

    def _timeout_cb(self) -> None:
        if self._receiving and self.transport is not None:
            timeout = self.gateway.config.data_timeout
            idle = self.loop.time() - self._last_read
            if idle < timeout:
                # Bytes arrived since the timer was set: a slow client, not a stalled one.
                self._timeout_handle = self.loop.call_later(timeout - idle, self._timeout_cb)
                return
            with contextlib.suppress(Exception):
                self._writer.write(DATA_TIMEOUT.line().encode() + b"\r\n")
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    async def _handle_client(self) -> None:
        gw = self.gateway
        if self.refused:
            await self.push(NOT_PERMITTED.line())
            self.abort()
            return
        if gw.closing:
            await self.push(SHUTTING_DOWN.line())
            self.abort()
            return
        if (
            gw.per_client.get(self.client_ip, 0) > gw.config.max_connections_per_client
            or len(gw.sessions) > gw.config.max_connections
        ):
            await self.push(TOO_MANY_CONNECTIONS.line())
            self.abort()
            return
        await super()._handle_client()

    def close_politely(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(Exception):
                self._writer.write(SHUTTING_DOWN.line().encode() + b"\r\n")
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        m = _SIMPLE_ADDR.match(arg)
        if m is not None:
            address, params = m.group(1), m.group(2).strip()
        else:
            address, params = super()._getaddr(arg)
        if params:
            params = self._take_params(params)
        return address, params

    def _take_params(self, params: str) -> str:
        """Keep the DSN (RFC 3461) and AUTH (RFC 4954) parameters as written; give
        aiosmtpd the rest (SIZE, BODY, SMTPUTF8), which it checks itself."""
        rest = []
        for token in params.split():
            key, eq, value = token.partition("=")
            upper = key.upper()
            if upper not in TAKEN_PARAMS:
                rest.append(token)
                continue
            if not eq or upper in self._taken:
                self._param_error = Reply(
                    501, f"Parameter {upper} tidak sah / Bad {upper}", "5.5.4"
                )
                continue
            self._taken[upper] = value
        return " ".join(rest)

    async def smtp_RCPT(self, arg: str) -> None:
        self._taken, self._param_error = {}, None
        await super().smtp_RCPT(arg)

    async def smtp_RSET(self, arg: str) -> None:
        self.xforward = {}
        await super().smtp_RSET(arg)

    async def smtp_XFORWARD(self, arg: str | None) -> None:
        """Postfix's XFORWARD (XFORWARD_README): the original client of a message that
        an MTA in front passes on, for the log line, the hold and the officer alert.
        Only clients allowed to submit may say who the original client was."""
        if not self.gateway.allowed(self.client_ip):
            await self.push("550 5.7.0 Error: insufficient authorization")
            return
        if self.envelope is not None and self.envelope.mail_from is not None:
            await self.push("503 5.5.1 Error: MAIL transaction in progress")
            return
        update, reply = parse_xforward(arg or "")
        if reply is not None:
            await self.push(reply.line())
            return
        self.xforward.update(update)
        await self.push("250 2.0.0 Ok")

    # -- replies ----------------------------------------------------------------
    async def push(self, status: Any) -> None:
        if isinstance(status, bytes):
            status = status.decode("utf-8", "replace")
        code = status[:3]
        if (
            not (self._in_ehlo and code == "250")
            and code not in ("220", "354", "334")
            and not _HAS_STATUS.match(status)
            and code in _DEFAULT_STATUS
        ):
            if code == "552" and "size" in status.lower():
                status = TOO_BIG.line()
            else:
                status = f"{status[:4]}{_DEFAULT_STATUS[code]} {status[4:]}"
        await super().push(status)

    async def smtp_EHLO(self, arg: str) -> None:
        self._in_ehlo = True
        try:
            await super().smtp_EHLO(arg)
        finally:
            self._in_ehlo = False

    async def smtp_HELO(self, arg: str) -> None:
        self._in_ehlo = True
        try:
            await super().smtp_HELO(arg)
        finally:
            self._in_ehlo = False

    # -- DATA -------------------------------------------------------------------
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if self.envelope is None or not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        cfg = self.gateway.config
        self.busy = True
        try:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            spool = SpoolWriter(cfg.spool_threshold, cfg.spool_dir or None)
            try:
                reply = await self._receive(spool, cfg)
                if reply is None:
                    try:
                        message = spool.finish(3)  # the ".\r\n" of the terminator
                    except OSError as exc:
                        reply = _spool_failed(exc)
                    else:
                        reply = await self._process(message)
            finally:
                spool.discard()
            await self._answer(reply)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
        finally:
            if self._answering is not None:
                # Cancelled (the connection was lost) before the reply was written.
                self.gateway.abandon(*self._answering)
                self._answering = None
            self.busy = False
            self.gateway.changed()
        if self.gateway.closing:
            # Let the client say QUIT and hear 221; a new MAIL hears 421 instead.
            self._reset_timeout(1.0)

    async def _answer(self, reply: Reply) -> None:
        """Write the reply to DATA; a client already gone never hears it, and what its
        retry would duplicate is taken back (``Gateway.abandon``)."""
        if self.transport is None or self.transport.is_closing():
            return  # ``_answering`` stays set: abandoned in smtp_DATA
        try:
            await self.push(reply.line())
        except (ConnectionError, OSError):
            return
        self._answering = None

    async def smtp_MAIL(self, arg: str) -> None:
        if self.gateway.closing:
            await self.push(SHUTTING_DOWN.line())
            self.abort()
            return
        self._taken, self._param_error = {}, None
        await super().smtp_MAIL(arg)

    async def _receive(self, spool: SpoolWriter, cfg: GatewayConfig) -> Reply | None:
        """Read up to CRLF.CRLF in large chunks; the reply if the data is refused."""
        # aiosmtpd sizes its reader for command lines (about 1 KB), which would cut
        # DATA into tiny pieces and throttle the socket; widen it for the transfer.
        reader: Any = self._reader
        old_limit = reader._limit
        reader._limit = _READ_LIMIT
        limit = cfg.max_message_size + 3
        max_line = cfg.max_line_length
        run = 0  # length of the line still open at the end of the last chunk
        last = b"\r\n"  # the DATA line's CRLF: the terminator may follow at once
        refused: Reply | None = None
        self._last_read = self.loop.time()
        self._receiving = True
        self._reset_timeout(cfg.data_timeout)
        line_start = True  # the DATA line's CRLF came last: the terminator may be next
        try:
            while True:
                # The terminator is looked for as "\n.\r\n", which a sentence ending a
                # line does not match; only at a line's start can ".\r\n" alone end the
                # data, so there the line's first byte is read by itself, and a line
                # starting with a dot is read whole.
                chunk = b""
                sep = b"\n.\r\n"
                if line_start:
                    chunk = await reader.readexactly(1)
                    if chunk == b".":
                        sep = b"\n"
                try:
                    chunk += await reader.readuntil(sep)
                except asyncio.LimitOverrunError as exc:
                    chunk += await reader.readexactly(exc.consumed)
                    done = False
                else:
                    done = (last + chunk[-5:])[-5:] == _TERMINATOR
                line_start = chunk[-2:] == b"\r\n"  # every chunk holds at least 2 bytes
                # Smuggling check per chunk, across the boundary, terminator excluded.
                if refused is None and smuggling(last[-2:] + (chunk[:-3] if done else chunk)):
                    refused = SMUGGLING_REPLY
                    spool.discard()
                if refused is None:
                    run, longest = _line_lengths(chunk, run)
                    if longest > max_line:
                        refused = LINE_TOO_LONG
                        spool.discard()
                last = (last + chunk[-5:])[-5:]
                if refused is None:
                    if spool.size + len(chunk) > limit:
                        refused = TOO_BIG
                        spool.discard()
                    else:
                        try:
                            spool.write(chunk)
                        except OSError as exc:
                            # Keep reading to the terminator: the rest of the data
                            # must not be taken for commands.
                            refused = _spool_failed(exc)
                            spool.discard()
                if done:
                    break
        finally:
            reader._limit = old_limit
            self._receiving = False
            if self.transport is not None and not self.transport.is_closing():
                self._reset_timeout()  # back to the command timeout
        return refused

    async def _process(self, message: Message) -> Reply:
        env = self.envelope
        session = self.session
        if env is None or session is None:
            return TEMP_FAILURE
        xf = self.xforward
        self.xforward = {}  # valid for one transaction (XFORWARD_README)
        extra, self.extra = self.extra, _Extra()
        envelope = Envelope(
            mail_from=env.mail_from or "",
            rcpt_tos=tuple(env.rcpt_tos),
            client_addr=xf.get("ADDR") or self.client_ip,
            helo=xf.get("HELO") or session.host_name or "",
            smtputf8=bool(env.smtp_utf8),
            tls=session.ssl is not None,
            esmtp=bool(session.extended_smtp),
            queue_id=new_id(),
            frontend="smtp",
            client_name=xf.get("NAME", ""),
            login=extra.login,
            mta_queue_id=xf.get("IDENT", ""),
            dsn=Dsn(extra.ret, extra.envid, dict(extra.notify), dict(extra.orcpt)),
            peer_addr=self.client_ip if xf.get("ADDR") else "",
        )
        # Once the whole message is here it is processed to the end even if the
        # client goes away meanwhile: the delivery then is logged and consistent,
        # and the message's spool file lives until the pipeline is done with it.
        task = asyncio.ensure_future(self.gateway.pipeline.process(envelope, message))
        self.gateway.track(task, message)
        self._answering = (envelope, task)
        try:
            outcome = await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.failure("pipeline-error", exc, id=envelope.queue_id)
            return TEMP_FAILURE
        return outcome.reply


class _Handler:
    """aiosmtpd hooks: envelope checks that need no message."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def handle_EHLO(
        self,
        server: GatewaySMTP,
        session: Session,
        envelope: SmtpEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        last = responses.pop()  # "250 HELP"
        offers = ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-DSN"]
        if self.gateway.allowed(server.client_ip):
            offers.append(f"250-XFORWARD {' '.join(XFORWARD_ATTRIBUTES)}")
        return [*responses, *offers, last]

    async def handle_MAIL(
        self,
        server: GatewaySMTP,
        session: Session,
        envelope: SmtpEnvelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if not self.gateway.allowed(server.client_ip):
            return NOT_PERMITTED.line()
        problem = _address_problem(address, bool(envelope.smtp_utf8))
        if problem is not None:
            return problem.line()
        taken, problem = server._taken, server._param_error
        extra = _Extra()
        if problem is None:
            extra, problem = mail_extra(taken)
        if problem is not None:
            return problem.line()
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        server.extra = extra
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: GatewaySMTP,
        session: Session,
        envelope: SmtpEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not self.gateway.allowed(server.client_ip):
            return NOT_PERMITTED.line()
        if len(envelope.rcpt_tos) >= self.gateway.config.max_recipients:
            return TOO_MANY_RECIPIENTS.line()
        if "@" not in address:
            return "553 5.1.3 Alamat harus lengkap / Recipient address must be fully qualified"
        problem = _address_problem(address, bool(envelope.smtp_utf8))
        if problem is not None:
            return problem.line()
        problem = server._param_error or rcpt_extra(server.extra, address, server._taken)
        if problem is not None:
            return problem.line()
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"
