"""The shared quarantine: several gateway nodes, one PostgreSQL database.

Nodes must be able to release what another node held, so the message bytes live in
the database beside their record rather than in a node's local spool: one
transaction stores both, which gives the same guarantee as the SQLite store's
spool-then-commit order (either a complete record or nothing) without a shared
filesystem. Audit appends from every node are serialised by a table lock on the
audit table, so the hash chain stays a single line.

Tables live in the connection's ``search_path``; a deployment (or a test) can keep
them in a schema of its own with ``?options=-csearch_path%3Dname`` in the URL.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg

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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    id TEXT PRIMARY KEY,
    received_at DOUBLE PRECISION NOT NULL,
    client TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    subject TEXT NOT NULL,
    size BIGINT NOT NULL,
    classification TEXT,
    labels TEXT NOT NULL,
    rules TEXT NOT NULL,
    clauses TEXT NOT NULL,
    findings TEXT NOT NULL,
    status TEXT NOT NULL,
    route TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    updated_at DOUBLE PRECISION,
    data BYTEA
);
CREATE INDEX IF NOT EXISTS quarantine_status ON quarantine (status, received_at);
CREATE TABLE IF NOT EXISTS audit (
    seq BIGINT PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
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


def _row_to_record(row: tuple[Any, ...]) -> QuarantineRecord:
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


class PostgresStore(QuarantineStore):
    """Quarantine shared by several nodes through one PostgreSQL database."""

    def __init__(self, url: str, *, step_hook: StepHook | None = None) -> None:
        self.url = url
        self._hook = step_hook
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        with self._transaction() as cur:
            # Nodes starting together must not race to create the same tables.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.milter'))")
            cur.execute(_SCHEMA)

    # -- plumbing ---------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = psycopg.connect(self.url, connect_timeout=10)
            except psycopg.Error as exc:
                raise StoreUnavailable(f"cannot connect to the quarantine database: {exc}") from exc
        return self._conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    yield cur
            except psycopg.Error as exc:
                raise StoreUnavailable(f"quarantine database error: {exc}") from exc

    def _step(self, name: str) -> None:
        if self._hook is not None:
            self._hook(name)

    @staticmethod
    def _append(
        cur: psycopg.Cursor[Any], actor: str, action: str, qid: str, reason: str
    ) -> AuditEntry:
        cur.execute("LOCK TABLE audit IN SHARE ROW EXCLUSIVE MODE")
        last = cur.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (int(last[0]) + 1, str(last[1])) if last else (1, GENESIS)
        at = time.time()
        digest = audit_hash(
            prev, seq=seq, at=at, actor=actor, action=action, qid=qid, reason=reason
        )
        cur.execute(
            "INSERT INTO audit (seq, at, actor, action, qid, reason, prev_hash, hash) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (seq, at, actor, action, qid, reason, prev, digest),
        )
        return AuditEntry(seq, at, actor, action, qid, reason, prev, digest)

    # -- the interface ----------------------------------------------------------------

    def put(self, data: bytes, record: QuarantineRecord) -> str:
        rec = record_for_put(record)
        with self._transaction() as cur:
            cur.execute(
                f"INSERT INTO quarantine ({_COLUMNS}, data) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
                    data,
                ),
            )
            self._step(STEP_SPOOL_WRITTEN)
            self._append(cur, "gateway", "quarantine", rec.id, ", ".join(rec.rules))
            self._step(STEP_SPOOL_RENAMED)
        self._step(STEP_COMMITTED)
        return rec.id

    def get(self, qid: str) -> QuarantineRecord | None:
        with self._transaction() as cur:
            row = cur.execute(f"SELECT {_COLUMNS} FROM quarantine WHERE id = %s", (qid,)).fetchone()
        return _row_to_record(row) if row else None

    def list(
        self,
        status: str | None = None,
        since: float | None = None,
        sender: str | None = None,
        rule: str | None = None,
    ) -> builtins.list[QuarantineRecord]:
        sql = f"SELECT {_COLUMNS} FROM quarantine WHERE received_at >= %s"
        params: builtins.list[Any] = [since if since is not None else float("-inf")]
        if status is not None:
            sql += " AND status = %s"
            params.append(status)
        with self._transaction() as cur:
            rows = cur.execute(sql + " ORDER BY received_at, id", params).fetchall()
        records = (_row_to_record(r) for r in rows)
        return [r for r in records if matches(r, status, since, sender, rule)]

    def read(self, qid: str) -> bytes:
        with self._transaction() as cur:
            row = cur.execute(
                "SELECT status, data FROM quarantine WHERE id = %s", (qid,)
            ).fetchone()
        if row is None:
            raise NotFound(f"no quarantined message {qid!r}")
        if row[1] is None:
            raise NotFound(f"{qid} was {row[0]}; its message is no longer kept")
        return bytes(row[1])

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
        with self._transaction() as cur:
            row = cur.execute(
                "SELECT status FROM quarantine WHERE id = %s FOR UPDATE", (qid,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no quarantined message {qid!r}")
            if expected is not None and row[0] != expected:
                raise StateConflict(qid, row[0], expected)
            cur.execute(
                "UPDATE quarantine SET status = %s, updated_at = %s"
                + (", data = NULL" if drop else "")
                + " WHERE id = %s",
                (new_status, time.time(), qid),
            )
            self._append(cur, actor, action or ACTION_FOR_STATUS[new_status], qid, reason)
            out = cur.execute(f"SELECT {_COLUMNS} FROM quarantine WHERE id = %s", (qid,)).fetchone()
        if out is None:
            raise NotFound(f"no quarantined message {qid!r}")
        return _row_to_record(out)

    def expire(self, now: float, retention: float) -> builtins.list[str]:
        cutoff = now - retention
        with self._transaction() as cur:
            rows = cur.execute(
                "SELECT id FROM quarantine WHERE status = %s AND received_at < %s "
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
        with self._transaction() as cur:
            cur.execute(
                "UPDATE quarantine SET data = NULL "
                "WHERE status <> %s AND received_at < %s AND data IS NOT NULL",
                (HELD, cutoff),
            )
        return expired

    def append_audit(self, actor: str, action: str, qid: str, reason: str) -> AuditEntry:
        with self._transaction() as cur:
            return self._append(cur, actor, action, qid, reason)

    def audit_entries(self) -> builtins.list[AuditEntry]:
        with self._transaction() as cur:
            rows = cur.execute(
                "SELECT seq, at, actor, action, qid, reason, prev_hash, hash "
                "FROM audit ORDER BY seq"
            ).fetchall()
        return [AuditEntry(int(r[0]), *r[1:]) for r in rows]

    def verify_audit(self) -> builtins.list[str]:
        entries = self.audit_entries()
        with self._transaction() as cur:
            statuses = {r[0]: r[1] for r in cur.execute("SELECT id, status FROM quarantine")}
        return chain_problems(entries) + status_problems(statuses, entries)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
