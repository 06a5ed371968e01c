"""Faults around the gateway's own state: a full disk, a locked, frozen or unreachable
quarantine database, and a client that goes away before hearing the reply.

Each case asserts the reply the client gets (a prompt 451 within ``quarantine.timeout``,
never a 250 for something not durable) and exactly-once across the client's retries:
every recipient's copy counted at the sinks and in the quarantine.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from milter.quarantine.store import DELETED, HELD
from tests.conftest import Sink
from tests.quarantine.conftest import PG_SERVER, pg_available, pg_schema_factory
from tests.scripted_hop import Act
from tests.test_retry_queue import (
    HELD_RCPT,
    INTERNAL,
    SEC,
    UP,
    Hop,
    InProcess,
    copies,
    gateway,
    gateways,
    hops,
    make_hop,
    message,
    send,
    wait,
)

__all__ = ["gateway", "gateways", "hops", "make_hop", "pg_schema_factory"]

BUDGET = 1.0  # quarantine.timeout of the gateways below (see write_config)


def raw_transaction(port: int, rcpts: list[str], data: bytes) -> socket.socket:
    """Send a whole transaction up to the final dot and return the socket unread."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"EHLO dinas.jakarta.go.id\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    s.sendall(f"MAIL FROM:<{INTERNAL}>\r\n".encode())
    assert f.readline().startswith(b"250")
    for r in rcpts:
        s.sendall(f"RCPT TO:<{r}>\r\n".encode())
        assert f.readline().startswith(b"250")
    s.sendall(b"DATA\r\n")
    assert f.readline().startswith(b"354")
    s.sendall(data.replace(b"\r\n.", b"\r\n..") + b".\r\n")
    return s


def vanish(s: socket.socket) -> None:
    """Hang up at once (RST), as a client whose own timeout expired."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()


def held(gw: InProcess) -> list[tuple[str, ...]]:
    return [r.recipients for r in gw.store.list(status=HELD)]


# -- a full disk ------------------------------------------------------------------------


@pytest.fixture
def full_retry_spool(tmp_path: Path) -> Iterator[Path]:
    """The retry queue's spool directory on a tiny tmpfs that is full."""
    where = tmp_path / "spool" / "retry"
    where.mkdir(parents=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        with contextlib.suppress(OSError), open(where / "filler", "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_makes_the_queue_entry_fail_and_the_client_hears_451(
    full_retry_spool: Path,
    sink: Sink,
    make_hop: Callable[[dict[str, Act]], Hop],
    gateway: Callable[..., InProcess],
) -> None:
    hop = make_hop({"RCPT": Act(reply=b"451 4.3.0 nanti / later\r\n")})
    gw = gateway(sink.port, hop.hop.port)
    code, text = send(gw.port, INTERNAL, [HELD_RCPT, SEC], message("disk penuh"))
    assert code == 451, text
    assert gw.store.retry_list() == []
    assert held(gw) == [], "the hold of a message answered 451 is withdrawn"
    assert [r.status for r in gw.store.list()] == [DELETED]
    # The client's retry, once the disk has room and the hop is back: exactly once.
    (full_retry_spool / "filler").unlink()
    hop.heal()
    code, _ = send(gw.port, INTERNAL, [HELD_RCPT, SEC], message("disk penuh"))
    assert code == 250
    assert held(gw) == [(HELD_RCPT,)] and len(hop.accepted()) == 1


# -- a locked SQLite database -------------------------------------------------------------


@contextlib.contextmanager
def sqlite_locked(path: Path) -> Iterator[None]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def test_a_locked_database_is_a_prompt_451_and_other_mail_flows(
    tmp_path: Path,
    sink: Sink,
    make_hop: Callable[[dict[str, Act]], Hop],
    gateway: Callable[..., InProcess],
) -> None:
    hop = make_hop({})
    gw = gateway(sink.port, hop.hop.port)
    with sqlite_locked(tmp_path / "q.sqlite3"):
        t0 = time.monotonic()
        code, text = send(gw.port, INTERNAL, [HELD_RCPT], message("terkunci"))
        took = time.monotonic() - t0
        assert code == 451, text
        assert took < BUDGET + 2.0, took
        # Mail that needs no store is not held up behind the stuck store calls.
        for i in range(3):
            t0 = time.monotonic()
            assert send(gw.port, INTERNAL, [UP], message(f"biasa {i}"))[0] == 250
            assert time.monotonic() - t0 < BUDGET
    # The put that was waiting for the lock may complete now: it is withdrawn, since
    # the client was told 451 and sends the message again.
    assert wait(lambda: held(gw) == [] and gw.store.verify_audit() == [])
    code, _ = send(gw.port, INTERNAL, [HELD_RCPT], message("terkunci"))
    assert code == 250
    assert wait(lambda: held(gw) == [(HELD_RCPT,)])
    assert copies(sink, UP) == 3


# -- an unreachable or frozen PostgreSQL ---------------------------------------------------


class Forwarder:
    """A TCP relay to PostgreSQL that can freeze (stop relaying) or refuse (close)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = int(self.listener.getsockname()[1])
        self.frozen = threading.Event()
        self.stopped = threading.Event()
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                a, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            b = socket.create_connection(self.target, timeout=5)
            self.sockets += [a, b]
            t = threading.Thread(target=self._pump, args=(a, b), daemon=True)
            self.threads.append(t)
            t.start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        pair = {a: b, b: a}
        while not self.stopped.is_set():
            if self.frozen.is_set():
                time.sleep(0.05)
                continue
            try:
                ready, _, _ = select.select([a, b], [], [], 0.05)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    pair[s].sendall(data)
            except (OSError, ValueError):
                return

    def refuse(self) -> None:
        """Close the port and every relayed connection: the database is unreachable."""
        self.stopped.set()
        self.listener.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in self.threads:
            t.join(2)


def test_an_unreachable_or_frozen_postgres_is_a_prompt_451(
    sink: Sink,
    make_hop: Callable[[dict[str, Act]], Hop],
    gateway: Callable[..., InProcess],
    request: pytest.FixtureRequest,
) -> None:
    reason = pg_available()
    if reason:
        pytest.skip(reason)
    schema = request.getfixturevalue("pg_schema_factory")()
    fwd = Forwarder(("127.0.0.1", int(PG_SERVER.rsplit(":", 1)[1].split("/")[0])))
    hop = make_hop({})
    try:
        url = f"postgresql://127.0.0.1:{fwd.port}/test?options=-csearch_path%3D{schema}"
        gw = gateway(sink.port, hop.hop.port, quarantine={"database": url})
        assert send(gw.port, INTERNAL, [HELD_RCPT], message("sebelum"))[0] == 250
        fwd.frozen.set()
        t0 = time.monotonic()
        code, _ = send(gw.port, INTERNAL, [HELD_RCPT], message("beku"))
        assert code == 451 and time.monotonic() - t0 < BUDGET + 2.0
        assert send(gw.port, INTERNAL, [UP], message("biasa"))[0] == 250
        fwd.refuse()
        t0 = time.monotonic()
        code, _ = send(gw.port, INTERNAL, [HELD_RCPT], message("tertutup"))
        assert code == 451 and time.monotonic() - t0 < BUDGET + 2.0
    finally:
        fwd.refuse()
    assert copies(sink, UP) == 1


# -- a client that goes away before the reply ---------------------------------------------


def test_a_hold_whose_reply_never_reached_the_client_is_withdrawn(
    tmp_path: Path,
    sink: Sink,
    make_hop: Callable[[dict[str, Act]], Hop],
    gateway: Callable[..., InProcess],
) -> None:
    hop = make_hop({})
    gw = gateway(sink.port, hop.hop.port, quarantine={"timeout": "10s"})
    with sqlite_locked(tmp_path / "q.sqlite3"):
        s = raw_transaction(gw.port, [HELD_RCPT], message("klien pergi"))
        time.sleep(0.3)  # the hold is being written, behind the lock
        vanish(s)
        time.sleep(0.2)
    # The hold completes after the client left: taken back, since it sends again.
    assert wait(lambda: [r.status for r in gw.store.list()] == [DELETED])
    assert "withdraw" in [a.action for a in gw.store.audit_entries()]
    code, _ = send(gw.port, INTERNAL, [HELD_RCPT], message("klien pergi"))
    assert code == 250
    assert held(gw) == [(HELD_RCPT,)]


def test_a_client_gone_during_a_split_delivery_leaves_no_hold_and_no_queue_entry(
    sink: Sink,
    make_hop: Callable[[dict[str, Act]], Hop],
    gateway: Callable[..., InProcess],
) -> None:
    hop = make_hop({"DOT": Act(stall=True)})  # the route times out after 0.5 s
    gw = gateway(sink.port, hop.hop.port)
    s = raw_transaction(gw.port, [HELD_RCPT, SEC], message("pergi di tengah"))
    assert hop.hop.wait(lambda: len(hop.hop.messages) == 1)
    vanish(s)
    assert wait(lambda: [r.status for r in gw.store.list()] == [DELETED])
    assert wait(lambda: gw.store.retry_list() == [])
    hop.heal()
    code, _ = send(gw.port, INTERNAL, [HELD_RCPT, SEC], message("pergi di tengah"))
    assert code == 250
    assert held(gw) == [(HELD_RCPT,)] and len(hop.accepted()) == 1
    assert os.path.isdir(gw.config.quarantine.spool)
