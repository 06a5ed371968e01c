"""What the SQLite and PostgreSQL quarantines share: one row format, one audit chain.

Both back-ends keep the same tables (``quarantine``, ``audit`` and ``notice_outbox``, the
durable queue of notices) and answer every
query the same way, so the statements, the row mapping and the audit append live here
once. A back-end supplies only what really differs: how it connects and locks
(``_transaction`` and ``_reading``), its schema DDL, and where the message bytes live
(SQLite: a spool directory beside the database; PostgreSQL: the row itself), which is
why ``put``, ``read`` and the sweep of unreferenced bytes stay with each back-end.

Statements are written with ``?`` placeholders and translated to the driver's style
(``%s`` for psycopg) by ``_sql``; none of them contains a literal ``?`` or ``%``.
"""

from __future__ import annotations

import builtins
import json
import secrets
import threading
import time
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol

from milter.quarantine.store import (
    ACTION_FOR_STATUS,
    DELETED,
    EXPIRED,
    GENESIS,
    HELD,
    NOTICE_FAILED,
    NOTICE_QUEUED,
    NOTICE_SENDING,
    NOTICE_SENT,
    AuditEntry,
    NotFound,
    OutboxNotice,
    QuarantineRecord,
    QuarantineStore,
    StateConflict,
    StepHook,
    audit_hash,
    chain_problems,
    check_status,
    matches,
    status_problems,
)

COLUMNS = (
    "id, received_at, client, sender, recipients, subject, size, classification, labels, "
    "rules, clauses, findings, status, route, queue_id, updated_at, origin, release_plan"
)
# Columns later versions added, with their DDL: each back-end adds what an older
# database lacks when it opens it.
ADDED_COLUMNS = {
    "origin": "TEXT NOT NULL DEFAULT '{}'",
    "release_plan": "TEXT NOT NULL DEFAULT '{}'",
}

_AUDIT_COLUMNS = "seq, at, actor, action, qid, reason, prev_hash, hash"

OUTBOX_COLUMNS = (
    "id, kind, sender, recipients, data, attempts, next_attempt, status, last_error, "
    "created_at, claim"
)
# Due for an attempt: queued and its time has come, or claimed by a worker that has not
# reported back within the lease (it died mid-send). Written twice in the claim: once to
# pick rows and once more on the UPDATE itself, so that a row another transaction
# claimed meanwhile is re-checked against its new state and skipped (PostgreSQL
# re-evaluates the UPDATE's own conditions on the newest row version, not a subquery's).
_DUE = "((status = ? AND next_attempt <= ?) OR (status = ? AND claimed_at < ?))"


def row_to_notice(row: Sequence[Any]) -> OutboxNotice:
    """The notice an ``OUTBOX_COLUMNS`` row describes."""
    return OutboxNotice(
        id=int(row[0]),
        kind=row[1],
        sender=row[2],
        recipients=decode_list(row[3]),
        data=bytes(row[4]),
        attempts=int(row[5]),
        next_attempt=float(row[6]),
        status=row[7],
        last_error=row[8] or "",
        created_at=float(row[9]),
        claim=row[10] or "",
    )


class Rows(Protocol):
    """The result of a statement, as both sqlite3 and psycopg cursors return it."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Executor(Protocol):
    """What runs a statement: a sqlite3 connection or a psycopg cursor."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Rows: ...


def encode_list(values: Sequence[str]) -> str:
    """A tuple column as JSON text, so both databases store it in a plain TEXT column."""
    return json.dumps(list(values), ensure_ascii=False)


def decode_list(text: str | None) -> tuple[str, ...]:
    return tuple(str(v) for v in json.loads(text or "[]"))


def row_to_record(row: Sequence[Any]) -> QuarantineRecord:
    """The record a ``SELECT {COLUMNS}`` row describes."""
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
        origin=json.loads(row[16] or "{}"),
        release_plan=json.loads(row[17] or "{}"),
    )


def record_values(rec: QuarantineRecord) -> tuple[Any, ...]:
    """The ``COLUMNS`` values of a record being stored: held, never updated yet."""
    return (
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
        json.dumps(dict(rec.origin), ensure_ascii=False),
        json.dumps(dict(rec.release_plan), ensure_ascii=False, default=str),
    )


class SqlStore(QuarantineStore):
    """The quarantine over the two shared tables; subclasses bring the database.

    Every method that writes runs inside one ``_transaction``, so a status change and
    its audit entry commit together or not at all. Reading the audit tail and appending
    after it must not interleave with another writer, in this process or another: the
    back-end's transaction or its ``_serialise_audit`` sees to that, which is what keeps
    the hash chain a single line.
    """

    # The driver's parameter marker (sqlite3: ``?``, psycopg: ``%s``).
    placeholder: ClassVar[str] = "?"
    # Appended to the status SELECT in ``transition`` to lock the row where the
    # database locks rows rather than the whole file.
    for_update: ClassVar[str] = ""
    # Appended to the status UPDATE when a record is deleted or expired, for a
    # back-end whose bytes live in the row and go in the same statement.
    drop_bytes: ClassVar[str] = ""

    def __init__(self, step_hook: StepHook | None) -> None:
        self._hook = step_hook
        self._lock = threading.RLock()

    # -- what a back-end supplies -----------------------------------------------------

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Executor]:
        """One transaction on the connection, held for this store's threads alone.

        Commits on a clean exit and rolls back on an exception; a database error
        surfaces as StoreUnavailable at the latest when committing.
        """

    @abstractmethod
    def _reading(self) -> AbstractContextManager[Executor]:
        """The connection for reads that change nothing, held for this store's threads."""

    def _serialise_audit(self, db: Executor) -> None:
        """Make this transaction the only one appending to the audit log until it ends.

        Nothing to do where ``_transaction`` already excludes every other writer.
        """

    def _serialise_rate(self, db: Executor, key: str) -> None:
        """Make this transaction the only one counting and queueing notices for ``key``
        until it ends, so two workers cannot both take the last notice of a window.

        Nothing to do where ``_transaction`` already excludes every other writer.
        """

    # Appended to the claim's row selection where the database can skip rows another
    # transaction holds locked instead of waiting for them.
    skip_locked: ClassVar[str] = ""

    def _discard(self, qid: str) -> None:
        """Remove bytes kept outside the database, once their record no longer needs them.

        Nothing to do where the bytes live in the row (``drop_bytes`` clears them).
        """

    @abstractmethod
    def _sweep(self, now: float, cutoff: float) -> None:
        """Remove bytes nobody may read any more (see ``expire``)."""

    # -- shared plumbing --------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        """``statement`` with the driver's parameter marker in place of each ``?``."""
        if self.placeholder == "?":
            return statement
        return statement.replace("?", self.placeholder)

    def _step(self, name: str) -> None:
        if self._hook is not None:
            self._hook(name)

    def _insert(self, db: Executor, rec: QuarantineRecord, data: bytes | None = None) -> None:
        """Insert the held record, and its bytes too when ``data`` is given."""
        values = record_values(rec)
        columns = COLUMNS
        if data is not None:
            columns += ", data"
            values += (data,)
        marks = ", ".join("?" * len(values))
        db.execute(self._sql(f"INSERT INTO quarantine ({columns}) VALUES ({marks})"), values)

    def _append(self, db: Executor, actor: str, action: str, qid: str, reason: str) -> AuditEntry:
        """Chain one entry to the newest; the caller's transaction makes it atomic."""
        self._serialise_audit(db)
        last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (int(last[0]) + 1, str(last[1])) if last else (1, GENESIS)
        at = time.time()
        digest = audit_hash(
            prev, seq=seq, at=at, actor=actor, action=action, qid=qid, reason=reason
        )
        db.execute(
            self._sql(f"INSERT INTO audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
            (seq, at, actor, action, qid, reason, prev, digest),
        )
        return AuditEntry(seq, at, actor, action, qid, reason, prev, digest)

    # -- the interface ----------------------------------------------------------------

    def get(self, qid: str) -> QuarantineRecord | None:
        with self._reading() as db:
            row = db.execute(
                self._sql(f"SELECT {COLUMNS} FROM quarantine WHERE id = ?"), (qid,)
            ).fetchone()
        return row_to_record(row) if row else None

    def list(
        self,
        status: str | None = None,
        since: float | None = None,
        sender: str | None = None,
        rule: str | None = None,
    ) -> builtins.list[QuarantineRecord]:
        # The database narrows by time and status (indexed); ``matches`` applies the
        # rest so that every back-end compares addresses and rules the same way.
        sql = f"SELECT {COLUMNS} FROM quarantine WHERE received_at >= ?"
        params: builtins.list[Any] = [since if since is not None else float("-inf")]
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        with self._reading() as db:
            rows = db.execute(self._sql(sql + " ORDER BY received_at, id"), params).fetchall()
        records = (row_to_record(r) for r in rows)
        return [r for r in records if matches(r, status, since, sender, rule)]

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
        drop = new_status in (DELETED, EXPIRED)
        with self._transaction() as db:
            row = db.execute(
                self._sql("SELECT status FROM quarantine WHERE id = ?" + self.for_update), (qid,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no quarantined message {qid!r}")
            if expected is not None and row[0] != expected:
                raise StateConflict(qid, row[0], expected)
            db.execute(
                self._sql(
                    "UPDATE quarantine SET status = ?, updated_at = ?"
                    + (self.drop_bytes if drop else "")
                    + " WHERE id = ?"
                ),
                (new_status, time.time(), qid),
            )
            self._append(db, actor, action or ACTION_FOR_STATUS[new_status], qid, reason)
            out = db.execute(
                self._sql(f"SELECT {COLUMNS} FROM quarantine WHERE id = ?"), (qid,)
            ).fetchone()
        # Bytes outside the database go only once the new status is committed: a
        # failed commit must leave a held record with its message.
        if drop:
            self._discard(qid)
        if out is None:
            raise NotFound(f"no quarantined message {qid!r}")
        return row_to_record(out)

    def expire(self, now: float, retention: float) -> builtins.list[str]:
        cutoff = now - retention
        with self._reading() as db:
            rows = db.execute(
                self._sql(
                    "SELECT id FROM quarantine WHERE status = ? AND received_at < ? "
                    "ORDER BY received_at"
                ),
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
        self._purge_outbox(cutoff)
        return expired

    def append_audit(self, actor: str, action: str, qid: str, reason: str) -> AuditEntry:
        with self._transaction() as db:
            return self._append(db, actor, action, qid, reason)

    # -- the notice outbox ------------------------------------------------------------

    def enqueue_notice(
        self,
        kind: str,
        sender: str,
        recipients: Iterable[str],
        data: bytes,
        *,
        now: float,
        rate_key: str | None = None,
        rate_limit: int | None = None,
        window: float = 3600.0,
    ) -> int | None:
        rcpts = list(recipients)
        with self._transaction() as db:
            if rate_key is not None and rate_limit is not None:
                self._serialise_rate(db, rate_key)
                row = db.execute(
                    self._sql(
                        "SELECT COUNT(*) FROM notice_outbox WHERE rate_key = ? AND created_at > ?"
                    ),
                    (rate_key, now - window),
                ).fetchone()
                if int(row[0]) >= rate_limit:
                    return None
            row = db.execute(
                self._sql(
                    "INSERT INTO notice_outbox (kind, sender, recipients, data, attempts, "
                    "next_attempt, status, last_error, created_at, updated_at, rate_key) "
                    "VALUES (?, ?, ?, ?, 0, ?, ?, '', ?, ?, ?) RETURNING id"
                ),
                (kind, sender, encode_list(rcpts), data, now, NOTICE_QUEUED, now, now, rate_key),
            ).fetchone()
        return int(row[0])

    def claim_notices(
        self, now: float, *, limit: int = 20, lease: float = 600.0
    ) -> builtins.list[OutboxNotice]:
        token = secrets.token_hex(12)
        due = (NOTICE_QUEUED, now, NOTICE_SENDING, now - lease)
        with self._transaction() as db:
            rows = db.execute(
                self._sql(
                    "UPDATE notice_outbox SET status = ?, claim = ?, claimed_at = ?, "
                    "updated_at = ?, attempts = attempts + 1 "
                    f"WHERE id IN (SELECT id FROM notice_outbox WHERE {_DUE} "
                    f"ORDER BY next_attempt, id LIMIT ?{self.skip_locked}) AND {_DUE} "
                    f"RETURNING {OUTBOX_COLUMNS}"
                ),
                (NOTICE_SENDING, token, now, now, *due, limit, *due),
            ).fetchall()
        return sorted((row_to_notice(r) for r in rows), key=lambda n: (n.next_attempt, n.id))

    def _settle(self, notice_id: int, claim: str, assignments: str, values: Sequence[Any]) -> bool:
        """Apply ``assignments`` to a notice only while ``claim`` still holds it."""
        with self._transaction() as db:
            row = db.execute(
                self._sql(
                    f"UPDATE notice_outbox SET {assignments}, claim = NULL "
                    "WHERE id = ? AND claim = ? AND status = ? RETURNING id"
                ),
                (*values, notice_id, claim, NOTICE_SENDING),
            ).fetchone()
        return row is not None

    def notice_sent(self, notice_id: int, claim: str, now: float) -> bool:
        return self._settle(
            notice_id, claim, "status = ?, updated_at = ?, last_error = ''", (NOTICE_SENT, now)
        )

    def notice_retry(
        self,
        notice_id: int,
        claim: str,
        *,
        now: float,
        next_attempt: float,
        error: str,
        recipients: Iterable[str] | None = None,
    ) -> bool:
        assignments = "status = ?, updated_at = ?, next_attempt = ?, last_error = ?"
        values: builtins.list[Any] = [NOTICE_QUEUED, now, next_attempt, error]
        if recipients is not None:
            assignments += ", recipients = ?"
            values.append(encode_list(list(recipients)))
        return self._settle(notice_id, claim, assignments, values)

    def notice_failed(self, notice_id: int, claim: str, *, now: float, error: str) -> bool:
        return self._settle(
            notice_id,
            claim,
            "status = ?, updated_at = ?, last_error = ?",
            (NOTICE_FAILED, now, error),
        )

    def unclaim_notices(self, claims: Iterable[str], now: float) -> None:
        with self._transaction() as db:
            for claim in claims:
                db.execute(
                    self._sql(
                        "UPDATE notice_outbox SET status = ?, claim = NULL, next_attempt = ?, "
                        "updated_at = ? WHERE claim = ? AND status = ?"
                    ),
                    (NOTICE_QUEUED, now, now, claim, NOTICE_SENDING),
                )

    def outbox(self, status: str | None = None) -> builtins.list[OutboxNotice]:
        sql = f"SELECT {OUTBOX_COLUMNS} FROM notice_outbox"
        params: builtins.list[Any] = []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(status)
        with self._reading() as db:
            rows = db.execute(self._sql(sql + " ORDER BY created_at, id"), params).fetchall()
        return [row_to_notice(r) for r in rows]

    def _purge_outbox(self, cutoff: float) -> None:
        """Forget notices settled before ``cutoff``: the rate limit's window and the
        retention are long past, and the log keeps what happened to each."""
        with self._transaction() as db:
            db.execute(
                self._sql("DELETE FROM notice_outbox WHERE status IN (?, ?) AND updated_at < ?"),
                (NOTICE_SENT, NOTICE_FAILED, cutoff),
            )

    def audit_entries(self) -> builtins.list[AuditEntry]:
        with self._reading() as db:
            rows = db.execute(f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY seq").fetchall()
        return [AuditEntry(int(r[0]), *r[1:]) for r in rows]

    def verify_audit(self) -> builtins.list[str]:
        entries = self.audit_entries()
        with self._reading() as db:
            statuses = {
                r[0]: r[1] for r in db.execute("SELECT id, status FROM quarantine").fetchall()
            }
        return chain_problems(entries) + status_problems(statuses, entries)
