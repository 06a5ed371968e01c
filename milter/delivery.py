"""Handing a message to the next hop: SMTP (with pipelining, TLS policy and
connection reuse) or a local Maildir outbox.

The gateway's promise is "250 only when the message is safe", so every path here
returns a precise result per recipient and never pretends: an unreachable next hop
or a TLS requirement that cannot be met is a temporary failure (4xx), never a
silent downgrade to clear text. The SMTP client is small and ours because the hot
path needs what general clients do not give: pipelined MAIL/RCPT, and streaming the
already dot-stuffed bytes straight from the receive buffer or spool file.

The client believes only replies that make sense where they arrive. A reply code SMTP
does not allow at that step (250 to DATA, 252 to RCPT, 199, 600), a malformed or mixed
multi-line reply, a 2xx whose enhanced status code says otherwise (``250 4.4.1``), or
bytes the next hop sent when nothing was asked, all mean the client can no longer tell
which reply answers which command. Such an *anomaly* makes the transaction a temporary
failure (the client keeps the message and retries) and the connection is dropped, never
pooled: a wrong "250" is the one answer the gateway can never take back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace

from milter import log, metrics
from milter.config import GatewayConfig, Route
from milter.envelope import Dsn
from milter.message import CHUNK, Message
from milter.replies import BAD_ADDRESS, Reply

IDLE_SECONDS = 30.0
MAX_IDLE_PER_ROUTE = 16
# A multi-line reply longer than this is not an SMTP server talking (a big EHLO is ~1 KB).
MAX_REPLY_LINES = 512
MAX_REPLY_BYTES = 64 * 1024

# RFC 5321 section 4.2: Reply-code = %x32-35 %x30-35 %x30-39.
_REPLY_CODE = re.compile(rb"[2-5][0-5][0-9]")
# Anything that looks like an RFC 3463 status code, whatever its class digit.
_ENHANCED = re.compile(r"([0-9])\.[0-9]{1,3}\.[0-9]{1,3}(?= |$)")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_UNSAFE = re.compile(r"[\r\n\x00]")
# RFC 3461 syntax of the parameters passed on.
_RET = re.compile(r"FULL|HDRS", re.IGNORECASE)
_NOTIFY = re.compile(
    r"NEVER|(?:SUCCESS|FAILURE|DELAY)(?:,(?:SUCCESS|FAILURE|DELAY))*", re.IGNORECASE
)
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})+")  # printable ASCII but "+" "=", or +HH
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
# RFC 6533 utf-8-addr-unitext / -xtext: no controls, space, "+", "=" or "\" except \x{HEX}.
_UNITEXT = re.compile(r"(?:[^\x00-\x20\x7f+=\\]|\\x\{[0-9A-Fa-f]{2,6}\})+")


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


class ProtocolAnomaly(DeliveryError):
    """The next hop said something SMTP does not allow where it said it.

    Its reply stream can no longer be matched to the commands, so nothing it says on
    this connection is believed any more: the connection is dropped and the
    transaction is a temporary failure (``451 4.5.0``).
    """


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


def hop_name(route: Route) -> str:
    """How messages name a next hop: the route and where it points, never a password."""
    return f"{route.name} ({route.display_url})"


class SmtpConnection:
    """One client connection to a next hop, reusable across transactions.

    ``broken`` is set the moment the connection stops being trustworthy (closed,
    timed out, out of step); a broken connection is never pooled. ``data_started``
    tells the caller whether the message body may have reached the next hop, after
    which a retry could deliver the message twice.
    """

    def __init__(
        self, route: Route, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.route = route
        self.hop = hop_name(route)
        self.reader = reader
        self.writer = writer
        self.extensions: dict[str, str] = {}
        self.last_used = time.monotonic()
        self.broken = False
        self.data_started = False
        self._secrets: tuple[str, ...] = ()

    @property
    def encrypted(self) -> bool:
        """TLS is on (smtps, or STARTTLS done): what the transport itself says."""
        return self.writer.get_extra_info("ssl_object") is not None

    @classmethod
    async def open(cls, route: Route, helo: str) -> SmtpConnection:
        """Connect, read the greeting, EHLO, STARTTLS as the route says, AUTH if configured."""
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
            if isinstance(exc, ssl.SSLError):
                metrics.NEXTHOP_TLS_FAILURES.labels(route.name, _tls_reason(exc)).inc()
            raise DeliveryError(
                Reply(451, f"next hop {hop_name(route)} unreachable: {_describe(exc)}", "4.4.1")
            ) from None
        conn = cls(route, reader, writer)
        try:
            greeting = await conn.read_reply("greeting")
            if greeting.code != 220:
                raise DeliveryError(_as_temporary(greeting, f"{conn.hop} greeting"))
            conn.in_step("greeting")
            await conn.ehlo(helo)
            if route.scheme == "smtp" and route.tls != "none":
                await conn.starttls(helo)
            if route.username and route.password:
                if not conn.encrypted and not _loopback(route.host):
                    # A STARTTLS stripped from the EHLO reply must not get the password
                    # in clear (Postfix: smtp_sasl_tls_security_options).
                    raise DeliveryError(
                        Reply(
                            451,
                            f"next hop {hop_name(route)}: not sending credentials in clear",
                            "4.7.5",
                        )
                    )
                await conn.auth(route.username, route.password)
        except BaseException:
            conn.close()
            raise
        return conn

    async def starttls(self, helo: str) -> None:
        """Upgrade to TLS as the route's policy says, then EHLO again.

        After the 220 to STARTTLS, whatever the reader already holds arrived in clear
        before the handshake (the CVE-2011-0411 pattern: someone on the path, or a broken
        next hop, appends fake replies that would be read as if they came through TLS).
        Such bytes fail the route with ``451 4.7.5`` rather than being discarded:
        discarding would hide an attack and go on talking through the path that carried
        it. It is a ``DeliveryError``, not ``TlsFailed``, so even an opportunistic route
        does not retry in clear: the path has just shown it is being written into, and the
        clear-text retry would hand the message to whoever writes. The check runs before
        the handshake and again after it, because bytes that arrive between reading the
        220 and the transport switching to TLS still land in the same buffer. Once the
        switch is made the transport feeds the reader only what the TLS layer decrypted,
        so an empty buffer after the handshake means every later byte is TLS-protected.
        """
        route = self.route
        strict = route.tls in ("required", "verify")
        if "STARTTLS" not in self.extensions:
            if strict:
                metrics.NEXTHOP_TLS_FAILURES.labels(route.name, "not_offered").inc()
                raise DeliveryError(
                    Reply(
                        451,
                        f"TLS required by route {self.hop} but not offered; not sending in clear",
                        "4.7.5",
                    )
                )
            return
        reply = await self.command("STARTTLS")
        if not self.expect(reply, {220}, "STARTTLS"):
            self.in_step("STARTTLS")
            metrics.NEXTHOP_TLS_FAILURES.labels(route.name, "starttls_refused").inc()
            if strict:
                raise DeliveryError(
                    Reply(451, f"TLS required by route {self.hop}: STARTTLS refused", "4.7.5")
                )
            return
        self._no_cleartext("before the TLS handshake")
        try:
            await asyncio.wait_for(
                self.writer.start_tls(tls_context(route.tls), server_hostname=route.host),
                route.timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self.broken = True
            metrics.NEXTHOP_TLS_FAILURES.labels(route.name, _tls_reason(exc)).inc()
            raise TlsFailed(
                Reply(451, f"TLS with {self.hop} failed: {_describe(exc)}", "4.7.5")
            ) from None
        self._no_cleartext("during the TLS handshake")
        await self.ehlo(helo)

    def _no_cleartext(self, when: str) -> None:
        if n := self.unread():
            self.broken = True
            metrics.NEXTHOP_TLS_FAILURES.labels(self.route.name, "cleartext_injection").inc()
            log.event(
                "tls-injection",
                logging.WARNING,
                route=self.route.name,
                hop=self.route.display_url,
                bytes=n,
                seen=self._snippet(self.peek()),
                when=when,
            )
            raise DeliveryError(
                Reply(
                    451,
                    f"TLS with {self.hop} refused: {n} bytes sent in clear after the "
                    f"220 to STARTTLS ({when})",
                    "4.7.5",
                )
            )

    async def auth(self, username: str, password: str) -> None:
        """AUTH PLAIN; the next hop's answer is scrubbed of the credentials before it is
        repeated anywhere (some servers echo what they were sent)."""
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        self._secrets = (token, password, base64.b64encode(password.encode()).decode())
        reply = await self.command(f"AUTH PLAIN {token}")
        if not self.expect(reply, {235}, "AUTH"):
            raise DeliveryError(_as_temporary(reply, f"authentication at {self.hop}"))
        self.in_step("AUTH")

    async def ehlo(self, helo: str) -> None:
        """EHLO, or HELO when EHLO is refused; records the extensions offered."""
        reply = await self.command(f"EHLO {helo}")
        if not self.expect(reply, {250}, "EHLO"):
            reply = await self.command(f"HELO {helo}")
            if not self.expect(reply, {250}, "HELO"):
                raise DeliveryError(_as_temporary(reply, f"{self.hop} HELO"))
            self.in_step("HELO")
            self.extensions = {}
            return
        self.in_step("EHLO")
        ext: dict[str, str] = {}
        for line in reply.text.split("\n")[1:]:
            key, _, val = line.strip().partition(" ")
            ext[key.upper()] = val
        self.extensions = ext

    async def read_reply(self, step: str = "reply") -> Reply:
        """The next complete reply, read strictly (see ``_read_reply``), within the timeout.

        A one-line reply already received is read without arming the timer: nothing is
        waited for (pipelined replies usually arrive together).
        """
        try:
            if self._line_ready():
                return await self._read_reply(step)
            async with asyncio.timeout(self.route.timeout):
                return await self._read_reply(step)
        except ValueError:  # StreamReader.readline: a line beyond the reader's limit
            raise self.anomaly(step, "reply line too long") from None
        except (OSError, TimeoutError) as exc:
            self.broken = True
            raise DeliveryError(
                Reply(451, f"next hop {self.hop}: {_describe(exc)} at {step}", "4.4.2")
            ) from None

    async def _read_reply(self, step: str) -> Reply:
        """One reply as RFC 5321 section 4.2 has it, or an anomaly.

        Every line must start with the same valid code (2-5, 0-5, 0-9) followed by a
        space, a hyphen or the end of the line; the text must be UTF-8 without control
        characters (replies are ASCII, but a next hop that speaks SMTPUTF8 may echo a
        UTF-8 address). An enhanced status code whose class differs from the reply's
        is an anomaly on a 2xx (``250 4.4.1`` does not say the message was taken); on
        a 4xx or 5xx the reply code is believed and the bogus detail dropped, as
        Postfix does.
        """
        lines: list[str] = []
        code = 0
        size = 0
        while True:
            raw = await self.reader.readline()
            if not raw.endswith(b"\n"):
                self.broken = True
                raise DeliveryError(
                    Reply(451, f"next hop {self.hop} closed the connection at {step}", "4.4.2")
                )
            size += len(raw)
            body = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            if (
                len(body) < 3
                or not _REPLY_CODE.fullmatch(body[:3])
                or body[3:4] not in (b"", b" ", b"-")
            ):
                raise self.anomaly(step, "malformed reply line", body)
            try:
                text = body[4:].decode("utf-8")
            except UnicodeDecodeError:
                raise self.anomaly(step, "reply text is not UTF-8", body) from None
            if _CONTROL.search(text):
                raise self.anomaly(step, "control characters in the reply", body)
            if lines and int(body[:3]) != code:
                raise self.anomaly(step, "mixed codes in one multi-line reply", body)
            code = int(body[:3])
            lines.append(text)
            if body[3:4] != b"-":
                break
            if len(lines) >= MAX_REPLY_LINES or size > MAX_REPLY_BYTES:
                raise self.anomaly(step, "endless multi-line reply")
        status, first = split_status(lines[0])
        enhanced = _ENHANCED.match(lines[0])
        if enhanced and enhanced.group(1) != str(code)[0]:
            if code < 300:
                raise self.anomaly(
                    step, f"{code} with enhanced status {enhanced.group(0)}", lines[0]
                )
            status, first = "", lines[0]
        text = "\n".join([first, *lines[1:]])
        return Reply(code, self._redact(text), status)

    def expect(self, reply: Reply, success: Collection[int], step: str) -> bool:
        """True for a success reply, False for a refusal (4xx/5xx); anything else, such
        as 250 to DATA or 252 to RCPT, is an anomaly. A 421 also means the next hop is
        closing the connection."""
        if reply.code in success:
            return True
        if 400 <= reply.code < 600:
            if reply.code == 421:
                self.broken = True
            return False
        wanted = " or ".join(str(c) for c in sorted(success))
        raise self.anomaly(step, f"answered {reply.code} where {wanted} or a refusal was due")

    def _line_ready(self) -> bool:
        """Is a final reply line (``NNN `` or ``NNN`` alone) whole in the read buffer?
        See ``unread`` for how the buffer is read."""
        buffer = getattr(self.reader, "_buffer", None)
        if not isinstance(buffer, (bytes, bytearray)):
            return False
        eol = buffer.find(b"\n")
        return eol >= 3 and buffer[3:4] != b"-"

    def unread(self) -> int:
        """How many bytes the next hop sent that no reply read has consumed, without
        waiting for more.

        ``StreamReader`` has no public way to ask; its ``_buffer`` (a bytearray since
        Python 3.4, asserted by the tests) is read defensively, and a reader without it
        counts as empty.
        """
        buffer = getattr(self.reader, "_buffer", None)
        return len(buffer) if isinstance(buffer, (bytes, bytearray)) else 0

    def peek(self, n: int = 4096) -> bytes:
        """The first ``n`` unread bytes, left in place."""
        buffer = getattr(self.reader, "_buffer", None)
        return bytes(buffer[:n]) if isinstance(buffer, (bytes, bytearray)) else b""

    def in_step(self, step: str) -> None:
        """Raise an anomaly if bytes wait after what should be the last reply for now.

        Called after every reply that ends an exchange (greeting, EHLO, AUTH, each
        command without pipelining, a pipelined group): an SMTP server speaks only
        when spoken to, so unread bytes here are replies nobody asked for, and the next
        read would take one of them for the answer to a different command.
        """
        if n := self.unread():
            raise self.anomaly(step, f"{n} unsolicited bytes after the reply", self.peek())

    def anomaly(self, step: str, detail: str, seen: bytes | str = b"") -> ProtocolAnomaly:
        """Mark the connection broken, log what was seen, and build the error to raise."""
        self.broken = True
        fields: dict[str, object] = {"route": self.route.name, "hop": self.route.display_url}
        if seen:
            fields["seen"] = self._snippet(seen)
        log.event("nexthop-anomaly", logging.WARNING, step=step, detail=detail, **fields)
        return ProtocolAnomaly(
            Reply(451, f"next hop {self.hop} out of step at {step}: {detail}", "4.5.0")
        )

    def _snippet(self, seen: bytes | str) -> str:
        """A short, printable excerpt of what the next hop sent, for the log. Redacted
        before it is cut, so that no part of a credential survives the cut."""
        if isinstance(seen, bytes):
            seen = seen[:4096].decode("utf-8", "backslashreplace")
        return self._redact(seen[:4096])[:120]

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

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
                Reply(451, f"next hop {self.hop}: {_describe(exc)}", "4.4.2")
            ) from None

    async def command(self, line: str) -> Reply:
        """Send one command line and read its reply (not checked for leftovers)."""
        await self.write(line.encode("utf-8") + b"\r\n")
        return await self.read_reply(_verb(line))

    async def _ask(self, line: str) -> Reply:
        """One command on its own: its reply must be the only thing the next hop sent."""
        reply = await self.command(line)
        self._closing(reply)
        self.in_step(_verb(line))
        return reply

    def _closing(self, reply: Reply) -> None:
        """A 421 before the data: the next hop is closing, the transaction never began.
        Raised (not returned) so that a pooled connection is retried on a fresh one."""
        if reply.code == 421:
            self.broken = True
            raise DeliveryError(Reply(421, reply.text, reply.status or "4.4.2"))

    async def transaction(
        self,
        mail_from: str,
        rcpts: Sequence[str],
        message: Message,
        smtputf8: bool,
        *,
        dsn: Dsn | None = None,
    ) -> DeliveryResult:
        """MAIL, RCPT..., DATA; pipelined when the next hop allows it.

        Returns the next hop's verdict when its replies make sense; raises
        ``DeliveryError`` (``ProtocolAnomaly`` when they do not make sense) with the
        connection marked broken. DSN parameters (RFC 3461) are passed on only when the
        next hop offers DSN; toward one that does not, none are sent, as Postfix does.

        After the final 250, bytes still waiting mean the replies were out of step
        somewhere. The 250 itself is believed: it was read in order, as the answer to the
        end of the data, and every reply before it passed the checks, so it is the most
        likely reading; reporting a failure instead would make the client send a second
        copy of a message that was most probably taken. The connection is dropped, so
        nothing after it is ever read as an answer to a later command.
        """
        self.data_started = False
        mail_params = []
        if "SIZE" in self.extensions:
            mail_params.append(f" SIZE={message.total_size}")
        if "8BITMIME" in self.extensions:
            mail_params.append(" BODY=8BITMIME")
        if smtputf8:
            if "SMTPUTF8" not in self.extensions:
                reply = Reply(553, f"next hop {self.hop} does not support SMTPUTF8", "5.6.7")
                return DeliveryResult.failed(reply, rcpts)
            mail_params.append(" SMTPUTF8")
        rcpt_params = dict.fromkeys(rcpts, "")
        if dsn and "DSN" in self.extensions:
            dsn = self._checked_dsn(dsn, smtputf8)
            mail_params.append(dsn.mail_params())
            rcpt_params = {r: dsn.rcpt_params(r) for r in rcpts}
        commands = [f"MAIL FROM:<{mail_from}>{''.join(mail_params)}"]
        commands += [f"RCPT TO:<{r}>{rcpt_params[r]}" for r in rcpts]
        if any(_UNSAFE.search(c) for c in commands):
            # A CR or LF in an address would be a command of its own at the next hop.
            return DeliveryResult.failed(BAD_ADDRESS, rcpts)
        data_reply: Reply | None = None
        if "PIPELINING" in self.extensions:
            # RFC 2920: DATA may end the group; one round trip for the whole envelope.
            commands.append("DATA")
            await self.write(("\r\n".join(commands) + "\r\n").encode("utf-8"))
            replies = []
            for c in commands:
                replies.append(await self.read_reply(_verb(c)))
                self._closing(replies[-1])
            self.in_step("the pipelined MAIL/RCPT/DATA")
            data_reply = replies.pop()
        else:
            replies = [await self._ask(commands[0])]
            if self.expect(replies[0], {250}, "MAIL"):
                for c in commands[1:]:
                    replies.append(await self._ask(c))
                    self.expect(replies[-1], {250, 251}, "RCPT")  # stop at an anomaly
        mail = replies[0]
        mail_ok = self.expect(mail, {250}, "MAIL")
        rcpt_ok = [self.expect(rep, {250, 251}, "RCPT") for rep in replies[1:]]
        data_ok = data_reply is not None and self.expect(data_reply, {354}, "DATA")
        if not mail_ok:
            if any(rcpt_ok) or data_ok:
                raise self.anomaly("MAIL", "recipients or data accepted after MAIL was refused")
            await self._reset()
            return DeliveryResult.failed(mail, rcpts)
        accepted = [r for r, ok in zip(rcpts, rcpt_ok, strict=True) if ok]
        refused = {  # the text keeps the enhanced code, as the next hop said it
            r: (rep.code, f"{rep.status} {rep.text}" if rep.status else rep.text)
            for r, rep, ok in zip(rcpts, replies[1:], rcpt_ok, strict=True)
            if not ok
        }
        if not accepted:
            if data_ok:
                # 354 with every recipient refused (RFC 2920 says DATA should fail):
                # end the empty message as Postfix does; a next hop that loses track of
                # its own state is not kept for the next message.
                await self.write(b".\r\n")
                with contextlib.suppress(DeliveryError):
                    await self.read_reply("end of empty data")
                self.broken = True
            else:
                await self._reset()
            worst = min(refused.values(), key=lambda x: x[0])  # a 4xx wins: retry
            return DeliveryResult(False, refused=refused, code=worst[0], message=worst[1])
        if data_reply is None:
            data_reply = await self._ask("DATA")
            data_ok = self.expect(data_reply, {354}, "DATA")
        if not data_ok:
            await self._reset()
            return DeliveryResult.failed(data_reply, rcpts)
        self.data_started = True
        if message.total_size <= CHUNK:
            await self.write(b"".join(message.wire_chunks()) + b".\r\n")
        else:
            for chunk in message.wire_chunks():
                await self.write(chunk)
            await self.write(b".\r\n")
        reply = await self.read_reply("end of data")
        delivered = self.expect(reply, {250}, "end of data")
        self.last_used = time.monotonic()
        if self.unread():
            self.broken = True
            log.event(
                "nexthop-out-of-step",
                logging.WARNING,
                route=self.route.name,
                hop=self.route.display_url,
                step="end of data",
                seen=self._snippet(self.peek()),
                believed=reply.code,
            )
        if not delivered:
            return DeliveryResult.failed(reply, rcpts)
        return DeliveryResult(True, tuple(accepted), refused, reply.code, reply.text, reply.status)

    def _checked_dsn(self, dsn: Dsn, smtputf8: bool) -> Dsn:
        """The DSN parameters that have RFC 3461 syntax; the others are left out.

        They come from the client as it wrote them and are spliced into command lines,
        so nothing is passed on unchecked even though the front-end checks too: one
        stray CR, LF or space would make a command of its own at the next hop. A
        malformed parameter is dropped (and logged) rather than failing the message;
        without it the next hop applies the RFC 3461 defaults.
        """
        dropped: list[str] = []

        def keep(name: str, ok: bool) -> bool:
            if not ok:
                dropped.append(name)
            return ok

        ret = dsn.ret if keep("RET", not dsn.ret or bool(_RET.fullmatch(dsn.ret))) else ""
        envid_ok = not dsn.envid or (len(dsn.envid) <= 100 and bool(_XTEXT.fullmatch(dsn.envid)))
        envid = dsn.envid if keep("ENVID", envid_ok) else ""
        notify = {
            r: v
            for r, v in dsn.notify.items()
            if keep(f"NOTIFY of {r}", bool(_NOTIFY.fullmatch(v)))
        }
        orcpt = {
            r: v for r, v in dsn.orcpt.items() if keep(f"ORCPT of {r}", _orcpt_ok(v, smtputf8))
        }
        if dropped:
            log.event(
                "dsn-parameters-dropped", logging.WARNING, route=self.route.name, dropped=dropped
            )
        return Dsn(ret=ret, envid=envid, notify=notify, orcpt=orcpt)

    async def _reset(self) -> None:
        """RSET after a refused transaction; a connection that does not come back
        clean (or is closing anyway) is dropped."""
        if self.broken:
            return
        try:
            reply = await self.command("RSET")
            if reply.code != 250 or self.unread():
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


def _orcpt_ok(value: str, smtputf8: bool) -> bool:
    """``addr-type;xtext`` (RFC 3461), or RFC 6533's ``utf-8;`` forms; raw UTF-8 only
    in an SMTPUTF8 transaction."""
    addr_type, sep, addr = value.partition(";")
    if not sep or not addr or not _ADDR_TYPE.fullmatch(addr_type):
        return False
    if addr_type.lower() == "utf-8":
        return bool(_UNITEXT.fullmatch(addr)) and (smtputf8 or addr.isascii())
    return bool(_XTEXT.fullmatch(addr))


def _verb(line: str) -> str:
    """The command word of a command line: what a reply is an answer to (never its
    arguments, which may carry credentials)."""
    return line.split(" ", 1)[0].upper()


def _loopback(host: str) -> bool:
    """Whether ``host`` is this machine: credentials over loopback never cross a wire."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _tls_reason(exc: BaseException) -> str:
    """The ``reason`` label of a failed handshake: a certificate that did not verify
    is told apart, since its fix (renew, reissue) is not the network's."""
    return "certificate" if isinstance(exc, ssl.SSLCertVerificationError) else "handshake"


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
        metrics.declare_routes([config.upstream, *config.routes.values()])

    async def send(
        self,
        route_name: str,
        mail_from: str,
        rcpts: Sequence[str],
        message: Message,
        *,
        smtputf8: bool = False,
        dsn: Dsn | None = None,
    ) -> DeliveryResult:
        """Deliver one message to the named route; failures come back as results."""
        route = self.config.route(route_name)
        if route.scheme == "maildir":
            return await asyncio.to_thread(deliver_maildir, route, mail_from, rcpts, message)
        try:
            result = await self._smtp(route, mail_from, rcpts, message, smtputf8, dsn=dsn)
        except DeliveryError as exc:
            result = DeliveryResult.failed(exc.reply, rcpts)
        result.route = route_name
        return result

    async def _smtp(
        self,
        route: Route,
        mail_from: str,
        rcpts: Sequence[str],
        message: Message,
        smtputf8: bool,
        *,
        dsn: Dsn | None,
    ) -> DeliveryResult:
        conn = self._take(route)
        if conn is not None:
            try:
                result = await conn.transaction(mail_from, rcpts, message, smtputf8, dsn=dsn)
            except DeliveryError:
                conn.close()
                # A connection the next hop closed (or garbled) while idle fails before
                # DATA: retry on a fresh one. Past DATA a retry could deliver twice.
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
            result = await conn.transaction(mail_from, rcpts, message, smtputf8, dsn=dsn)
        except BaseException:
            conn.close()
            raise
        self._give(conn)
        return result

    def _take(self, route: Route) -> SmtpConnection | None:
        """An idle connection to reuse, or None.

        A connection holding unread bytes is discarded: the next hop spoke while
        nobody asked (an extra reply line, a late 421), and the next command would
        read that as its answer. Bytes still in flight cannot be seen here; the
        reply checks of the transaction (a 250 where 354 is due, replies of
        recipients after a refused MAIL, leftovers after the group) catch those.
        """
        pool = self._idle.get(route.name, [])
        now = time.monotonic()
        while pool:
            conn = pool.pop()
            if conn.unread():
                log.event(
                    "nexthop-out-of-step",
                    logging.WARNING,
                    route=route.name,
                    hop=route.display_url,
                    step="idle",
                    seen=conn._snippet(conn.peek()),
                )
            elif (
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
    config: GatewayConfig,
    route: str,
    mail_from: str,
    rcpts: Sequence[str],
    data: bytes,
    *,
    dsn: Dsn | None = None,
) -> DeliveryResult:
    """Synchronous one-shot delivery, for the command line (quarantine release)."""

    async def run() -> DeliveryResult:
        deliverer = Deliverer(config)
        try:
            smtputf8 = any(ord(c) > 127 for c in mail_from + "".join(rcpts))
            return await deliverer.send(
                route,
                mail_from,
                rcpts,
                Message.from_content(data),
                smtputf8=smtputf8,
                dsn=dsn,
            )
        finally:
            await deliverer.close()

    return asyncio.run(run())
