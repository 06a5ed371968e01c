"""Crash safety of ``put`` and tamper detection in the audit chain, on both back-ends.

Crashes are real: a child process is killed with SIGKILL at a named step inside
``put``; tampering is done with the database's own client, as an intruder would.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from milter.config import QuarantineConfig
from milter.quarantine.postgres import PostgresStore
from milter.quarantine.sqlite import SqliteStore
from milter.quarantine.store import (
    RELEASED,
    STEP_COMMITTED,
    STEP_SPOOL_RENAMED,
    STEP_SPOOL_WRITTEN,
    QuarantineRecord,
    QuarantineStore,
    StoreUnavailable,
    audit_hash,
    open_store,
)

CHILD = r"""
import os, signal, sys, time
from milter.config import QuarantineConfig
from milter.quarantine.store import QuarantineRecord, open_store

database, spool, step, qid = sys.argv[1:5]

def hook(name):
    if name == step:
        os.kill(os.getpid(), signal.SIGKILL)

store = open_store(QuarantineConfig(database=database, spool=spool), step_hook=hook)
data = b"Subject: crash test\r\n\r\n" + b"x" * 100000 + b"\r\n"
store.put(data, QuarantineRecord(
    id=qid, received_at=time.time(), client="10.0.0.1", sender="a@jakarta.go.id",
    recipients=("b@gmail.com",), subject="crash test", size=len(data),
    rules=("r1",), findings={"k": 1}))
print("survived")
"""


def run_child(backend: Any, step: str, qid: str) -> subprocess.CompletedProcess[str]:
    cfg = backend.config
    return subprocess.run(
        [sys.executable, "-c", CHILD, cfg.database, cfg.spool, step, qid],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("step", [STEP_SPOOL_WRITTEN, STEP_SPOOL_RENAMED])
def test_kill_before_commit_leaves_no_record(backend: Any, step: str) -> None:
    proc = run_child(backend, step, "CRASHBEFORE1")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "survived" not in proc.stdout
    store = backend.open()
    assert store.get("CRASHBEFORE1") is None
    assert store.list() == []
    assert store.audit_entries() == []
    assert store.verify_audit() == []
    spool = Path(backend.config.spool)
    if backend.name == "sqlite":
        left = list((spool / ("msg" if step == STEP_SPOOL_RENAMED else "tmp")).iterdir())
        assert len(left) == 1  # the crash really happened between the two writes
    # Whatever bytes reached the spool are orphans, swept once surely not in flight.
    store.expire(time.time() + 7200, 86400)
    if backend.name == "sqlite":
        assert list((spool / "msg").iterdir()) == []
        assert list((spool / "tmp").iterdir()) == []


def test_kill_after_commit_leaves_complete_record(backend: Any) -> None:
    proc = run_child(backend, STEP_COMMITTED, "CRASHAFTER1")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = backend.open()
    rec = store.get("CRASHAFTER1")
    assert rec is not None
    assert rec.recipients == ("b@gmail.com",) and rec.findings == {"k": 1}
    data = store.read("CRASHAFTER1")
    assert len(data) == rec.size and data.startswith(b"Subject: crash test")
    assert [e.action for e in store.audit_entries()] == ["quarantine"]
    assert store.verify_audit() == []
    store.expire(time.time() + 7200, 86400 * 365)
    assert store.read("CRASHAFTER1") == data  # a committed message is never an orphan


def test_child_without_crash_survives(backend: Any) -> None:
    proc = run_child(backend, "no-such-step", "NOCRASH1")
    assert proc.returncode == 0 and "survived" in proc.stdout, proc.stderr
    assert backend.open().get("NOCRASH1") is not None


# -- tampering ---------------------------------------------------------------------------


def tamper(backend: Any, *statements: str) -> None:
    if backend.name == "sqlite":
        path = backend.config.database[len("sqlite:///") :]
        db = sqlite3.connect(path)
        with db:
            for sql in statements:
                db.execute(sql)
        db.close()
    else:
        with psycopg.connect(backend.config.database) as conn:
            for sql in statements:
                conn.execute(sql)


def seeded(backend: Any) -> tuple[Any, list[str]]:
    store = backend.open()
    ids = []
    for n in range(3):
        data = f"Subject: m{n}\r\n\r\nbody\r\n".encode()
        ids.append(
            store.put(
                data,
                QuarantineRecord(
                    id="",
                    received_at=time.time(),
                    client="c",
                    sender="s@jakarta.go.id",
                    recipients=("r@gmail.com",),
                    subject=f"m{n}",
                    size=len(data),
                    rules=("r",),
                ),
            )
        )
    store.transition(ids[0], RELEASED, "siti", "approved by head of agency")
    assert store.verify_audit() == []
    return store, ids


def test_edited_entry_detected(backend: Any) -> None:
    store, _ = seeded(backend)
    tamper(backend, "UPDATE audit SET reason = 'nothing to see' WHERE seq = 4")
    problems = store.verify_audit()
    assert any("entry 4" in p and "edited" in p for p in problems), problems


def test_edited_actor_detected(backend: Any) -> None:
    store, _ = seeded(backend)
    tamper(backend, "UPDATE audit SET actor = 'someone-else' WHERE seq = 4")
    assert store.verify_audit() != []


def test_deleted_middle_entry_detected(backend: Any) -> None:
    store, _ = seeded(backend)
    tamper(backend, "DELETE FROM audit WHERE seq = 2")
    problems = store.verify_audit()
    assert any("entry 3" in p for p in problems), problems


def test_reordered_entries_detected(backend: Any) -> None:
    store, _ = seeded(backend)
    # Swap the contents of entries 2 and 3 (keeping their sequence numbers).
    tamper(
        backend,
        "UPDATE audit SET seq = -2 WHERE seq = 2",
        "UPDATE audit SET seq = 2 WHERE seq = 3",
        "UPDATE audit SET seq = 3 WHERE seq = -2",
    )
    assert store.verify_audit() != []


def test_truncated_tail_detected(backend: Any) -> None:
    store, ids = seeded(backend)
    tamper(backend, "DELETE FROM audit WHERE seq = 4")
    problems = store.verify_audit()
    assert problems == [f"record {ids[0]}: status released but last audited action is quarantine"]


def test_status_forged_without_audit_detected(backend: Any) -> None:
    store, ids = seeded(backend)
    tamper(backend, f"UPDATE quarantine SET status = 'released' WHERE id = '{ids[1]}'")
    assert any(ids[1] in p for p in store.verify_audit())


def test_rehashed_forgery_still_breaks_the_next_link(backend: Any) -> None:
    store, _ = seeded(backend)
    e = store.audit_entries()[1]
    forged = audit_hash(
        e.prev_hash,
        seq=e.seq,
        at=e.at,
        actor="mallory",
        action=e.action,
        qid=e.qid,
        reason=e.reason,
    )
    tamper(backend, f"UPDATE audit SET actor = 'mallory', hash = '{forged}' WHERE seq = 2")
    problems = store.verify_audit()
    assert any("entry 3" in p and "previous" in p for p in problems), problems


WRITER = r"""
import sys, time
from milter.config import QuarantineConfig
from milter.quarantine.store import QuarantineRecord, open_store

database, spool, tag = sys.argv[1:4]
store = open_store(QuarantineConfig(database=database, spool=spool))
for i in range(15):
    data = f"Subject: {tag} {i}\r\n\r\nbody\r\n".encode()
    store.put(data, QuarantineRecord(
        id="", received_at=time.time(), client="c", sender=f"{tag}@jakarta.go.id",
        recipients=("r@gmail.com",), subject=f"{tag} {i}", size=len(data)))
store.close()
"""


def test_processes_share_one_chain(backend: Any) -> None:
    """Several gateway workers (processes) append to one audit chain without forking it."""
    cfg = backend.config
    backend.open().close()  # create the schema before the writers race
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, cfg.database, cfg.spool, f"w{n}"])
        for n in range(3)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    store = backend.open()
    assert len(store.list()) == 45
    assert [e.seq for e in store.audit_entries()] == list(range(1, 46))
    assert store.verify_audit() == []
    for rec in store.list(sender="w2@jakarta.go.id"):
        assert store.read(rec.id).startswith(f"Subject: {rec.subject}\r\n".encode())


def test_open_store_by_url(tmp_path: Path) -> None:
    store = open_store(
        QuarantineConfig(database=f"sqlite:///{tmp_path}/a.db", spool=str(tmp_path / "s"))
    )
    assert isinstance(store, SqliteStore) and store.path == tmp_path / "a.db"
    store.close()
    with pytest.raises(StoreUnavailable):
        open_store(QuarantineConfig(database="mysql://x/y"))
    assert issubclass(PostgresStore, QuarantineStore)
