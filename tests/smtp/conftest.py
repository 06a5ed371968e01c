"""Raw-socket tools for protocol tests: a byte-exact client and a scripted next hop."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import GatewayProcess, Sink

TIMEOUT = 5.0
ENHANCED = re.compile(rb"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3} ")


class Closed(Exception):
    """The peer closed the connection before a complete reply."""


@dataclass
class Answer:
    """One SMTP reply as read off the wire: its code and raw lines."""

    code: int
    lines: list[bytes]

    @property
    def text(self) -> bytes:
        return b"".join(self.lines)

    @property
    def enhanced(self) -> bool:
        """Every line carries an RFC 3463 status code."""
        return all(ENHANCED.match(line) for line in self.lines)


class Client:
    """An SMTP client that sends exactly the bytes it is given."""

    def __init__(self, port: int, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout)
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> Answer:
        lines: list[bytes] = []
        while True:
            line = self.file.readline(65536)
            if not line.endswith(b"\n"):
                raise Closed(b"".join(lines) + line)
            lines.append(line)
            if line[3:4] != b"-":
                return Answer(int(line[:3]), lines)

    def replies(self, n: int) -> list[Answer]:
        return [self.reply() for _ in range(n)]

    def cmd(self, line: bytes) -> Answer:
        self.send(line + b"\r\n")
        return self.reply()

    def ehlo(self, name: bytes = b"dinas.jakarta.go.id") -> Answer:
        answer = self.cmd(b"EHLO " + name)
        assert answer.code == 250, answer
        return answer

    def envelope(self, sender: bytes, rcpts: list[bytes]) -> None:
        """MAIL, RCPT... and DATA in one write; all must be accepted."""
        self.send(b"MAIL FROM:<" + sender + b">\r\n"
                  + b"".join(b"RCPT TO:<" + r + b">\r\n" for r in rcpts) + b"DATA\r\n")
        answers = self.replies(len(rcpts) + 2)
        assert [a.code for a in answers] == [250] * (len(rcpts) + 1) + [354], answers

    def rest(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        out = b""
        while chunk := self.sock.recv(65536):
            out += chunk
        return out

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def body_of(data: bytes) -> bytes:
    """The relayed message without the gateway's (first, folded) Received header."""
    assert data.startswith(b"Received: from "), data[:80]
    end = data.index(b"\r\n", data.index(b"(milter)"))
    while data[end + 2:end + 3] in (b"\t", b" "):
        end = data.index(b"\r\n", end + 2)
    return data[end + 2:]


def log_problems(text: str) -> list[str]:
    """Log lines that mean the gateway itself failed."""
    return [line for line in text.splitlines()
            if "Traceback" in line or '"level": "error"' in line
            or '"level": "critical"' in line]


@dataclass
class NextHop:
    """How a scripted next hop answers; ``None`` keeps the ordinary reply."""

    greeting: bytes = b"220 upstream.test ESMTP\r\n"
    replies: dict[bytes, bytes] = field(default_factory=dict)   # command verb -> raw reply
    end_of_data: bytes = b"250 2.0.0 queued as UP1\r\n"
    close_after_greeting: bool = False
    delay: float = 0.0            # seconds before answering the end of the data


_ORDINARY = {
    b"EHLO": b"250-upstream.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10000000\r\n",
    b"HELO": b"250 upstream.test\r\n",
    b"MAIL": b"250 2.1.0 ok\r\n",
    b"RCPT": b"250 2.1.5 ok\r\n",
    b"DATA": b"354 go ahead\r\n",
    b"RSET": b"250 2.0.0 ok\r\n",
    b"NOOP": b"250 2.0.0 ok\r\n",
    b"QUIT": b"221 2.0.0 bye\r\n",
}


class ScriptedUpstream:
    """A next hop on loopback that answers byte for byte as its ``NextHop`` says."""

    def __init__(self, script: NextHop) -> None:
        self.script = script
        self.messages: list[bytes] = []
        self.connections = 0
        self.hung_up = 0              # connections the gateway closed on its side
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._converse, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _converse(self, conn: socket.socket) -> None:
        s = self.script
        conn.settimeout(TIMEOUT)
        with conn, conn.makefile("rb") as f:
            try:
                conn.sendall(s.greeting)
                if s.close_after_greeting:
                    return
                while line := f.readline(65536):
                    verb = line.split(b" ", 1)[0].strip().upper()
                    conn.sendall(s.replies.get(verb, _ORDINARY.get(verb, b"500 5.5.1 ?\r\n")))
                    if verb == b"QUIT":
                        return
                    if verb == b"DATA" and s.replies.get(verb, _ORDINARY[verb])[:3] == b"354":
                        data = b""
                        while not data.endswith(b"\r\n.\r\n") and data != b".\r\n":
                            chunk = f.readline(1 << 20)
                            if not chunk:
                                return
                            data += chunk
                        self.messages.append(data[:-3])
                        time.sleep(s.delay)
                        conn.sendall(s.end_of_data)
                self.hung_up += 1
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._accept.join(2)


@pytest.fixture
def next_hop() -> Iterator[list[ScriptedUpstream]]:
    """Scripted next hops a test starts with ``next_hop.append(ScriptedUpstream(...))``."""
    hops: list[ScriptedUpstream] = []
    yield hops
    for h in hops:
        h.close()


@dataclass
class SharedGateway:
    """One gateway process with tight limits, shared by the protocol tests of a module."""

    process: GatewayProcess
    sink: Sink
    spool: Path

    @property
    def port(self) -> int:
        return self.process.port


MAX_SIZE = 16 * 1024
MAX_RCPTS = 100
DATA_TIMEOUT = 1.0
COMMAND_TIMEOUT = 4.0


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedGateway]:
    tmp = tmp_path_factory.mktemp("hostile")
    sink = Sink()
    sink.controller.start()
    spool = tmp / "spool-data"
    gw = GatewayProcess(tmp, {
        "upstream": f"smtp://127.0.0.1:{sink.port}",
        "max_message_size": MAX_SIZE,
        "max_recipients": MAX_RCPTS,
        "data_timeout": f"{DATA_TIMEOUT}s",
        "command_timeout": f"{COMMAND_TIMEOUT}s",
        "spool_threshold": "1KB",
        "spool_dir": str(spool),
    })
    try:
        gw.start()
        yield SharedGateway(gw, sink, spool)
    finally:
        gw.stop()
        sink.controller.stop()
    problems = log_problems(gw.log())
    assert not problems, "\n".join(problems)
