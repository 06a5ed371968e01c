"""Exactly once when a message has several ways out: the gateway's own retry queue.

A real gateway (``Gateway`` over ``make_pipeline``, as ``milter serve`` builds it) runs
in-process on loopback in a thread of its own; the upstream is an aiosmtpd sink that
records only what it accepted, and the sanapati route is the scriptable next hop
(``tests/scripted_hop.py``) whose faults can be healed while the gateway runs. Every
case counts each recipient's accepted copies at the sinks across the client's retries.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from milter import metrics
from milter.app.retryqueue import RetryQueue, StoreCalls, backoff
from milter.app.wiring import build_components, make_pipeline
from milter.config import ConfigError, GatewayConfig, QuarantineConfig, load
from milter.delivery import Deliverer
from milter.message import Message
from milter.metrics import RetryQueueCollector
from milter.milterproto.frontend import MilterHandler
from milter.milterproto.types import MilterTransaction
from milter.quarantine.store import (
    HELD,
    RETRY_FAILED,
    RETRY_QUEUED,
    RETRY_SENDING,
    RETRY_SENT,
    QuarantineStore,
    RetryEntry,
    open_store,
)
from milter.smtp.proxy import Gateway
from tests.conftest import ROOT, Sink, free_port
from tests.quarantine.conftest import pg_available, pg_schema_factory, pg_url
from tests.scripted_hop import Act, Script, ScriptedHop

INTERNAL = "budi@dinas.jakarta.go.id"
EXTERNAL = "alice@example.com"
UP = "sari@example.org"  # goes upstream
SEC = "tim@sanapati.net"  # goes through the sanapati route
HELD_RCPT = "x@hold.example"  # held in quarantine
HOP_TIMEOUT = 0.5

__all__ = ["pg_schema_factory"]  # the quarantine tests' fixture, used here too

POLICY = textwrap.dedent("""\
    version: 1
    domains:
      internal: [jakarta.go.id, "*.jakarta.go.id"]
    rules:
      - name: lewat-sanapati
        when: {recipient: {domain: [sanapati.net]}}
        then: [{route: sanapati}]
      - name: tahan
        when: {recipient: {domain: [hold.example]}}
        then: [quarantine]
    """)


def message(subject: str = "Laporan", sender: str = INTERNAL) -> bytes:
    return (
        f"From: {sender}\r\nTo: {UP}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@dinas.jakarta.go.id>\r\n\r\n"
        "Selamat pagi.\r\n.dot line\r\n"
    ).encode()


class Faults(dict[str, Act]):
    """The sanapati hop's faults, healed at once for every connection by ``heal``."""

    def __init__(self, steps: dict[str, Act]) -> None:
        super().__init__(steps)
        self.healed = False

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        if self.healed:
            return default
        return super().get(key, default)


@dataclass
class Hop:
    """The scripted sanapati next hop, counting what it really accepted."""

    faults: Faults
    hop: ScriptedHop
    refused_bodies: int = 0

    def heal(self) -> None:
        # Bodies recorded while faulty were never answered 250 (faults at or before
        # the end of the data): they are not deliveries.
        self.refused_bodies = len(self.hop.messages)
        self.faults.healed = True

    def accepted(self) -> list[bytes]:
        if not self.faults.healed:
            return []
        return self.hop.messages[self.refused_bodies :]


@dataclass
class InProcess:
    """One gateway worker on loopback, with its event loop in a thread."""

    config: GatewayConfig
    config_path: Path
    port: int
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    pipeline: Any = None
    thread: threading.Thread | None = None
    _stop: asyncio.Event | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def start(self) -> InProcess:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._ready.wait(20), "gateway did not start"
        if self.error is not None:
            raise self.error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())
        self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            components = build_components(self.config)
            self.pipeline = make_pipeline(self.config, components)
            gateway = Gateway(self.config, self.pipeline)
            await self.pipeline.start()
            await gateway.start()
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await gateway.shutdown(2.0)
        components.close()

    @property
    def store(self) -> QuarantineStore:
        return self.pipeline.store  # type: ignore[no-any-return]

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the gateway's loop (a coroutine function or a plain one)."""

        async def run() -> Any:
            out = fn()
            if asyncio.iscoroutine(out):
                return await out
            return out

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(20)

    def wake_retry(self) -> None:
        self.call(self.pipeline.retry.wake)

    def stop(self) -> None:
        if self._stop is not None and self.thread is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
            self.thread.join(15)


def write_config(tmp: Path, upstream: int, sanapati: int, **extra: Any) -> Path:
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    port = free_port()
    cfg: dict[str, Any] = {
        "listen": [f"127.0.0.1:{port}"],
        "hostname": "gw.test.jakarta.go.id",
        "clients": ["127.0.0.0/8"],
        "upstream": f"smtp://127.0.0.1:{upstream}",
        "routes": {
            "sanapati": {
                "url": f"smtp://127.0.0.1:{sanapati}",
                "tls": "none",  # a loopback test hop without TLS
                "timeout": f"{HOP_TIMEOUT}s",
            }
        },
        "policy": str(policy),
        "quarantine": {
            "database": f"sqlite:///{tmp}/q.sqlite3",
            "spool": str(tmp / "spool"),
            "timeout": "1s",
        },
        "notices": {"from": "postmaster@jakarta.go.id", "officers": ["kepatuhan@jakarta.go.id"]},
        "queue": {"retry": ["60s"], "max_age": "1h", "delay_notice_after": "1h"},
        "inspect": {"processes": 0},
        "shutdown_grace": "2s",
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def hops() -> Iterator[list[ScriptedHop]]:
    made: list[ScriptedHop] = []
    yield made
    for h in made:
        h.close()


@pytest.fixture
def make_hop(hops: list[ScriptedHop]) -> Callable[[dict[str, Act]], Hop]:
    def make(steps: dict[str, Act]) -> Hop:
        faults = Faults(steps)
        h = ScriptedHop(Script(steps=faults))
        hops.append(h)
        return Hop(faults, h)

    return make


@pytest.fixture
def gateways() -> Iterator[list[InProcess]]:
    made: list[InProcess] = []
    yield made
    for g in made:
        g.stop()


@pytest.fixture
def gateway(
    tmp_path: Path, gateways: list[InProcess]
) -> Callable[..., InProcess]:
    def make(upstream: int, sanapati: int, **extra: Any) -> InProcess:
        path = write_config(tmp_path, upstream, sanapati, **extra)
        config = load(path)
        g = InProcess(config, path, config.listen[0][1])
        gateways.append(g)
        return g.start()

    return make


def send(port: int, sender: str, rcpts: list[str], data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo("dinas.jakarta.go.id")
        s.mail(sender)
        for r in rcpts:
            code, text = s.rcpt(r)
            assert code == 250, text
        return s.data(data)


def wait(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def copies(sink: Sink, address: str) -> int:
    """Accepted copies of the message (not notices) for ``address`` at an aiosmtpd sink."""
    return sum(m.rcpt_tos.count(address) for m in sink.messages if m.mail_from not in ("", "<>"))


def notices(sink: Sink, to: str) -> list[bytes]:
    return [m.data for m in sink.messages if m.mail_from in ("", "<>") and to in m.rcpt_tos]


def body_copies(hop: Hop, address: str) -> int:
    """Accepted copies at the scripted hop for ``address`` (it records no envelope per
    body, so the test sends one sanapati recipient per message)."""
    return len(hop.accepted())


# -- the fault matrix: upstream accepts, the sanapati route defers at one step --------

FAULTS = {
    "close-at-greeting": {"greeting": Act(close=True)},
    "4xx-at-MAIL": {"MAIL": Act(reply=b"451 4.3.0 sibuk / busy\r\n")},
    "4xx-at-RCPT": {"RCPT": Act(reply=b"450 4.2.2 kotak penuh / over quota\r\n")},
    "4xx-at-DATA": {"DATA": Act(reply=b"451 4.3.0 nanti / later\r\n")},
    "close-at-DATA": {"DATA": Act(close=True)},
    "4xx-at-end-of-data": {"DOT": Act(reply=b"452 4.3.1 penuh / insufficient storage\r\n")},
    "close-at-end-of-data": {"DOT": Act(close=True)},
    "stall-at-end-of-data": {"DOT": Act(stall=True)},
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_split_route_defers_one_way_and_the_queue_delivers_it_once(
    fault: str,
    sink: Sink,
    make_hop: Callable[[dict[str, Act]], Hop],
    gateway: Callable[..., InProcess],
) -> None:
    hop = make_hop(dict(FAULTS[fault]))
    gw = gateway(sink.port, hop.hop.port)
    code, text = send(gw.port, INTERNAL, [UP, SEC], message(fault))
    assert code == 250, text
    assert b"queued for retry" in text
    assert copies(sink, UP) == 1 and hop.accepted() == []
    [entry] = gw.store.retry_list()
    assert (entry.recipients, entry.route, entry.status) == ((SEC,), "sanapati", RETRY_QUEUED)
    assert entry.sender == INTERNAL and entry.last_error
    # The exact bytes that way must receive: the gateway's Received header included.
    assert gw.store.retry_read(entry.id).startswith(b"Received: from ")

    hop.heal()
    assert gw.store.retry_now(entry.id, time.time()) == 1
    gw.wake_retry()
    assert wait(lambda: gw.store.retry_get(entry.id).status == RETRY_SENT), (
        gw.store.retry_get(entry.id)
    )
    assert len(hop.accepted()) == 1
    assert b"Subject: " + fault.encode() in hop.accepted()[0]
    time.sleep(0.2)  # and nothing more arrives
    assert copies(sink, UP) == 1 and len(hop.accepted()) == 1
    assert gw.store.retry_list() == []
    with pytest.raises(Exception, match="not kept"):
        gw.store.retry_read(entry.id)


def test_nothing_accepted_yet_is_451_and_the_client_retry_delivers_once(
    sink: Sink, make_hop: Callable[[dict[str, Act]], Hop], gateway: Callable[..., InProcess]
) -> None:
    hop = make_hop({"MAIL": Act(reply=b"451 4.3.0 sibuk / busy\r\n")})
    sink.behaviour.data_reply = "451 4.3.0 upstream busy"
    gw = gateway(sink.port, hop.hop.port)
    code, _ = send(gw.port, INTERNAL, [UP, SEC], message("semua tertunda"))
    assert code == 451
    assert gw.store.retry_list() == []
    sink.behaviour.data_reply = None
    hop.heal()
    code, _ = send(gw.port, INTERNAL, [UP, SEC], message("semua tertunda"))
    assert code == 250
    assert copies(sink, UP) == 1 and len(hop.accepted()) == 1
    assert gw.store.retry_list() == []


def test_hold_and_a_deferred_delivery_answer_250_once_and_keep_the_hold(
    sink: Sink, make_hop: Callable[[dict[str, Act]], Hop], gateway: Callable[..., InProcess]
) -> None:
    hop = make_hop({"RCPT": Act(reply=b"451 4.3.0 nanti / later\r\n")})
    gw = gateway(sink.port, hop.hop.port)
    queued_before = counter(metrics.RETRY_QUEUED, "sanapati")
    delivered_before = counter(metrics.RETRIES, "sanapati", "delivered")
    code, text = send(gw.port, INTERNAL, [HELD_RCPT, SEC], message("tahan dan kirim"))
    assert code == 250, text
    assert b"held in quarantine" in text and b"1 recipient(s) queued for retry" in text
    [held] = gw.store.list(status=HELD)
    assert held.recipients == (HELD_RCPT,)
    [entry] = gw.store.retry_list()
    assert entry.recipients == (SEC,)
    assert counter(metrics.RETRY_QUEUED, "sanapati") == queued_before + 1
    size, oldest = scrape(gw.store)
    assert size == 1 and 0 <= oldest < 60
    hop.heal()
    gw.store.retry_now(None, time.time())
    gw.wake_retry()
    assert wait(lambda: len(hop.accepted()) == 1)
    assert wait(lambda: gw.store.retry_get(entry.id).status == RETRY_SENT)
    assert [r.id for r in gw.store.list(status=HELD)] == [held.id]
    assert counter(metrics.RETRIES, "sanapati", "delivered") == delivered_before + 1
    assert scrape(gw.store) == (0, 0.0)


def counter(metric: Any, *labels: str) -> float:
    return float(metric.labels(*labels)._value.get())


def scrape(store: QuarantineStore) -> tuple[float, float]:
    """The retry queue's gauges as the metrics endpoint computes them."""
    families = {f.name: f for f in RetryQueueCollector(lambda: store, owned=False).collect()}
    size = families["milter_retry_queue_entries"].samples[0].value
    oldest = families["milter_retry_queue_oldest_age_seconds"].samples[0].value
    return size, oldest


def test_milter_mode_accepts_with_the_deferred_route_queued_and_removed(
    sink: Sink, make_hop: Callable[[dict[str, Act]], Hop], gateway: Callable[..., InProcess]
) -> None:
    """Behind Postfix: the MTA keeps the upstream recipient, the gateway holds one and
    queues the deferred sanapati one, and both are taken off the MTA's copy."""
    hop = make_hop({"DATA": Act(reply=b"451 4.3.0 nanti / later\r\n")})
    gw = gateway(sink.port, hop.hop.port)
    txn = MilterTransaction(
        macros={"i": "4ABC123"}, client_addr="127.0.0.1", client_name="localhost",
        client_port=0, helo="dinas.jakarta.go.id", mail_from=INTERNAL, mail_args=[],
        rcpts=[UP, HELD_RCPT, SEC], rcpt_args={}, headers=[],
        message=Message.from_content(message("lewat postfix")), smtputf8=False,
    )
    result = gw.call(lambda: MilterHandler(gw.pipeline)(txn))
    assert result.kind == "accept"
    assert sorted(result.delete_rcpts) == sorted([HELD_RCPT, SEC])
    [entry] = gw.store.retry_list()
    assert entry.recipients == (SEC,)
    assert held_of(gw.store) == [(HELD_RCPT,)]
    assert sink.messages == []  # the upstream recipient is the MTA's to deliver
    hop.heal()
    gw.store.retry_now(entry.id, time.time())
    gw.wake_retry()
    assert wait(lambda: len(hop.accepted()) == 1)


def held_of(store: QuarantineStore) -> list[tuple[str, ...]]:
    return [r.recipients for r in store.list(status=HELD)]


def test_one_recipient_deferred_on_the_same_route_is_queued_alone(
    sink: Sink, make_hop: Callable[[dict[str, Act]], Hop], gateway: Callable[..., InProcess]
) -> None:
    """The over-quota case: four recipients taken, one deferred; the client's single 250
    and the queue give every one of them exactly one copy."""
    others = [f"staf{i}@example.org" for i in range(4)]
    quota = "penuh@example.org"
    sink.behaviour.refuse_rcpt[quota] = "452 4.2.2 Mailbox full"
    hop = make_hop({})
    gw = gateway(sink.port, hop.hop.port, queue={"retry": ["0.2s"]})
    code, _ = send(gw.port, INTERNAL, [*others, quota], message("kuota"))
    assert code == 250
    [entry] = gw.store.retry_list()
    assert entry.recipients == (quota,) and entry.route == "upstream"
    assert wait(lambda: gw.store.retry_get(entry.id).attempts >= 2), "retried with backoff"
    del sink.behaviour.refuse_rcpt[quota]
    assert wait(lambda: gw.store.retry_get(entry.id).status == RETRY_SENT)
    assert [copies(sink, a) for a in [*others, quota]] == [1, 1, 1, 1, 1]


# -- final failure, DSN and delay notice -------------------------------------------------


@pytest.mark.parametrize(("sender", "dsn_expected"), [(INTERNAL, True), (EXTERNAL, False)])
def test_a_5xx_at_retry_fails_the_entry_with_a_dsn_to_an_internal_sender_only(
    sender: str,
    dsn_expected: bool,
    sink: Sink,
    make_hop: Callable[[dict[str, Act]], Hop],
    gateway: Callable[..., InProcess],
) -> None:
    hop = make_hop({"RCPT": Act(reply=b"451 4.3.0 nanti / later\r\n")})
    gw = gateway(sink.port, hop.hop.port)
    code, _ = send(gw.port, sender, [UP, SEC], message("gagal akhir", sender))
    assert code == 250
    [entry] = gw.store.retry_list()
    hop.faults["RCPT"] = Act(reply=b"550 5.1.1 tidak dikenal / no such user\r\n")
    gw.store.retry_now(entry.id, time.time())
    gw.wake_retry()
    assert wait(lambda: gw.store.retry_get(entry.id).status == RETRY_FAILED)
    assert "550" in gw.store.retry_get(entry.id).last_error
    if dsn_expected:
        assert wait(lambda: len(notices(sink, sender)) == 1)
        [report] = notices(sink, sender)
        assert b"multipart/report; report-type=delivery-status" in report
        assert b"Action: failed" in report and b"Final-Recipient: rfc822; " + SEC.encode() in report
        assert b"Status: 5.1.1" in report
    else:
        time.sleep(0.5)
        assert notices(sink, sender) == []
    assert hop.accepted() == []


def test_a_delay_notice_goes_once_after_delay_notice_after(
    sink: Sink, make_hop: Callable[[dict[str, Act]], Hop], gateway: Callable[..., InProcess]
) -> None:
    hop = make_hop({"MAIL": Act(reply=b"451 4.3.0 sibuk / busy\r\n")})
    gw = gateway(
        sink.port,
        hop.hop.port,
        queue={"retry": ["0.15s"], "delay_notice_after": "0.4s", "max_age": "1h"},
    )
    code, _ = send(gw.port, INTERNAL, [UP, SEC], message("tertunda lama"))
    assert code == 250
    [entry] = gw.store.retry_list()
    assert wait(lambda: len(notices(sink, INTERNAL)) == 1)
    assert wait(lambda: gw.store.retry_get(entry.id).attempts >= 6), "kept retrying"
    [report] = notices(sink, INTERNAL)
    assert b"Action: delayed" in report and b"Will-Retry-Until: " in report
    assert b"Status: 4.3.0" in report
    assert gw.store.retry_get(entry.id).delay_notified
    hop.heal()
    assert wait(lambda: gw.store.retry_get(entry.id).status == RETRY_SENT)
    assert len(notices(sink, INTERNAL)) == 1 and len(hop.accepted()) == 1


def test_max_age_fails_the_entry_for_good(
    sink: Sink, make_hop: Callable[[dict[str, Act]], Hop], gateway: Callable[..., InProcess]
) -> None:
    hop = make_hop({"DATA": Act(reply=b"451 4.3.0 nanti / later\r\n")})
    gw = gateway(sink.port, hop.hop.port, queue={"retry": ["0.1s"], "max_age": "0.5s"})
    code, _ = send(gw.port, INTERNAL, [UP, SEC], message("kedaluwarsa"))
    assert code == 250
    [entry] = gw.store.retry_list()
    assert wait(lambda: gw.store.retry_get(entry.id).status == RETRY_FAILED)
    assert wait(lambda: len(notices(sink, INTERNAL)) == 1)
    [report] = notices(sink, INTERNAL)
    assert b"Action: failed" in report and b"Status: 5.3.0" in report


# -- the command line ------------------------------------------------------------------


def test_queue_list_show_retry_delete_through_the_cli(
    sink: Sink, make_hop: Callable[[dict[str, Act]], Hop], gateway: Callable[..., InProcess]
) -> None:
    hop = make_hop({"MAIL": Act(reply=b"451 4.3.0 sibuk / busy\r\n")})
    gw = gateway(sink.port, hop.hop.port)
    subject = "Anggaran \x1b[31mmerah"
    assert send(gw.port, INTERNAL, [UP, SEC], message(subject))[0] == 250
    assert send(gw.port, INTERNAL, [UP, SEC], message("kedua"))[0] == 250
    first, second = (e.id for e in gw.store.retry_list())

    # Commands that do not depend on one another run at once (each starts a Python).
    listed, shown, deleted, unknown = milter_all(
        gw.config_path,
        ["queue", "list", "--json"],
        ["queue", "show", first],
        ["queue", "delete", second, "--reason", "penerima salah"],
        ["queue", "retry", "NOSUCH"],
    )
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stdout  # escaped in the JSON text, intact once decoded
    entries = {e["id"]: e for e in json.loads(listed.stdout)}
    assert entries[first]["recipients"] == [SEC] and entries[first]["route"] == "sanapati"
    assert entries[first]["info"]["subject"] == subject
    assert shown.returncode == 0, shown.stderr
    assert "sanapati" in shown.stdout and "451" in shown.stdout and SEC in shown.stdout
    assert "\x1b" not in shown.stdout and "\\x1b[31m" in shown.stdout
    assert deleted.returncode == 0, deleted.stderr
    assert gw.store.retry_get(second).status == "deleted"
    [audit] = [a for a in gw.store.audit_entries() if a.qid == second]
    assert (audit.action, audit.reason) == ("queue-delete", "penerima salah")
    assert gw.store.verify_audit() == []
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1
    assert "NOSUCH" in unknown.stderr and "Traceback" not in unknown.stderr

    hop.heal()
    assert gw.store.retry_get(first).next_attempt > time.time() + 30
    [r] = milter_all(gw.config_path, ["queue", "retry", "--all"])
    assert r.returncode == 0 and "1 entry due now" in r.stdout
    assert gw.store.retry_get(first).next_attempt <= time.time()
    gw.wake_retry()
    assert wait(lambda: gw.store.retry_get(first).status == RETRY_SENT)
    assert len(hop.accepted()) == 1  # the deleted entry never went
    assert gw.store.retry_list() == []


def milter_all(config: Path, *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run ``milter -c CONFIG ...`` commands in parallel; their results in order."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "milter", "-c", str(config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for args in commands
    ]
    out = []
    for p, args in zip(procs, commands, strict=True):
        stdout, stderr = p.communicate(timeout=60)
        out.append(subprocess.CompletedProcess(args, p.returncode, stdout, stderr))
    return out


# -- several workers and nodes: one claim each --------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def quarantine(request: pytest.FixtureRequest, tmp_path: Path) -> QuarantineConfig:
    if request.param == "sqlite":
        return QuarantineConfig(
            database=f"sqlite:///{tmp_path}/q.sqlite3", spool=str(tmp_path / "spool")
        )
    reason = pg_available()
    if reason:
        pytest.skip(reason)
    schema = request.getfixturevalue("pg_schema_factory")()
    return QuarantineConfig(database=pg_url(schema), spool=str(tmp_path / "spool"))


def entry_for(sender: str = INTERNAL, route: str = "upstream") -> RetryEntry:
    now = time.time()
    from milter.envelope import new_id

    return RetryEntry(
        id=new_id(),
        queue_id=new_id(),
        sender=sender,
        recipients=(UP,),
        route=route,
        created_at=now,
        next_attempt=now,
        size=len(message()),
        info={"subject": "Laporan"},
    )


def config_for(tmp: Path, sink: Sink) -> GatewayConfig:
    (tmp / "g.yaml").write_text(yaml.safe_dump({"upstream": f"smtp://127.0.0.1:{sink.port}"}))
    return load(tmp / "g.yaml")


def test_two_workers_claiming_at_once_deliver_each_entry_once(
    quarantine: QuarantineConfig, sink: Sink, tmp_path: Path
) -> None:
    config = config_for(tmp_path, sink)
    stores = [open_store(quarantine), open_store(quarantine)]
    entries = [entry_for() for _ in range(6)]
    for e in entries:
        stores[0].retry_add(e, message(e.id))

    async def scenario() -> None:
        deliverers = [Deliverer(config), Deliverer(config)]
        calls = StoreCalls(5.0)
        queues = [
            RetryQueue(config, (lambda s=s: s), d, calls, autostart=False)  # type: ignore[misc]
            for s, d in zip(stores, deliverers, strict=True)
        ]
        await asyncio.gather(*(q.run_once() for q in queues), *(q.run_once() for q in queues))
        for d in deliverers:
            await d.close()
        calls.shutdown()

    try:
        asyncio.run(scenario())
        assert sorted(m.data.split(b"Subject: ")[1][:12] for m in sink.messages) == sorted(
            e.id.encode()[:12] for e in entries
        )
        assert {stores[1].retry_get(e.id).status for e in entries} == {RETRY_SENT}
        assert {stores[1].retry_get(e.id).attempts for e in entries} == {1}
    finally:
        for s in stores:
            s.close()


KILLED_WORKER = """
import asyncio, sys
from milter import metrics
from milter.app.retryqueue import RetryQueue, StoreCalls, backoff
from milter.config import load
from milter.delivery import Deliverer
from milter.message import Message
from milter.metrics import RetryQueueCollector
from milter.milterproto.frontend import MilterHandler
from milter.milterproto.types import MilterTransaction
from milter.quarantine.store import open_store

config = load(sys.argv[1])
store = open_store(config.quarantine)

async def main() -> None:
    q = RetryQueue(config, lambda: store, Deliverer(config), StoreCalls(5.0), autostart=False)
    await q.run_once()

asyncio.run(main())
"""


def test_a_worker_killed_mid_retry_leaves_the_entry_to_the_lease(
    quarantine: QuarantineConfig,
    sink: Sink,
    make_hop: Callable[[dict[str, Act]], Hop],
    tmp_path: Path,
) -> None:
    hop = make_hop({"DOT": Act(stall=True)})
    cfg = {
        "upstream": f"smtp://127.0.0.1:{sink.port}",
        "routes": {"sanapati": {"url": f"smtp://127.0.0.1:{hop.hop.port}", "tls": "none",
                                "timeout": "30s"}},
        "quarantine": {"database": quarantine.database, "spool": quarantine.spool},
    }
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(cfg))
    config = load(path)
    store = open_store(quarantine)
    entry = entry_for(route="sanapati")
    store.retry_add(entry, message("dibunuh"))
    worker = subprocess.Popen([sys.executable, "-c", KILLED_WORKER, str(path)], cwd=ROOT)
    try:
        assert hop.hop.wait(lambda: len(hop.hop.messages) == 1, 20), "worker never sent"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    claimed = store.retry_get(entry.id)
    assert claimed.status == RETRY_SENDING and claimed.attempts == 1
    hop.heal()

    async def scenario(now: float) -> int:
        d = Deliverer(config)
        calls = StoreCalls(5.0)
        q = RetryQueue(config, lambda: store, d, calls, autostart=False, clock=lambda: now)
        try:
            return await q.run_once()
        finally:
            await d.close()
            calls.shutdown()

    try:
        assert asyncio.run(scenario(time.time())) == 0, "the dead worker's claim still holds"
        assert asyncio.run(scenario(time.time() + 901)) == 1, "due again after the lease"
        done = store.retry_get(entry.id)
        assert (done.status, done.attempts) == (RETRY_SENT, 2)
        assert len(hop.accepted()) == 1
    finally:
        store.close()


# -- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "delays"),
    [
        ({"retry": {"base": "5m", "max": "1h"}}, (300.0, 600.0, 1200.0, 2400.0, 3600.0)),
        ({"retry": ["1m", "10m"]}, (60.0, 600.0)),
        ({"retry": "2m"}, (120.0,)),
    ],
)
def test_queue_retry_schedule_from_the_configuration(
    tmp_path: Path, spec: dict[str, Any], delays: tuple[float, ...]
) -> None:
    (tmp_path / "g.yaml").write_text(
        yaml.safe_dump({"queue": {**spec, "max_age": "2d", "delay_notice_after": "3h"},
                        "quarantine": {"timeout": "2s"}})
    )
    config = load(tmp_path / "g.yaml")
    assert config.queue.retry == delays
    assert (config.queue.max_age, config.queue.delay_notice_after) == (2 * 86400.0, 3 * 3600.0)
    assert config.quarantine.timeout == 2.0
    assert [backoff(delays, n) for n in (1, len(delays), len(delays) + 5)] == [
        delays[0], delays[-1], delays[-1]
    ]


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ({"queue": {"retry": {"max": "1h"}}}, "queue.retry"),
        ({"queue": {"retry": []}}, "queue.retry"),
        ({"queue": {"retry": {"base": "2h", "max": "1h"}}}, "queue.retry"),
        ({"queue": {"every": "5m"}}, "queue.every"),
        ({"quarantine": {"timeout": 0}}, "quarantine.timeout"),
    ],
)
def test_a_bad_queue_configuration_names_its_key(
    tmp_path: Path, spec: dict[str, Any], where: str
) -> None:
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError) as exc:
        load(tmp_path / "g.yaml")
    assert where in str(exc.value)
