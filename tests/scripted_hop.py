"""A next hop on loopback whose every step can be scripted: reply, misbehave, close, stall.

Extends the idea of ``tests/smtp/conftest.py``'s ``ScriptedUpstream`` for tests that
drive ``milter.delivery`` directly: each step (greeting, EHLO, STARTTLS, AUTH, MAIL,
RCPT, DATA, the end of the data, RSET) can answer with raw bytes, append bytes nobody
asked for, close the connection, or never answer. The hop records every command line
and every message body it received, per connection, and says when the client hung up,
so a test can assert exactly what was delivered and that a connection was dropped.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

TIMEOUT = 5.0
STEPS = ("greeting", "EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "DOT", "RSET")


@dataclass
class Act:
    """What the hop does at one step; the defaults give an ordinary answer."""

    reply: bytes | None = None  # raw reply bytes; None: the ordinary one
    extra: bytes = b""  # sent in the same write, after the reply: nobody asked for it
    close: bool = False  # hang up instead of answering
    close_after: bool = False  # answer, then hang up
    stall: bool = False  # never answer (until the hop is closed)


ORDINARY_EXTENSIONS = (b"PIPELINING", b"8BITMIME", b"SIZE 10000000")

_ORDINARY = {
    "greeting": b"220 hop.test ESMTP\r\n",
    "HELO": b"250 hop.test\r\n",
    "STARTTLS": b"220 2.0.0 Ready to start TLS\r\n",
    "AUTH": b"235 2.7.0 Authentication successful\r\n",
    "MAIL": b"250 2.1.0 Ok\r\n",
    "RCPT": b"250 2.1.5 Ok\r\n",
    "DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    "DOT": b"250 2.0.0 Ok: queued as HOP1\r\n",
    "RSET": b"250 2.0.0 Ok\r\n",
    "NOOP": b"250 2.0.0 Ok\r\n",
    "QUIT": b"221 2.0.0 Bye\r\n",
}


@dataclass
class Script:
    """How one connection goes: the extensions EHLO offers and what each step does."""

    extensions: tuple[bytes, ...] = ORDINARY_EXTENSIONS
    steps: dict[str, Act] = field(default_factory=dict)
    tls: ssl.SSLContext | None = None  # server context, needed to offer STARTTLS for real

    def ehlo_reply(self) -> bytes:
        lines = [b"hop.test", *self.extensions]
        return b"".join(
            b"250" + (b" " if i == len(lines) - 1 else b"-") + line + b"\r\n"
            for i, line in enumerate(lines)
        )


@dataclass
class Conversation:
    """What happened on one connection."""

    commands: list[bytes] = field(default_factory=list)  # every command line, as sent
    messages: list[bytes] = field(default_factory=list)  # bodies up to the dot
    tls: bool = False
    sock: socket.socket | None = None


class ScriptedHop:
    """The hop: ``scripts[i]`` drives the i-th connection (the last one drives the rest)."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = scripts or (Script(),)
        self.conversations: list[Conversation] = []
        self.closed_by_client = 0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    # -- what the tests read -------------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self.conversations)

    @property
    def messages(self) -> list[bytes]:
        """Every body the hop received, in order, over all connections."""
        return [m for c in self.conversations for m in c.messages]

    @property
    def commands(self) -> list[bytes]:
        return [line for c in self.conversations for line in c.commands]

    def wait(self, condition: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        """Block until ``condition()`` holds (re-checked whenever the hop's state changes)."""
        with self._changed:
            return self._changed.wait_for(condition, timeout)

    def push(self, data: bytes, connection: int = 0) -> None:
        """Send bytes on a (clear-text) connection now, unasked."""
        sock = self.conversations[connection].sock
        assert sock is not None
        sock.sendall(data)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._accept.join(2)
        for t in self._threads:
            t.join(2)

    # -- the server ----------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            script = self.scripts[min(len(self.conversations), len(self.scripts) - 1)]
            talk = Conversation(sock=conn)
            with self._changed:
                self.conversations.append(talk)
                self._changed.notify_all()
            t = threading.Thread(target=self._converse, args=(conn, script, talk), daemon=True)
            self._threads.append(t)
            t.start()

    def _act(self, sock: socket.socket, script: Script, step: str, default: bytes) -> bool:
        """Do what the script says at ``step``; False when the conversation is over."""
        act = script.steps.get(step, Act())
        if act.stall:
            self._stop.wait()
            return False
        if act.close:
            return False
        reply = act.reply if act.reply is not None else default
        sock.sendall(reply + act.extra)
        return not act.close_after

    def _converse(self, conn: socket.socket, script: Script, talk: Conversation) -> None:
        conn.settimeout(TIMEOUT)
        sock: socket.socket = conn
        f: BinaryIO = conn.makefile("rb")
        hung_up = False
        sender, recipients = False, 0
        try:
            if not self._act(sock, script, "greeting", _ORDINARY["greeting"]):
                return
            while True:
                line = f.readline(65536)
                if not line:
                    hung_up = True
                    return
                with self._changed:
                    talk.commands.append(line.rstrip(b"\r\n"))
                    self._changed.notify_all()
                verb = line.split(b" ", 1)[0].strip().upper().decode("ascii", "replace")
                default = script.ehlo_reply() if verb == "EHLO" else _ORDINARY.get(verb)
                if default is None:
                    default = b"500 5.5.1 Command unrecognized\r\n"
                elif verb == "RCPT" and not sender:
                    default = b"503 5.5.1 Error: need MAIL command\r\n"
                elif verb == "DATA" and not recipients:
                    default = b"554 5.5.1 Error: no valid recipients\r\n"
                if not self._act(sock, script, verb, default):
                    return
                act = script.steps.get(verb, Act())
                answered = act.reply if act.reply is not None else default
                # A real server's state: whom it accepted in this transaction.
                if verb == "MAIL":
                    sender = answered[:1] == b"2"
                elif verb == "RCPT":
                    recipients += answered[:1] == b"2"
                elif verb in ("RSET", "EHLO", "HELO"):
                    sender, recipients = False, 0
                if verb == "QUIT":
                    return
                if verb == "STARTTLS" and answered[:3] == b"220" and script.tls is not None:
                    sock = script.tls.wrap_socket(conn, server_side=True)
                    sock.settimeout(TIMEOUT)
                    f = sock.makefile("rb")
                    talk.tls = True
                elif verb == "DATA" and answered[:3] == b"354":
                    data = b""
                    while not data.endswith(b"\r\n.\r\n") and data != b".\r\n":
                        chunk = f.readline(1 << 20)
                        if not chunk:
                            hung_up = True
                            return
                        data += chunk
                    with self._changed:
                        talk.messages.append(data[:-3])
                        self._changed.notify_all()
                    sender, recipients = False, 0
                    if not self._act(sock, script, "DOT", _ORDINARY["DOT"]):
                        return
        except OSError:  # ssl.SSLError included: a handshake the client broke off
            hung_up = True
        finally:
            with self._changed:
                if hung_up:
                    self.closed_by_client += 1
                self._changed.notify_all()
            for closable in (f, sock, conn):
                with contextlib.suppress(OSError):
                    closable.close()
