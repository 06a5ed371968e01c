"""Handing a message to the next hop: SMTP (with pipelining, TLS policy and
connection reuse) or a local Maildir outbox.

The gateway's promise is "250 only when the message is safe", so every path here
returns a precise result per recipient and never pretends: an unreachable next hop
or a TLS requirement that cannot be met is a temporary failure (4xx), never a
silent downgrade to clear text. The SMTP client is small and ours because the hot
path needs what general clients do not give: pipelined MAIL/RCPT, and streaming the
already dot-stuffed bytes straight from the receive buffer or spool file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from milter import log
from milter.config import GatewayConfig, Route
from milter.message import CHUNK, Message
from milter.replies import Reply

IDLE_SECONDS = 30.0
MAX_IDLE_PER_ROUTE = 16


@dataclass
class DeliveryResult:
    """The next hop's verdict on one transaction."""

    ok: bool  # at least one recipient accepted the data
    accepted: tuple[str, ...] = ()
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)
    code: int = 250
    message: str = ""
    status: str = ""
    route: str = "upstream"

    @classmethod
    def failed(cls, reply: Reply, rcpts: Sequence[str], route: str = "upstream") -> DeliveryResult:
        """Nothing delivered: every recipient carries the same reply."""
        return cls(
            False,
            code=reply.code,
            status=reply.status,
            message=reply.text,
            refused={r: (reply.code, reply.text) for r in rcpts},
            route=route,
        )


class DeliveryError(Exception):
    """A next hop failed as a whole; ``reply`` is what the client should hear."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.line())
        self.reply = reply


class TlsFailed(DeliveryError):
    """The TLS handshake with a next hop failed (after it offered STARTTLS)."""


def split_status(text: str) -> tuple[str, str]:
    """(enhanced status code, rest) of a reply text; the code is empty when absent."""
    head, _, rest = text.partition(" ")
    parts = head.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and head[0] in "245":
        return head, rest
    return "", text


def tls_context(policy: str) -> ssl.SSLContext:
    """``verify`` checks the certificate and name; the others only encrypt."""
    ctx = ssl.create_default_context()
    if policy != "verify":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class SmtpConnection:
    """One client connection to a next hop, reusable across transactions."""

    def __init__(
        self, route: Route, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.route = route
        self.reader = reader
        self.writer = writer
        self.extensions: dict[str, str] = {}
        self.last_used = time.monotonic()
        self.broken = False
        self.data_started = False

    @classmethod
    async def open(cls, route: Route, helo: str) -> SmtpConnection:
        timeout = route.timeout
        try:
            ctx = tls_context(route.tls) if route.scheme == "smtps" else None
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    route.host,
                    route.port,
                    ssl=ctx,
                    server_hostname=route.host if ctx else None,
                    limit=1 << 20,
                ),
                timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise DeliveryError(
                Reply(451, f"next hop {route.name} unreachable: {_describe(exc)}", "4.4.1")
            ) from None
        conn = cls(route, reader, writer)
        try:
            greeting = await conn.read_reply()
            if greeting.code != 220:
                raise DeliveryError(_as_temporary(greeting, f"{route.name} greeting"))
            await conn.ehlo(helo)
            if route.scheme == "smtp" and route.tls != "none":
                if "STARTTLS" in conn.extensions:
                    reply = await conn.command("STARTTLS")
                    if reply.code != 220:
                        if route.tls in ("required", "verify"):
                            raise DeliveryError(
                                Reply(
                                    451,
                                    f"TLS required by route {route.name}: STARTTLS refused",
                                    "4.7.5",
                                )
                            )
                    else:
                        try:
                            await asyncio.wait_for(
                                writer.start_tls(
                                    tls_context(route.tls), server_hostname=route.host
                                ),
                                timeout,
                            )
                        except (OSError, TimeoutError, ssl.SSLError) as exc:
                            raise TlsFailed(
                                Reply(
                                    451, f"TLS with {route.name} failed: {_describe(exc)}", "4.7.5"
                                )
                            ) from None
                        conn.reader = reader
                        await conn.ehlo(helo)
                elif route.tls in ("required", "verify"):
                    raise DeliveryError(
                        Reply(
                            451,
                            f"TLS required by route {route.name} but "
                            "not offered; not sending in clear",
                            "4.7.5",
                        )
                    )
            if route.username and route.password:
                await conn.auth(route.username, route.password)
        except BaseException:
            conn.close()
            raise
        return conn

    async def auth(self, username: str, password: str) -> None:
        import base64

        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        reply = await self.command(f"AUTH PLAIN {token}")
        if reply.code != 235:
            raise DeliveryError(_as_temporary(reply, f"authentication at {self.route.name}"))

    async def ehlo(self, helo: str) -> None:
        reply = await self.command(f"EHLO {helo}")
        if reply.code != 250:
            reply = await self.command(f"HELO {helo}")
            if reply.code != 250:
                raise DeliveryError(_as_temporary(reply, "HELO"))
            self.extensions = {}
            return
        ext: dict[str, str] = {}
        for line in reply.text.split("\n")[1:]:
            key, _, val = line.strip().partition(" ")
            ext[key.upper()] = val
        self.extensions = ext

    async def read_reply(self) -> Reply:
        try:
            async with asyncio.timeout(self.route.timeout):
                return await self._read_reply()
        except (OSError, TimeoutError, asyncio.LimitOverrunError, ValueError) as exc:
            self.broken = True
            raise DeliveryError(
                Reply(451, f"next hop {self.route.name}: {_describe(exc)}", "4.4.2")
            ) from None

    async def _read_reply(self) -> Reply:
        lines: list[str] = []
        code = 0
        while True:
            raw = await self.reader.readline()
            if not raw:
                self.broken = True
                raise DeliveryError(
                    Reply(451, f"next hop {self.route.name} closed the connection", "4.4.2")
                )
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if len(line) < 3 or not line[:3].isdigit():
                self.broken = True
                raise DeliveryError(
                    Reply(451, f"next hop {self.route.name} sent a malformed reply", "4.4.2")
                )
            code = int(line[:3])
            lines.append(line[4:])
            if len(line) == 3 or line[3] != "-":
                break
        status, first = split_status(lines[0])
        text = "\n".join([first, *lines[1:]]) if len(lines) > 1 else first
        return Reply(code, text, status)

    async def write(self, data: bytes | memoryview) -> None:
        try:
            self.writer.write(data)
            # Waiting for the buffer to drain only when it is full spares a timer
            # per write on the hot path; big messages still stream with back-pressure.
            if self.writer.transport.get_write_buffer_size() > 256 * 1024:
                async with asyncio.timeout(self.route.timeout):
                    await self.writer.drain()
        except (OSError, TimeoutError) as exc:
            self.broken = True
            raise DeliveryError(
                Reply(451, f"next hop {self.route.name}: {_describe(exc)}", "4.4.2")
            ) from None

    async def command(self, line: str) -> Reply:
        await self.write(line.encode("utf-8") + b"\r\n")
        return await self.read_reply()

    async def transaction(
        self, mail_from: str, rcpts: Sequence[str], message: Message, smtputf8: bool
    ) -> DeliveryResult:
        """MAIL, RCPT..., DATA; pipelined when the next hop allows it."""
        self.data_started = False
        params = []
        if "SIZE" in self.extensions:
            params.append(f" SIZE={message.total_size}")
        if "8BITMIME" in self.extensions:
            params.append(" BODY=8BITMIME")
        if smtputf8:
            if "SMTPUTF8" not in self.extensions:
                reply = Reply(553, f"next hop {self.route.name} does not support SMTPUTF8", "5.6.7")
                return DeliveryResult.failed(reply, rcpts)
            params.append(" SMTPUTF8")
        commands = [f"MAIL FROM:<{mail_from}>{''.join(params)}"]
        commands += [f"RCPT TO:<{r}>" for r in rcpts]
        if "PIPELINING" in self.extensions:
            # RFC 2920: DATA may end the group; one round trip for the whole envelope.
            commands.append("DATA")
            await self.write(("\r\n".join(commands) + "\r\n").encode("utf-8"))
            replies = [await self.read_reply() for _ in commands]
            data_reply = replies.pop()
        else:
            replies = []
            for c in commands:
                replies.append(await self.command(c))
                if replies[0].code != 250:
                    break
            data_reply = None
        mail = replies[0]
        if mail.code != 250:
            await self._reset()
            return DeliveryResult.failed(mail, rcpts)
        accepted = [r for r, rep in zip(rcpts, replies[1:], strict=True) if rep.code in (250, 251)]
        refused = {  # the text keeps the enhanced code, as the next hop said it
            r: (rep.code, f"{rep.status} {rep.text}" if rep.status else rep.text)
            for r, rep in zip(rcpts, replies[1:], strict=True)
            if rep.code not in (250, 251)
        }
        if not accepted:
            if data_reply is not None and data_reply.code == 354:
                await self.write(b".\r\n")  # empty, and refused for lack of RCPT
                await self.read_reply()
            await self._reset()
            worst = min(refused.values(), key=lambda x: x[0])  # a 4xx wins: retry
            return DeliveryResult(False, refused=refused, code=worst[0], message=worst[1])
        if data_reply is None:
            data_reply = await self.command("DATA")
        reply = data_reply
        if reply.code != 354:
            await self._reset()
            return DeliveryResult.failed(reply, rcpts)
        self.data_started = True
        if message.total_size <= CHUNK:
            await self.write(b"".join(message.wire_chunks()) + b".\r\n")
        else:
            for chunk in message.wire_chunks():
                await self.write(chunk)
            await self.write(b".\r\n")
        reply = await self.read_reply()
        if reply.code != 250:
            return DeliveryResult.failed(reply, rcpts)
        self.last_used = time.monotonic()
        return DeliveryResult(True, tuple(accepted), refused, reply.code, reply.text, reply.status)

    async def _reset(self) -> None:
        try:
            reply = await self.command("RSET")
            if reply.code != 250:
                self.broken = True
        except DeliveryError:
            self.broken = True

    async def quit(self) -> None:
        with contextlib.suppress(DeliveryError):
            await asyncio.wait_for(self.command("QUIT"), 2)
        self.close()

    def close(self) -> None:
        self.broken = True
        with contextlib.suppress(Exception):
            self.writer.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _as_temporary(reply: Reply, what: str) -> Reply:
    """A failure outside the transaction is the hop's trouble, not the message's: 4xx."""
    code = reply.code if 400 <= reply.code < 500 else 451
    return Reply(code, f"{what}: {reply.code} {reply.text}", "4.4.0")


class Deliverer:
    """Routes by name, with a pool of idle SMTP connections per route."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._idle: dict[str, list[SmtpConnection]] = {}

    async def send(
        self,
        route_name: str,
        mail_from: str,
        rcpts: Sequence[str],
        message: Message,
        *,
        smtputf8: bool = False,
    ) -> DeliveryResult:
        route = self.config.route(route_name)
        if route.scheme == "maildir":
            return await asyncio.to_thread(deliver_maildir, route, mail_from, rcpts, message)
        try:
            result = await self._smtp(route, mail_from, rcpts, message, smtputf8)
        except DeliveryError as exc:
            result = DeliveryResult.failed(exc.reply, rcpts)
        result.route = route_name
        return result

    async def _smtp(
        self, route: Route, mail_from: str, rcpts: Sequence[str], message: Message, smtputf8: bool
    ) -> DeliveryResult:
        conn = self._take(route)
        if conn is not None:
            try:
                result = await conn.transaction(mail_from, rcpts, message, smtputf8)
            except DeliveryError:
                conn.close()
                # A connection the next hop closed while idle fails before DATA: retry
                # on a fresh one. Past DATA a retry could deliver twice: report instead.
                if conn.data_started:
                    raise
            except BaseException:
                # Cancelled (the client went away) mid-transaction: the connection is
                # in an unknown state and belongs to no pool; hang up now.
                conn.close()
                raise
            else:
                self._give(conn)
                return result
        try:
            conn = await SmtpConnection.open(route, self.config.hostname)
        except TlsFailed as exc:
            if route.tls != "opportunistic":
                raise
            # Opportunistic means "encrypt when the peer can": a peer whose TLS is
            # broken gets the mail in clear rather than never (as Postfix does).
            log.event("tls-fallback", logging.WARNING, route=route.name, error=str(exc))
            conn = await SmtpConnection.open(replace(route, tls="none"), self.config.hostname)
        try:
            result = await conn.transaction(mail_from, rcpts, message, smtputf8)
        except BaseException:
            conn.close()
            raise
        self._give(conn)
        return result

    def _take(self, route: Route) -> SmtpConnection | None:
        pool = self._idle.get(route.name, [])
        now = time.monotonic()
        while pool:
            conn = pool.pop()
            if (
                not conn.broken
                and conn.route == route
                and now - conn.last_used < IDLE_SECONDS
                and not conn.reader.at_eof()
            ):
                return conn
            conn.close()
        return None

    def _give(self, conn: SmtpConnection) -> None:
        pool = self._idle.setdefault(conn.route.name, [])
        if conn.broken or len(pool) >= MAX_IDLE_PER_ROUTE:
            conn.close()
        else:
            pool.append(conn)

    async def close(self) -> None:
        pools, self._idle = self._idle, {}
        await asyncio.gather(
            *(c.quit() for pool in pools.values() for c in pool), return_exceptions=True
        )


_counter = 0


def deliver_maildir(
    route: Route, mail_from: str, rcpts: Sequence[str], message: Message
) -> DeliveryResult:
    """Write one file into a Maildir: tmp/, fsync, rename into new/, fsync the directory.

    The envelope is kept in ``Return-Path`` and ``X-Envelope-To`` headers in front
    of the message, since a Maildir file has no other place for it.
    """
    global _counter
    base = route.path
    try:
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(base, sub), mode=0o700, exist_ok=True)
        _counter += 1
        name = f"{time.time():.6f}.P{os.getpid()}Q{_counter}.{socket.gethostname()}"
        tmp = os.path.join(base, "tmp", name)
        envelope = (f"Return-Path: <{mail_from}>\r\nX-Envelope-To: {', '.join(rcpts)}\r\n").encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(envelope)
                fh.write(message.content())
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.rename(tmp, os.path.join(base, "new", name))
        dfd = os.open(os.path.join(base, "new"), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        reply = Reply(451, f"outbox {base}: {exc.strerror or exc}", "4.3.0")
        return DeliveryResult.failed(reply, rcpts, route.name)
    return DeliveryResult(
        True, tuple(rcpts), {}, 250, f"stored in {name}", "2.0.0", route=route.name
    )


def send_message(
    config: GatewayConfig, route: str, mail_from: str, rcpts: Sequence[str], data: bytes
) -> DeliveryResult:
    """Synchronous one-shot delivery, for the command line (quarantine release)."""

    async def run() -> DeliveryResult:
        deliverer = Deliverer(config)
        try:
            smtputf8 = any(ord(c) > 127 for c in mail_from + "".join(rcpts))
            return await deliverer.send(
                route, mail_from, rcpts, Message.from_content(data), smtputf8=smtputf8
            )
        finally:
            await deliverer.close()

    return asyncio.run(run())
