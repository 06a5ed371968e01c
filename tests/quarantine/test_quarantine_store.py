"""The quarantine store's contract, run against both back-ends."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from milter.quarantine.sqlite import ORPHAN_GRACE, SqliteStore
from milter.quarantine.store import (
    DELETED,
    EXPIRED,
    HELD,
    RELEASED,
    NotFound,
    QuarantineError,
    QuarantineRecord,
    QuarantineStore,
    StateConflict,
)

MESSAGE = (
    b"From: Budi <budi@dinas.jakarta.go.id>\r\nTo: x@gmail.com\r\n"
    b"Subject: Nota RAHASIA\r\nMessage-ID: <1@dinas>\r\n\r\nIsi nota.\r\n\x00\xff binary tail\r\n"
)


def record(**kw: object) -> QuarantineRecord:
    base: dict[str, object] = {
        "id": "",
        "received_at": time.time(),
        "client": "10.1.2.3",
        "sender": "budi@dinas.jakarta.go.id",
        "recipients": ("x@gmail.com", "y@yahoo.com"),
        "subject": "Nota RAHASIA",
        "size": len(MESSAGE),
        "classification": "RAHASIA",
        "labels": ("Rahasia",),
        "rules": ("rahasia-keluar",),
        "clauses": ("2.c", "3.b"),
        "findings": {"labels": [{"raw": "Rahasia", "source": "subject"}]},
        "route": "upstream",
        "queue_id": "Q123",
    }
    base.update(kw)
    return QuarantineRecord(**base)  # type: ignore[arg-type]


def test_put_get_read_roundtrip(store: QuarantineStore) -> None:
    rec = record()
    qid = store.put(MESSAGE, rec)
    assert len(qid) >= 12 and qid.isalnum()
    got = store.get(qid)
    assert got is not None
    assert got.status == HELD
    assert got.recipients == rec.recipients
    assert got.rules == rec.rules and got.clauses == rec.clauses
    assert got.findings == rec.findings
    assert got.received_at == pytest.approx(rec.received_at)
    assert store.read(qid) == MESSAGE
    assert store.get("NOSUCHID") is None
    with pytest.raises(NotFound):
        store.read("NOSUCHID")


def test_put_keeps_given_id_and_refuses_a_duplicate(store: QuarantineStore) -> None:
    assert store.put(MESSAGE, record(id="BCD123")) == "BCD123"
    with pytest.raises(QuarantineError):
        store.put(b"other", record(id="BCD123"))
    assert store.read("BCD123") == MESSAGE


def test_release_only_once(store: QuarantineStore) -> None:
    qid = store.put(MESSAGE, record())
    rec = store.transition(qid, RELEASED, "officer", "checked with sender")
    assert rec.status == RELEASED and rec.updated_at is not None
    with pytest.raises(StateConflict) as info:
        store.transition(qid, RELEASED, "officer2", "again")
    assert info.value.status == RELEASED
    assert store.read(qid) == MESSAGE
    actions = [(e.action, e.actor) for e in store.audit_entries() if e.qid == qid]
    assert actions == [("quarantine", "gateway"), ("release", "officer")]


def test_concurrent_release_has_one_winner(backend: Any) -> None:
    store = backend.open()
    qid = store.put(MESSAGE, record())
    stores = [backend.open() for _ in range(4)]
    wins: list[str] = []
    conflicts: list[str] = []

    def release(s: QuarantineStore, actor: str) -> None:
        try:
            s.transition(qid, RELEASED, actor, "race")
            wins.append(actor)
        except StateConflict:
            conflicts.append(actor)

    threads = [threading.Thread(target=release, args=(s, f"o{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(conflicts) == 3
    assert store.verify_audit() == []


def test_delete_discards_bytes(store: QuarantineStore) -> None:
    qid = store.put(MESSAGE, record())
    store.transition(qid, DELETED, "officer", "spam")
    with pytest.raises(NotFound):
        store.read(qid)
    rec = store.get(qid)
    assert rec is not None and rec.status == DELETED
    with pytest.raises(StateConflict):
        store.transition(qid, RELEASED, "officer", "too late")


def test_list_filters(store: QuarantineStore) -> None:
    now = time.time()
    a = store.put(MESSAGE, record(received_at=now - 100))
    b = store.put(
        MESSAGE,
        record(received_at=now - 50, sender="Ani@Bapenda.Jakarta.go.id", rules=("nik-massal",)),
    )
    c = store.put(MESSAGE, record(received_at=now - 10))
    store.transition(c, RELEASED, "o", "ok")
    assert [r.id for r in store.list()] == [a, b, c]
    assert [r.id for r in store.list(status=HELD)] == [a, b]
    assert [r.id for r in store.list(since=now - 60)] == [b, c]
    assert [r.id for r in store.list(sender="ani@bapenda.jakarta.go.id")] == [b]
    assert [r.id for r in store.list(sender="@dinas.jakarta.go.id")] == [a, c]
    assert [r.id for r in store.list(rule="nik-massal")] == [b]
    assert [r.id for r in store.list(rule="rahasia-keluar", status=RELEASED)] == [c]


def test_expire_by_retention(store: QuarantineStore) -> None:
    now = time.time()
    old = store.put(MESSAGE, record(received_at=now - 40 * 86400))
    young = store.put(MESSAGE, record(received_at=now - 3600))
    released_old = store.put(MESSAGE, record(received_at=now - 40 * 86400))
    store.transition(released_old, RELEASED, "o", "fine")
    assert store.expire(now, 30 * 86400) == [old]
    assert store.get(old).status == EXPIRED  # type: ignore[union-attr]
    assert store.get(young).status == HELD  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        store.read(old)
    with pytest.raises(NotFound):  # past retention, the released copy is not kept either
        store.read(released_old)
    assert store.read(young) == MESSAGE
    assert store.expire(now, 30 * 86400) == []
    assert store.verify_audit() == []


def test_threads_share_one_store(store: QuarantineStore) -> None:
    ids: list[str] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        for i in range(10):
            qid = store.put(MESSAGE + str((n, i)).encode(), record())
            with lock:
                ids.append(qid)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 60
    assert len(store.list()) == 60
    assert len(store.audit_entries()) == 60
    assert store.verify_audit() == []


def test_audit_append_and_verify(store: QuarantineStore) -> None:
    qid = store.put(MESSAGE, record())
    entry = store.append_audit("siti", "export", qid, "for the inquiry")
    assert entry.prev_hash == store.audit_entries()[0].hash
    store.transition(qid, RELEASED, "siti", "approved")
    assert [e.seq for e in store.audit_entries()] == [1, 2, 3]
    assert store.verify_audit() == []


def test_sqlite_permissions(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db" / "q.sqlite3", tmp_path / "spool")
    try:
        qid = store.put(MESSAGE, record())
        mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
        assert mode(tmp_path / "db") == 0o700
        assert mode(tmp_path / "spool") == 0o700
        assert mode(tmp_path / "spool" / "msg") == 0o700
        assert mode(tmp_path / "db" / "q.sqlite3") == 0o600
        assert mode(tmp_path / "db" / "q.sqlite3-wal") == 0o600
        assert mode(tmp_path / "spool" / "msg" / f"{qid}.eml") == 0o600
        journal = store._db.execute("PRAGMA journal_mode").fetchone()[0]
        assert journal == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        store.close()


def test_sqlite_orphans_swept_after_grace(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "q.sqlite3", tmp_path / "spool")
    try:
        qid = store.put(MESSAGE, record())
        orphan = tmp_path / "spool" / "msg" / "ORPHAN1.eml"
        orphan.write_bytes(b"x")
        stale_tmp = tmp_path / "spool" / "tmp" / "ABC.1.tmp"
        stale_tmp.write_bytes(b"x")
        store.expire(time.time(), 86400)
        assert orphan.exists() and stale_tmp.exists()  # could be a write in flight
        store.expire(time.time() + ORPHAN_GRACE + 60, 86400 * 365)
        assert not orphan.exists() and not stale_tmp.exists()
        assert store.read(qid) == MESSAGE
    finally:
        store.close()
