"""The embedded quarantine: message bytes in a spool directory, records in SQLite.

Order of a ``put`` is what makes it crash safe: the bytes go to a temporary file that
is fsync'd, linked to its final name (link refuses to overwrite, unlike rename), and
the directory fsync'd; only then is the row committed (WAL, ``synchronous=FULL``, so
the commit itself is on disk). A crash before the commit leaves a spool file nobody
refers to, which ``expire`` removes once it is old enough not to be a write in flight.

One connection serves every thread behind a lock: quarantining is rare next to
delivering, and SQLite serialises writers anyway. Other processes (more workers, the
CLI) coordinate through SQLite's own locking (``BEGIN IMMEDIATE`` and a busy timeout).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from milter.quarantine.store import (
    ACTION_FOR_STATUS,
    DELETED,
    EXPIRED,
    GENESIS,
    HELD,
    STEP_COMMITTED,
    STEP_SPOOL_RENAMED,
    STEP_SPOOL_WRITTEN,
    AuditEntry,
    NotFound,
    QuarantineError,
    QuarantineRecord,
    QuarantineStore,
    StateConflict,
    StepHook,
    StoreUnavailable,
    audit_hash,
    chain_problems,
    check_status,
    decode_list,
    encode_list,
    matches,
    record_for_put,
    status_problems,
)

# A spool file without a row is only an orphan once no ``put`` can still be committing it.
ORPHAN_GRACE = 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    id TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    client TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    subject TEXT NOT NULL,
    size INTEGER NOT NULL,
    classification TEXT,
    labels TEXT NOT NULL,
    rules TEXT NOT NULL,
    clauses TEXT NOT NULL,
    findings TEXT NOT NULL,
    status TEXT NOT NULL,
    route TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    updated_at REAL
);
CREATE INDEX IF NOT EXISTS quarantine_status ON quarantine (status, received_at);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    qid TEXT NOT NULL,
    reason TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
"""

_COLUMNS = (
    "id, received_at, client, sender, recipients, subject, size, classification, labels, "
    "rules, clauses, findings, status, route, queue_id, updated_at"
)


def _private_dir(path: Path) -> None:
    """Create ``path`` (and parents) so only the service user can enter it."""
    if not path.is_dir():
        os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _row_to_record(row: sqlite3.Row | tuple[Any, ...]) -> QuarantineRecord:
    return QuarantineRecord(
        id=row[0],
        received_at=row[1],
        client=row[2],
        sender=row[3],
        recipients=decode_list(row[4]),
        subject=row[5],
        size=row[6],
        classification=row[7],
        labels=decode_list(row[8]),
        rules=decode_list(row[9]),
        clauses=decode_list(row[10]),
        findings=json.loads(row[11] or "{}"),
        status=row[12],
        route=row[13],
        queue_id=row[14],
        updated_at=row[15],
    )


class SqliteStore(QuarantineStore):
    """Quarantine for one node: ``path`` is the SQLite file, ``spool`` the message directory."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        spool: str | os.PathLike[str],
        *,
        step_hook: StepHook | None = None,
        busy_timeout: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.spool = Path(spool)
        self.messages = self.spool / "msg"
        self.tmp = self.spool / "tmp"
        self._hook = step_hook
        self._lock = threading.RLock()
        try:
            if not self.path.parent.is_dir():
                _private_dir(self.path.parent)
            for d in (self.spool, self.messages, self.tmp):
                _private_dir(d)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.close(fd)
            os.chmod(self.path, 0o600)
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open quarantine {self.path}: {exc}") from exc

    # -- plumbing ---------------------------------------------------------------------

    def _step(self, name: str) -> None:
        if self._hook is not None:
            self._hook(name)

    def _spool_path(self, qid: str) -> Path:
        if not qid or not qid.isalnum():
            raise NotFound(f"no quarantined message {qid!r}")
        return self.messages / f"{qid}.eml"

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"quarantine database busy: {exc}") from exc
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise StoreUnavailable(f"quarantine commit failed: {exc}") from exc

    def _append(
        self, db: sqlite3.Connection, actor: str, action: str, qid: str, reason: str
    ) -> AuditEntry:
        last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
        at = time.time()
        digest = audit_hash(
            prev, seq=seq, at=at, actor=actor, action=action, qid=qid, reason=reason
        )
        db.execute(
            "INSERT INTO audit (seq, at, actor, action, qid, reason, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, at, actor, action, qid, reason, prev, digest),
        )
        return AuditEntry(seq, at, actor, action, qid, reason, prev, digest)

    def _discard(self, qid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._spool_path(qid).unlink()

    # -- the interface ----------------------------------------------------------------

    def put(self, data: bytes, record: QuarantineRecord) -> str:
        rec = record_for_put(record)
        final = self._spool_path(rec.id)
        tmp = self.tmp / f"{rec.id}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            self._step(STEP_SPOOL_WRITTEN)
            os.link(tmp, final)
            tmp.unlink()
            _fsync_dir(self.messages)
            _fsync_dir(self.tmp)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StoreUnavailable(f"cannot write quarantine spool: {exc}") from exc
        self._step(STEP_SPOOL_RENAMED)
        try:
            with self._transaction() as db:
                db.execute(
                    f"INSERT INTO quarantine ({_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        rec.id,
                        rec.received_at,
                        rec.client,
                        rec.sender,
                        encode_list(rec.recipients),
                        rec.subject,
                        rec.size,
                        rec.classification,
                        encode_list(rec.labels),
                        encode_list(rec.rules),
                        encode_list(rec.clauses),
                        json.dumps(dict(rec.findings), ensure_ascii=False, default=str),
                        HELD,
                        rec.route,
                        rec.queue_id,
                        None,
                    ),
                )
                self._append(db, "gateway", "quarantine", rec.id, ", ".join(rec.rules))
        except (sqlite3.Error, QuarantineError) as exc:
            self._discard(rec.id)
            if isinstance(exc, QuarantineError):
                raise
            raise StoreUnavailable(f"cannot record quarantined message: {exc}") from exc
        self._step(STEP_COMMITTED)
        return rec.id

    def get(self, qid: str) -> QuarantineRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM quarantine WHERE id = ?", (qid,)
            ).fetchone()
        return _row_to_record(row) if row else None

    def list(
        self,
        status: str | None = None,
        since: float | None = None,
        sender: str | None = None,
        rule: str | None = None,
    ) -> builtins.list[QuarantineRecord]:
        sql = f"SELECT {_COLUMNS} FROM quarantine WHERE received_at >= ?"
        params: list[Any] = [since if since is not None else float("-inf")]
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY received_at, id", params).fetchall()
        records = (_row_to_record(r) for r in rows)
        return [r for r in records if matches(r, status, since, sender, rule)]

    def read(self, qid: str) -> bytes:
        rec = self.get(qid)
        if rec is None:
            raise NotFound(f"no quarantined message {qid!r}")
        if rec.status in (DELETED, EXPIRED):
            raise NotFound(f"{qid} was {rec.status}; its message is no longer kept")
        try:
            return self._spool_path(qid).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{qid}: the message is no longer kept") from None
        except OSError as exc:
            raise StoreUnavailable(f"cannot read {qid}: {exc}") from exc

    def transition(
        self,
        qid: str,
        new_status: str,
        actor: str,
        reason: str,
        *,
        expected: str | None = HELD,
        action: str | None = None,
    ) -> QuarantineRecord:
        check_status(new_status)
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT status FROM quarantine WHERE id = ?", (qid,)).fetchone()
            if row is None:
                raise NotFound(f"no quarantined message {qid!r}")
            if expected is not None and row[0] != expected:
                raise StateConflict(qid, row[0], expected)
            db.execute(
                "UPDATE quarantine SET status = ?, updated_at = ? WHERE id = ?",
                (new_status, now, qid),
            )
            self._append(db, actor, action or ACTION_FOR_STATUS[new_status], qid, reason)
        if new_status in (DELETED, EXPIRED):
            self._discard(qid)
            with contextlib.suppress(OSError):
                _fsync_dir(self.messages)
        rec = self.get(qid)
        if rec is None:
            raise NotFound(f"no quarantined message {qid!r}")
        return rec

    def expire(self, now: float, retention: float) -> builtins.list[str]:
        cutoff = now - retention
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM quarantine WHERE status = ? AND received_at < ? "
                "ORDER BY received_at",
                (HELD, cutoff),
            ).fetchall()
        expired = []
        days = retention / 86400
        for (qid,) in rows:
            try:
                self.transition(qid, EXPIRED, "expire", f"retention of {days:g} days passed")
            except StateConflict:
                continue
            expired.append(qid)
        self._sweep(now, cutoff)
        return expired

    def _sweep(self, now: float, cutoff: float) -> None:
        """Remove bytes nobody may read any more: orphans, and records no longer held."""
        with self._lock:
            known = {
                r[0]: (r[1], r[2])
                for r in self._db.execute("SELECT id, status, received_at FROM quarantine")
            }
        for entry in self.messages.iterdir():
            qid = entry.name.removesuffix(".eml")
            try:
                age = now - entry.stat().st_mtime
            except FileNotFoundError:
                continue
            state = known.get(qid)
            stale = (
                age > ORPHAN_GRACE
                if state is None
                else state[0] in (DELETED, EXPIRED) or (state[0] != HELD and state[1] < cutoff)
            )
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
        for entry in self.tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if now - entry.stat().st_mtime > ORPHAN_GRACE:
                    entry.unlink()

    def append_audit(self, actor: str, action: str, qid: str, reason: str) -> AuditEntry:
        with self._transaction() as db:
            return self._append(db, actor, action, qid, reason)

    def audit_entries(self) -> builtins.list[AuditEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, at, actor, action, qid, reason, prev_hash, hash "
                "FROM audit ORDER BY seq"
            ).fetchall()
        return [AuditEntry(*r) for r in rows]

    def verify_audit(self) -> builtins.list[str]:
        entries = self.audit_entries()
        with self._lock:
            statuses = dict(self._db.execute("SELECT id, status FROM quarantine").fetchall())
        return chain_problems(entries) + status_problems(statuses, entries)

    def close(self) -> None:
        with self._lock:
            self._db.close()
