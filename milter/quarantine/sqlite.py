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

import contextlib
import os
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from milter.quarantine.sql import ADDED_COLUMNS, Executor, SqlStore
from milter.quarantine.store import (
    DELETED,
    EXPIRED,
    HELD,
    STEP_COMMITTED,
    STEP_SPOOL_RENAMED,
    STEP_SPOOL_WRITTEN,
    NotFound,
    QuarantineError,
    QuarantineRecord,
    Search,
    StepHook,
    StoreUnavailable,
    record_for_put,
)

# -- the review UI: accounts, login failures, rejections, search indexes -------------
# Run after ``ADDED_COLUMNS`` are in place (the indexes use ``sender_rdomain``).
_REVIEW_SCHEMA = """
CREATE TABLE IF NOT EXISTS review_users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    agencies TEXT NOT NULL DEFAULT '[]',
    disabled INTEGER NOT NULL DEFAULT 0,
    email TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    password_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS login_failures (
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS login_failures_name ON login_failures (name, at);
CREATE INDEX IF NOT EXISTS login_failures_address ON login_failures (address, at);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    queue_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    sender_rdomain TEXT NOT NULL,
    recipients TEXT NOT NULL,
    rules TEXT NOT NULL,
    clauses TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rejections_at ON rejections (at);
CREATE INDEX IF NOT EXISTS rejections_agency ON rejections (sender_rdomain, at);
CREATE INDEX IF NOT EXISTS quarantine_received ON quarantine (received_at, id);
CREATE INDEX IF NOT EXISTS quarantine_size ON quarantine (size);
CREATE INDEX IF NOT EXISTS quarantine_agency ON quarantine (sender_rdomain, received_at);
CREATE INDEX IF NOT EXISTS quarantine_class ON quarantine (classification, received_at);
CREATE INDEX IF NOT EXISTS quarantine_sender ON quarantine (lower(sender));
CREATE INDEX IF NOT EXISTS audit_qid ON audit (qid, seq);
"""

# Substring search of the review list: a trigram index of subject, sender and
# recipients (lower case), kept by triggers. Made, and filled from the rows already
# there, when a database first opens with this version.
_TEXT_INDEX = (
    "CREATE VIRTUAL TABLE quarantine_text USING fts5(body, tokenize='trigram')",
    """INSERT INTO quarantine_text (rowid, body)
    SELECT rowid, lower(subject || ' ' || sender || ' ' || recipients) FROM quarantine""",
    """CREATE TRIGGER IF NOT EXISTS quarantine_text_insert AFTER INSERT ON quarantine BEGIN
    INSERT INTO quarantine_text (rowid, body)
        VALUES (new.rowid, lower(new.subject || ' ' || new.sender || ' ' || new.recipients));
END""",
    """CREATE TRIGGER IF NOT EXISTS quarantine_text_delete AFTER DELETE ON quarantine BEGIN
    DELETE FROM quarantine_text WHERE rowid = old.rowid;
END""",
)
_HAS_TEXT_INDEX = "SELECT 1 FROM sqlite_master WHERE name = 'quarantine_text'"


# A spool file without a row is only an orphan once no ``put`` can still be committing it.
ORPHAN_GRACE = 3600.0

_SCHEMA = (
    """
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
    updated_at REAL,
    origin TEXT NOT NULL DEFAULT '{}',
    release_plan TEXT NOT NULL DEFAULT '{}'
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
CREATE TABLE IF NOT EXISTS notice_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    data BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    status TEXT NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL,
    claim TEXT,
    claimed_at REAL,
    rate_key TEXT
);
CREATE INDEX IF NOT EXISTS notice_outbox_due ON notice_outbox (status, next_attempt);
CREATE INDEX IF NOT EXISTS notice_outbox_rate ON notice_outbox (rate_key, created_at);
"""
    + """
-- the retry queue (milter.app.retryqueue): bytes in SPOOL/retry/ID.eml
CREATE TABLE IF NOT EXISTS retry_queue (
    id TEXT PRIMARY KEY,
    queue_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    route TEXT NOT NULL,
    created_at REAL NOT NULL,
    next_attempt REAL NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    smtputf8 INTEGER NOT NULL DEFAULT 0,
    dsn TEXT NOT NULL DEFAULT '{}',
    info TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    updated_at REAL,
    delay_notified INTEGER NOT NULL DEFAULT 0,
    claim TEXT,
    claimed_at REAL
);
CREATE INDEX IF NOT EXISTS retry_queue_due ON retry_queue (status, next_attempt);
"""
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


class SqliteStore(SqlStore):
    """Quarantine for one node: ``path`` is the SQLite file, ``spool`` the message directory."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        spool: str | os.PathLike[str],
        *,
        step_hook: StepHook | None = None,
        busy_timeout: float = 30.0,
    ) -> None:
        super().__init__(step_hook)
        self.path = Path(path)
        self.spool = Path(spool)
        self.messages = self.spool / "msg"
        self.tmp = self.spool / "tmp"
        try:
            if not self.path.parent.is_dir():
                _private_dir(self.path.parent)
            for d in (self.spool, self.messages, self.tmp):
                _private_dir(d)
            if not self.path.exists():
                # Created private before SQLite opens it. Only when it is new: closing
                # any descriptor of a file drops every POSIX lock this process holds on
                # it, which would silently unlock another store of the same database
                # open in this process.
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                os.close(fd)
            os.chmod(self.path, 0o600)
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            have = {row[1] for row in self._db.execute("PRAGMA table_info(quarantine)")}
            for column, ddl in ADDED_COLUMNS.items():
                if column not in have:  # a database made by an earlier version
                    self._db.execute(f"ALTER TABLE quarantine ADD COLUMN {column} {ddl}")
            self._db.executescript(_REVIEW_SCHEMA)
            if not self._db.execute(_HAS_TEXT_INDEX).fetchone():
                with self._transaction() as db:
                    # Another process may have made it while this one waited for the lock.
                    if not db.execute(_HAS_TEXT_INDEX).fetchone():
                        for statement in _TEXT_INDEX:
                            db.execute(statement)
            if self._db.execute(
                "SELECT 1 FROM quarantine WHERE sender_rdomain IS NULL LIMIT 1"
            ).fetchone():
                with self._transaction() as db:
                    self._backfill_rdomain(db)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open quarantine {self.path}: {exc}") from exc

    # -- plumbing ---------------------------------------------------------------------

    def _text_index(self, needle: str) -> tuple[str, list[Any]]:
        # Trigrams need three characters; a shorter needle is searched row by row.
        if len(needle) < 3:
            return "", []
        phrase = '"' + needle.replace('"', '""') + '"'
        return "rowid IN (SELECT rowid FROM quarantine_text WHERE quarantine_text MATCH ?) AND ", [
            phrase
        ]

    # A free-text, rule or recipient search with many matches and no filter that an
    # index narrows (sender, agency, classification): the newest page is found by
    # walking the received_at index from the newest end and testing each row, which
    # stops after one page. SQLite's planner would rather fetch every match and sort
    # them all (60 ms for a word in 24,000 of 100,000 holds; 19 ms walking).
    _WALK_FROM = 1000

    def _page_hint(self, s: Search, key: str, matches: int) -> str:
        unindexed = bool(s.q.strip() or s.rule.strip() or s.recipient.strip())
        narrowed = bool(s.sender.strip() or s.classification.strip()) or (
            s.sender_domains is not None
        )
        if key == "received_at" and matches > self._WALK_FROM and unindexed and not narrowed:
            return " INDEXED BY quarantine_received"
        return ""

    def _text_exact(self, needle: str) -> tuple[str, list[Any]] | None:
        # The index holds the three fields joined by spaces: a phrase of three or more
        # characters without a space can only match inside one of them, as the LIKE
        # would, so the index's answer is the answer.
        if len(needle) < 3 or any(c.isspace() for c in needle):
            return None
        cond, params = self._text_index(needle)
        return cond.removesuffix(" AND "), params

    def _spool_path(self, qid: str) -> Path:
        if not qid or not qid.isalnum():
            raise NotFound(f"no quarantined message {qid!r}")
        return self.messages / f"{qid}.eml"

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Executor]:
        # BEGIN IMMEDIATE takes the write lock up front, so two processes cannot both
        # read the audit tail and then append after it.
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

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Executor]:
        # Outside a transaction each statement sees a committed snapshot (WAL); the lock
        # only keeps this store's threads off the shared connection.
        with self._lock:
            yield self._db

    def _unlink(self, qid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._spool_path(qid).unlink()

    def _discard(self, qid: str) -> None:
        self._unlink(qid)
        with contextlib.suppress(OSError):
            _fsync_dir(self.messages)

    def _write_spool(self, qid: str, data: bytes) -> None:
        """Make the bytes durable under their final name before any row refers to them."""
        self._durable_write(self._spool_path(qid), data, steps=True)

    def _durable_write(self, final: Path, data: bytes, *, steps: bool = False) -> None:
        """Temp file, fsync, link to ``final``, fsync both directories."""
        qid = final.name.removesuffix(".eml")
        tmp = self.tmp / f"{qid}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if steps:
                self._step(STEP_SPOOL_WRITTEN)
            os.link(tmp, final)
            tmp.unlink()
            _fsync_dir(final.parent)
            _fsync_dir(self.tmp)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StoreUnavailable(f"cannot write quarantine spool: {exc}") from exc
        if steps:
            self._step(STEP_SPOOL_RENAMED)

    # -- where the bytes live ---------------------------------------------------------

    def put(self, data: bytes, record: QuarantineRecord) -> str:
        rec = record_for_put(record)
        self._write_spool(rec.id, data)
        try:
            with self._transaction() as db:
                self._insert(db, rec)
                self._append(db, "gateway", "quarantine", rec.id, ", ".join(rec.rules))
        except (sqlite3.Error, QuarantineError) as exc:
            self._unlink(rec.id)
            if isinstance(exc, QuarantineError):
                raise
            raise StoreUnavailable(f"cannot record quarantined message: {exc}") from exc
        self._step(STEP_COMMITTED)
        return rec.id

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

    def _sweep(self, now: float, cutoff: float) -> None:
        """Remove bytes nobody may read any more: orphans, and records no longer held."""
        with self._reading() as db:
            rows = db.execute("SELECT id, status, received_at FROM quarantine").fetchall()
        known = {r[0]: (r[1], r[2]) for r in rows}
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

    # -- the retry queue's bytes ------------------------------------------------------

    def _retry_path(self, entry_id: str) -> Path:
        if not entry_id or not entry_id.isalnum():
            raise NotFound(f"no queue entry {entry_id!r}")
        return self.spool / "retry" / f"{entry_id}.eml"

    def _retry_write(self, entry_id: str, data: bytes) -> None:
        path = self._retry_path(entry_id)
        if not path.parent.is_dir():
            try:
                _private_dir(path.parent)
            except OSError as exc:
                raise StoreUnavailable(f"cannot create {path.parent}: {exc}") from exc
        self._durable_write(path, data)

    def _retry_bytes(self, db: Executor, entry_id: str) -> bytes:
        try:
            return self._retry_path(entry_id).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no bytes kept for queue entry {entry_id!r}") from None
        except OSError as exc:
            raise StoreUnavailable(f"cannot read queue entry {entry_id}: {exc}") from exc

    def _retry_discard(self, entry_id: str) -> None:
        with contextlib.suppress(OSError, NotFound):
            self._retry_path(entry_id).unlink()

    def close(self) -> None:
        with self._lock:
            self._db.close()
