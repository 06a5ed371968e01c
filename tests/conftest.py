"""Shared end-to-end fixtures: real sinks on loopback and a real gateway process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

ROOT = Path(__file__).resolve().parent.parent
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
              ) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}: "
                               f"{proc.stderr.read().decode() if proc.stderr else ''}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class SinkBehaviour:
    """How the in-test upstream misbehaves; tests change it between messages."""

    refuse_rcpt: dict[str, str] = field(default_factory=dict)   # address -> reply line
    mail_reply: str | None = None
    data_reply: str | None = None
    stall: float = 0.0            # seconds to wait before answering DATA's end
    drop_in_data: bool = False    # close the connection when DATA arrives


class SinkHandler:
    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.behaviour = SinkBehaviour()
        self.lock = threading.Lock()

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        if self.behaviour.mail_reply:
            return self.behaviour.mail_reply
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        if address in self.behaviour.refuse_rcpt:
            return self.behaviour.refuse_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        b = self.behaviour
        if b.drop_in_data:
            assert server.transport is not None
            server.transport.abort()
            return "451 dropped"
        if b.stall:
            await asyncio.sleep(b.stall)
        if b.data_reply:
            return b.data_reply
        with self.lock:
            self.messages.append(Received(envelope.mail_from or "", list(envelope.rcpt_tos),
                                          bytes(envelope.original_content or b"")))
        return "250 2.0.0 Ok: queued as SINK1"


class LongLineSMTP(SMTP):
    """Postfix accepts (and folds) lines far beyond RFC 5321's 1000 octets; so does
    the test upstream, or real mail with long lines could not reach it."""

    line_length_limit = 1 << 20


class LongLineController(Controller):
    def factory(self) -> SMTP:
        return LongLineSMTP(self.handler, **self.SMTP_kwargs)


class Sink:
    """An aiosmtpd upstream in a thread, told to refuse, stall or drop."""

    def __init__(self) -> None:
        self.port = free_port()
        self.handler = SinkHandler()
        self.controller = LongLineController(self.handler, hostname="127.0.0.1",
                                             port=self.port, enable_SMTPUTF8=True,
                                             data_size_limit=None)

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    @property
    def behaviour(self) -> SinkBehaviour:
        return self.handler.behaviour

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.messages


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    s.controller.start()
    yield s
    s.controller.stop()


class GatewayProcess:
    """``milter -c CONFIG serve`` as a real process."""

    def __init__(self, tmp: Path, settings: dict[str, Any]) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.config_path = tmp / f"gateway-{self.port}.yaml"   # one per node
        cfg: dict[str, Any] = {
            "listen": [f"127.0.0.1:{self.port}"], "hostname": "gw.test.jakarta.go.id",
            "clients": ["127.0.0.0/8"], "shutdown_grace": "5s",
            "quarantine": {"database": f"sqlite:///{tmp}/q.sqlite3", "spool": str(tmp / "spool")},
        }
        cfg.update(settings)
        # The port to wait for: the SMTP proxy's, else the milter front-end's.
        first = cfg["listen"][0] if cfg["listen"] else cfg["milter"]["listen"][0]
        self.port = int(str(first).rsplit(":", 1)[1])
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.log_path = tmp / f"gateway-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "milter", "-c", str(self.config_path), "serve"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            wait_port(self.port, proc=None)
        except TimeoutError:
            self.stop()
            raise RuntimeError(self.log()) from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, count: int = 1, timeout: float = 15.0) -> bool:
        """Until the log holds ``text`` ``count`` times (a worker listening, say)."""
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[GatewayProcess] = []

    def make(**settings: Any) -> GatewayProcess:
        g = GatewayProcess(tmp_path, settings)
        started.append(g)
        return g.start()

    yield make
    for g in started:
        g.stop()


@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """Postfix's smtp-sink, dumping each message to a file under tmp_path/dump."""
    if not Path(SMTP_SINK).exists():
        pytest.skip("Postfix smtp-sink is not installed (make test installs it)")
    port = free_port()
    dump = tmp_path / "dump"
    dump.mkdir()
    user = ["-u", "root"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([SMTP_SINK, *user, "-d", f"{dump}/%M.", f"127.0.0.1:{port}", "50"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_port(port, proc=proc)
    yield port, dump
    proc.terminate()
    proc.wait(5)
