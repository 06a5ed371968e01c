"""The durable notice outbox: nothing lost when the next hop refuses, nothing sent twice
when workers or nodes share the database, the sender's limit shared by all of them."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from milter import metrics
from milter.app.notify import NoticeOutbox
from milter.config import QuarantineConfig, load
from milter.delivery import Deliverer, DeliveryResult
from milter.message import Message
from milter.quarantine.store import (
    NOTICE_FAILED,
    NOTICE_QUEUED,
    NOTICE_SENT,
    QuarantineStore,
    open_store,
)
from tests.conftest import Sink
from tests.quarantine.conftest import pg_available, pg_schema_factory, pg_url

__all__ = ["pg_schema_factory"]  # the quarantine tests' fixture, used here too

NOTICE = (
    b"From: postmaster@jakarta.go.id\r\nTo: kepatuhan@jakarta.go.id\r\nSubject: x\r\n\r\nisi\r\n"
)


@pytest.fixture(params=["sqlite", "postgres"])
def opener(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], QuarantineStore]]:
    """Opens another connection to one shared quarantine database, as a worker does."""
    if request.param == "sqlite":
        cfg = QuarantineConfig(
            database=f"sqlite:///{tmp_path}/q.sqlite3", spool=str(tmp_path / "spool")
        )
    else:
        reason = pg_available()
        if reason:
            pytest.skip(reason)
        schema = request.getfixturevalue("pg_schema_factory")()
        cfg = QuarantineConfig(database=pg_url(schema), spool=str(tmp_path / "spool"))
    opened: list[QuarantineStore] = []

    def open_one() -> QuarantineStore:
        store = open_store(cfg)
        opened.append(store)
        return store

    yield open_one
    for s in opened:
        s.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _counter(kind: str, result: str) -> float:
    counter = getattr(metrics, "NOTICES", None)
    if counter is None:
        return 0.0
    return float(counter.labels(kind, result)._value.get())


def test_a_refused_notice_is_retried_and_arrives_once(
    opener: Callable[[], QuarantineStore], sink: Sink, tmp_path: Path
) -> None:
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({"upstream": f"smtp://127.0.0.1:{sink.port}"}))
    deliverer = Deliverer(load(tmp_path / "g.yaml"))
    store = opener()
    clock = Clock()

    async def send(rcpts: list[str], data: bytes) -> DeliveryResult:
        return await deliverer.send("upstream", "", rcpts, Message.from_content(data))

    outbox = NoticeOutbox(lambda: store, send, retry=(60.0, 300.0), give_up=3600.0, clock=clock,
                         autostart=False)
    sent_before = _counter("officer-alert", "sent")

    async def scenario() -> None:
        await outbox.submit("officer-alert", "budi@jakarta.go.id", ["kepatuhan@jakarta.go.id"],
                            NOTICE, limit=None)
        [row] = store.outbox()
        assert row.status == NOTICE_QUEUED and row.attempts == 0   # durable before any try
        sink.behaviour.data_reply = "451 4.3.0 sibuk / busy"
        assert await outbox.run_once() == 1
        [row] = store.outbox()
        assert (row.status, row.attempts, row.next_attempt) == (NOTICE_QUEUED, 1, clock.now + 60)
        assert "451" in row.last_error
        assert await outbox.run_once() == 0, "not due before its delay"
        clock.now += 60
        sink.behaviour.data_reply = "554 5.7.1 ditolak / refused"
        assert await outbox.run_once() == 1
        [row] = store.outbox()
        assert (row.attempts, row.next_attempt) == (2, clock.now + 300)
        clock.now += 300
        sink.behaviour.data_reply = None
        assert await outbox.run_once() == 1
        clock.now += 3600
        assert await outbox.run_once() == 0
        await deliverer.close()

    asyncio.run(scenario())
    [row] = store.outbox()
    assert (row.status, row.attempts) == (NOTICE_SENT, 3)
    assert [m.rcpt_tos for m in sink.messages] == [["kepatuhan@jakarta.go.id"]]
    assert sink.messages[0].mail_from in ("", "<>")
    if getattr(metrics, "NOTICES", None) is not None:
        assert _counter("officer-alert", "sent") == sent_before + 1


def test_a_notice_never_taken_is_given_up_with_a_log_line(
    opener: Callable[[], QuarantineStore], caplog: pytest.LogCaptureFixture
) -> None:
    store = opener()
    clock = Clock()
    calls: list[list[str]] = []

    async def refuse(rcpts: list[str], data: bytes) -> DeliveryResult:
        calls.append(rcpts)
        return DeliveryResult(False, code=421, message="4.3.2 pergi / gone",
                              refused={r: (421, "gone") for r in rcpts})

    outbox = NoticeOutbox(lambda: store, refuse, retry=(60.0,), give_up=100.0, clock=clock,
                         autostart=False)

    async def scenario() -> None:
        await outbox.submit("dsn", "budi@jakarta.go.id", ["budi@jakarta.go.id"], NOTICE, limit=5)
        for _ in range(3):
            await outbox.run_once()
            clock.now += 60

    with caplog.at_level("INFO"):
        asyncio.run(scenario())
    [row] = store.outbox()
    assert row.status == NOTICE_FAILED and row.attempts == 3 and len(calls) == 3
    assert any(r.getMessage() == "notice-given-up" for r in caplog.records)


def test_two_workers_never_send_one_notice_twice(opener: Callable[[], QuarantineStore]) -> None:
    """Two workers (each its own connection, as two processes or two nodes have),
    working the same outbox at the same time: every notice goes exactly once."""
    first = opener()
    for i in range(40):
        first.enqueue_notice("officer-alert", "budi@jakarta.go.id", [f"o{i}@jakarta.go.id"],
                             NOTICE, now=time.time())
    sent: list[str] = []
    lock = threading.Lock()

    async def send(rcpts: list[str], data: bytes) -> DeliveryResult:
        await asyncio.sleep(0.002)
        with lock:
            sent.extend(rcpts)
        return DeliveryResult(True, tuple(rcpts))

    def worker(store: QuarantineStore) -> None:
        outbox = NoticeOutbox(lambda: store, send, retry=(60.0,), autostart=False)

        async def drain() -> None:
            while await outbox.run_once():
                pass

        asyncio.run(drain())

    stores = [opener(), opener()]
    threads = [threading.Thread(target=worker, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(sent) == sorted(f"o{i}@jakarta.go.id" for i in range(40))
    assert {n.status for n in first.outbox()} == {NOTICE_SENT}


def test_concurrent_claims_are_disjoint(opener: Callable[[], QuarantineStore]) -> None:
    stores = [opener() for _ in range(4)]
    now = time.time()
    for i in range(60):
        stores[0].enqueue_notice("dsn", "a@jakarta.go.id", [f"r{i}@x.test"], NOTICE, now=now)
    got: list[list[int]] = [[] for _ in stores]
    barrier = threading.Barrier(len(stores))

    def claim(i: int) -> None:
        barrier.wait()
        while batch := stores[i].claim_notices(now + 1, limit=5):
            got[i].extend(n.id for n in batch)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [x for g in got for x in g]
    assert len(ids) == 60 and len(set(ids)) == 60


def test_a_dead_workers_claim_expires_and_a_lost_claim_cannot_settle(
    opener: Callable[[], QuarantineStore],
) -> None:
    store, other = opener(), opener()
    now = time.time()
    nid = store.enqueue_notice("dsn", "a@jakarta.go.id", ["a@jakarta.go.id"], NOTICE, now=now)
    [mine] = store.claim_notices(now, lease=600)
    assert other.claim_notices(now + 10, lease=600) == []
    [theirs] = other.claim_notices(now + 601, lease=600)   # the first worker died
    assert theirs.id == nid and theirs.attempts == 2
    assert not store.notice_sent(nid, mine.claim, now + 602), "the dead claim settles nothing"
    assert other.notice_sent(nid, theirs.claim, now + 602)


def test_the_sender_limit_holds_across_workers(opener: Callable[[], QuarantineStore]) -> None:
    a, b = opener(), opener()
    now = time.time()

    def queue(store: QuarantineStore, at: float) -> int | None:
        return store.enqueue_notice("quarantine-notice", "budi@jakarta.go.id", ["budi@x"],
                                    NOTICE, now=at, rate_key="budi@jakarta.go.id",
                                    rate_limit=3, window=3600)

    results = [queue(a, now), queue(b, now), queue(a, now), queue(b, now), queue(a, now)]
    assert [r is not None for r in results] == [True, True, True, False, False]
    other = a.enqueue_notice("quarantine-notice", "ani@jakarta.go.id", ["ani@x"], NOTICE,
                             now=now, rate_key="ani@jakarta.go.id", rate_limit=3)
    assert other is not None
    assert queue(b, now + 3601) is not None, "a new window"


def test_an_old_database_gets_the_outbox_table(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:   # what an earlier version created
        db.execute("CREATE TABLE audit (seq INTEGER PRIMARY KEY, at REAL NOT NULL, actor TEXT "
                   "NOT NULL, action TEXT NOT NULL, qid TEXT NOT NULL, reason TEXT NOT NULL, "
                   "prev_hash TEXT NOT NULL, hash TEXT NOT NULL)")
    store = open_store(QuarantineConfig(database=f"sqlite:///{path}", spool=str(tmp_path / "s")))
    try:
        assert store.enqueue_notice("dsn", "a@b", ["a@b"], NOTICE, now=time.time()) == 1
    finally:
        store.close()


def test_the_gateway_notifier_queues_before_sending(tmp_path: Path, sink: Sink) -> None:
    """Through the notifier as the gateway builds it: the notice is a row first."""
    from milter.app.notify import GatewayNotifier

    cfg: dict[str, Any] = {
        "upstream": f"smtp://127.0.0.1:{sink.port}",
        "quarantine": {"database": f"sqlite:///{tmp_path}/q.sqlite3", "spool": str(tmp_path)},
        "notices": {"officers": ["kepatuhan@jakarta.go.id"], "retry": ["50ms"]},
    }
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(cfg))
    config = load(tmp_path / "g.yaml")
    assert config.notices.retry == (0.05,)

    async def scenario() -> None:
        notifier = GatewayNotifier(config, None, Deliverer(config))
        sink.behaviour.data_reply = "451 4.3.0 sibuk / busy"
        await notifier.outbox.submit("officer-alert", "a@jakarta.go.id",
                                     ["kepatuhan@jakarta.go.id"], NOTICE, limit=None)
        # Wait for the refused attempt itself, then check the refusal left nothing.
        for _ in range(200):
            rows = await asyncio.to_thread(notifier._outbox_store().outbox)
            if rows and rows[0].last_error:  # the refusal is recorded
                break
            await asyncio.sleep(0.02)
        assert rows and rows[0].last_error and rows[0].status != NOTICE_SENT
        assert sink.messages == []
        sink.behaviour.data_reply = None
        for _ in range(100):
            if sink.messages:
                break
            await asyncio.sleep(0.05)
        await notifier.close()
        await notifier.deliverer.close()

    asyncio.run(scenario())
    assert len(sink.messages) == 1
    store = open_store(config.quarantine)
    try:
        [row] = store.outbox()
        assert row.status == NOTICE_SENT and row.attempts >= 2
    finally:
        store.close()
