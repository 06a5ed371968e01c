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

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg

from milter.quarantine.sql import ADDED_COLUMNS, Executor, SqlStore
from milter.quarantine.store import (
    HELD,
    STEP_COMMITTED,
    STEP_SPOOL_RENAMED,
    STEP_SPOOL_WRITTEN,
    NotFound,
    QuarantineRecord,
    StepHook,
    StoreUnavailable,
    record_for_put,
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
    data BYTEA,
    origin TEXT NOT NULL DEFAULT '{}',
    release_plan TEXT NOT NULL DEFAULT '{}'
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


class PostgresStore(SqlStore):
    """Quarantine shared by several nodes through one PostgreSQL database."""

    placeholder = "%s"
    for_update = " FOR UPDATE"
    drop_bytes = ", data = NULL"

    def __init__(self, url: str, *, step_hook: StepHook | None = None) -> None:
        super().__init__(step_hook)
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None
        with self._transaction() as cur:
            # Nodes starting together must not race to create the same tables.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.milter'))")
            cur.execute(_SCHEMA)
            for column, ddl in ADDED_COLUMNS.items():  # a database made by an earlier version
                cur.execute(f"ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS {column} {ddl}")

    # -- plumbing ---------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = psycopg.connect(self.url, connect_timeout=10)
            except psycopg.Error as exc:
                raise StoreUnavailable(f"cannot connect to the quarantine database: {exc}") from exc
        return self._conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Executor]:
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    yield cur
            except psycopg.Error as exc:
                raise StoreUnavailable(f"quarantine database error: {exc}") from exc

    def _reading(self) -> contextlib.AbstractContextManager[Executor]:
        # psycopg opens a transaction for any statement; make it explicit and short so
        # a read never leaves the connection idle in a transaction.
        return self._transaction()

    def _serialise_audit(self, db: Executor) -> None:
        # Under READ COMMITTED two nodes could read the same audit tail and both append
        # after it; the table lock makes them queue instead.
        db.execute("LOCK TABLE audit IN SHARE ROW EXCLUSIVE MODE")

    # -- where the bytes live ---------------------------------------------------------

    def put(self, data: bytes, record: QuarantineRecord) -> str:
        rec = record_for_put(record)
        # Bytes and record go in one transaction: nothing is visible before the commit.
        # The steps mark the stages the SQLite store's spool writes mark (bytes stored,
        # then everything in place), both still before the commit.
        with self._transaction() as cur:
            self._insert(cur, rec, data)
            self._step(STEP_SPOOL_WRITTEN)
            self._append(cur, "gateway", "quarantine", rec.id, ", ".join(rec.rules))
            self._step(STEP_SPOOL_RENAMED)
        self._step(STEP_COMMITTED)
        return rec.id

    def read(self, qid: str) -> bytes:
        with self._reading() as cur:
            row = cur.execute(
                "SELECT status, data FROM quarantine WHERE id = %s", (qid,)
            ).fetchone()
        if row is None:
            raise NotFound(f"no quarantined message {qid!r}")
        if row[1] is None:
            raise NotFound(f"{qid} was {row[0]}; its message is no longer kept")
        return bytes(row[1])

    def _sweep(self, now: float, cutoff: float) -> None:
        """Clear the bytes of records no longer held once past the retention."""
        with self._transaction() as cur:
            cur.execute(
                "UPDATE quarantine SET data = NULL "
                "WHERE status <> %s AND received_at < %s AND data IS NOT NULL",
                (HELD, cutoff),
            )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
