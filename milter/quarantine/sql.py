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
    REJECTED,
    RETRY_DELETED,
    RETRY_FAILED,
    RETRY_QUEUED,
    RETRY_SENDING,
    RETRY_SENT,
    SEARCH_SORTS,
    AuditEntry,
    Fact,
    NotFound,
    OutboxNotice,
    QuarantineRecord,
    QuarantineStore,
    RetryEntry,
    Search,
    StateConflict,
    StepHook,
    audit_hash,
    chain_problems,
    check_status,
    matches,
    reversed_domain,
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
    # The sender's domain reversed (``reversed_domain``), so an agency's mail is one
    # index range; filled on insert, and for older rows by ``_backfill_rdomain``.
    "sender_rdomain": "TEXT",
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


def _like_escape(text: str) -> str:
    """``text`` matched literally by ``LIKE ... ESCAPE '!'``."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


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
        values = (*record_values(rec), reversed_domain(rec.sender))
        columns = COLUMNS + ", sender_rdomain"
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
        self._purge_retry(cutoff)
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
        rows = self._claim_due("notice_outbox", OUTBOX_COLUMNS, now, limit=limit, lease=lease)
        return sorted((row_to_notice(r) for r in rows), key=lambda n: (n.next_attempt, n.id))

    def _claim_due(
        self,
        table: str,
        columns: str,
        now: float,
        *,
        limit: int,
        lease: float,
        queued: str = NOTICE_QUEUED,
        sending: str = NOTICE_SENDING,
    ) -> builtins.list[Any]:
        """Atomically claim up to ``limit`` due rows of a durable queue (the notice
        outbox, the retry queue) for this caller alone; each claim counts an attempt.

        Due: ``queued`` with ``next_attempt <= now``, or ``sending`` under a claim older
        than ``lease`` (its worker died). The rows, as ``columns``, claimed.
        """
        token = secrets.token_hex(12)
        due = (queued, now, sending, now - lease)
        with self._transaction() as db:
            return db.execute(
                self._sql(
                    f"UPDATE {table} SET status = ?, claim = ?, claimed_at = ?, "
                    "updated_at = ?, attempts = attempts + 1 "
                    f"WHERE id IN (SELECT id FROM {table} WHERE {_DUE} "
                    f"ORDER BY next_attempt, id LIMIT ?{self.skip_locked}) AND {_DUE} "
                    f"RETURNING {columns}"
                ),
                (sending, token, now, now, *due, limit, *due),
            ).fetchall()

    def _settle(
        self,
        notice_id: int | str,
        claim: str,
        assignments: str,
        values: Sequence[Any],
        *,
        table: str = "notice_outbox",
        sending: str = NOTICE_SENDING,
    ) -> bool:
        """Apply ``assignments`` to a claimed row only while ``claim`` still holds it."""
        with self._transaction() as db:
            row = db.execute(
                self._sql(
                    f"UPDATE {table} SET {assignments}, claim = NULL "
                    "WHERE id = ? AND claim = ? AND status = ? RETURNING id"
                ),
                (*values, notice_id, claim, sending),
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

    # -- the review UI: search, per-message audit -------------------------------------

    # How the reversed sender domain is compared, so that "." sorts right before "/"
    # as ``_agency_range`` needs, whatever the database's own collation.
    rdomain_collate: ClassVar[str] = ""

    def _backfill_rdomain(self, db: Executor) -> None:
        """Fill ``sender_rdomain`` on rows stored before it existed."""
        rows = db.execute("SELECT id, sender FROM quarantine WHERE sender_rdomain IS NULL")
        for qid, sender in rows.fetchall():
            db.execute(
                self._sql("UPDATE quarantine SET sender_rdomain = ? WHERE id = ?"),
                (reversed_domain(sender), qid),
            )

    def _agency_range(self, domain: str) -> tuple[str, builtins.list[Any]]:
        """The condition "sender in ``domain`` or one of its subdomains"."""
        low = reversed_domain(domain)
        if not low:
            return "1 = 0", []
        col = "sender_rdomain" + self.rdomain_collate
        # Every value starting with ``low`` (which ends in ".") sorts in [low, low/):
        # "/" is the character right after ".".
        return f"({col} >= ? AND {col} < ?)", [low, low[:-1] + "/"]

    def _text_index(self, needle: str) -> tuple[str, builtins.list[Any]]:
        """A condition (ending in ``AND``) that narrows a substring search of subject,
        sender and recipients through an index, before the exact ``LIKE`` runs on
        what is left; nothing where the back-end has no such index."""
        return "", []

    def _text_exact(self, needle: str) -> tuple[str, builtins.list[Any]] | None:
        """The whole condition "``needle`` is in subject, sender or recipients" where
        an index answers it exactly by itself; else None."""
        return None

    def _search_where(self, s: Search) -> tuple[str, builtins.list[Any]]:
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if s.q.strip():
            needle = s.q.strip().lower()
            exact = self._text_exact(needle)
            if exact is not None:
                where.append(exact[0])
                params += exact[1]
            else:
                cond, p = self._text_index(needle)
                like = "%" + _like_escape(needle) + "%"
                where.append(
                    cond + "(lower(subject) LIKE ? ESCAPE '!' OR lower(sender) LIKE ? ESCAPE '!' "
                    "OR lower(recipients) LIKE ? ESCAPE '!')"
                )
                params += [*p, like, like, like]
        sender = s.sender.strip().lower()
        if sender.startswith("@"):
            where.append(f"sender_rdomain{self.rdomain_collate} = ?")
            params.append(reversed_domain(sender))
        elif sender:
            where.append("lower(sender) = ?")
            params.append(sender)
        if s.recipient.strip():
            # Recipients are a JSON list: the quotes anchor a whole address.
            quoted = json.dumps(s.recipient.strip().lower(), ensure_ascii=False)
            cond, p = self._text_index(quoted)
            where.append(cond + "lower(recipients) LIKE ? ESCAPE '!'")
            params += [*p, "%" + _like_escape(quoted) + "%"]
        if s.rule.strip():
            where.append("rules LIKE ? ESCAPE '!'")
            quoted = json.dumps(s.rule.strip(), ensure_ascii=False)
            params.append("%" + _like_escape(quoted) + "%")
        if s.classification.strip():
            where.append("classification = ?")
            params.append(s.classification.strip())
        if s.status:
            where.append("status = ?")
            params.append(s.status)
        if s.since is not None:
            where.append("received_at >= ?")
            params.append(s.since)
        if s.until is not None:
            where.append("received_at < ?")
            params.append(s.until)
        if s.sender_domains is not None:
            ranges = [self._agency_range(d) for d in s.sender_domains]
            where.append("(" + (" OR ".join(c for c, _ in ranges) or "1 = 0") + ")")
            for _, p in ranges:
                params += p
        return (" WHERE " + " AND ".join(where)) if where else "", params

    def search(self, s: Search) -> tuple[builtins.list[QuarantineRecord], int]:
        where, params = self._search_where(s)
        key = s.sort.lstrip("-")
        if key not in SEARCH_SORTS:  # ``Search`` checks it too; the name goes into SQL
            raise ValueError(f"cannot sort by {key!r}")
        order = "DESC" if s.sort.startswith("-") else "ASC"
        if s.count_limit is None:
            counting = "SELECT COUNT(*) FROM quarantine" + where
        else:
            counting = (
                f"SELECT COUNT(*) FROM (SELECT 1 FROM quarantine{where} "
                f"LIMIT {max(0, int(s.count_limit)) + 1}) AS capped"
            )
        with self._reading() as db:
            total = int(db.execute(self._sql(counting), params).fetchone()[0])
            hint = self._page_hint(s, key, total)
            # The page's ids first, from the indexes alone where they suffice; then
            # only those rows are read whole (findings and all).
            rows = db.execute(
                self._sql(
                    f"SELECT {COLUMNS} FROM quarantine WHERE id IN "
                    f"(SELECT id FROM quarantine{hint}{where} "
                    f"ORDER BY {key} {order}, id {order} LIMIT ? OFFSET ?) "
                    f"ORDER BY {key} {order}, id {order}"
                ),
                [*params, s.per_page, (s.page - 1) * s.per_page],
            ).fetchall()
        return [row_to_record(r) for r in rows], total

    def _page_hint(self, s: Search, key: str, matches: int) -> str:
        """How the page's rows are found, where the database's planner needs telling
        (SQLite: see there); empty for a planner that weighs it itself."""
        return ""

    def _agencies_where(
        self, sender_domains: tuple[str, ...] | None
    ) -> tuple[str, builtins.list[Any]]:
        if sender_domains is None:
            return "", []
        ranges = [self._agency_range(d) for d in sender_domains]
        params: builtins.list[Any] = [p for _, ps in ranges for p in ps]
        return " AND (" + (" OR ".join(c for c, _ in ranges) or "1 = 0") + ")", params

    def record_rejection(
        self,
        *,
        at: float,
        queue_id: str,
        sender: str,
        recipients: Iterable[str],
        rules: Iterable[str],
        clauses: Iterable[str],
    ) -> None:
        with self._transaction() as db:
            db.execute(
                self._sql(
                    "INSERT INTO rejections (at, queue_id, sender, sender_rdomain, recipients, "
                    "rules, clauses) VALUES (?, ?, ?, ?, ?, ?, ?)"
                ),
                (
                    at,
                    queue_id,
                    sender,
                    reversed_domain(sender),
                    encode_list(list(recipients)),
                    encode_list(list(rules)),
                    encode_list(list(clauses)),
                ),
            )

    def facts(
        self, since: float, until: float, sender_domains: tuple[str, ...] | None = None
    ) -> builtins.list[Fact]:
        agencies, extra = self._agencies_where(sender_domains)
        with self._reading() as db:
            held = db.execute(
                self._sql(
                    "SELECT received_at, status, sender, recipients, rules, clauses "
                    f"FROM quarantine WHERE received_at >= ? AND received_at < ?{agencies}"
                ),
                [since, until, *extra],
            ).fetchall()
            refused = db.execute(
                self._sql(
                    "SELECT at, sender, recipients, rules, clauses "
                    f"FROM rejections WHERE at >= ? AND at < ?{agencies}"
                ),
                [since, until, *extra],
            ).fetchall()
        out = [
            Fact(float(r[0]), r[1], r[2], decode_list(r[3]), decode_list(r[4]), decode_list(r[5]))
            for r in held
        ]
        out += [
            Fact(
                float(r[0]), REJECTED, r[1], decode_list(r[2]), decode_list(r[3]), decode_list(r[4])
            )
            for r in refused
        ]
        return out

    def audit_for(self, qid: str) -> builtins.list[AuditEntry]:
        with self._reading() as db:
            rows = db.execute(
                self._sql(f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE qid = ? ORDER BY seq"),
                (qid,),
            ).fetchall()
        return [AuditEntry(int(r[0]), *r[1:]) for r in rows]

    # -- the retry queue --------------------------------------------------------------
    # The gateway's own queue of deferred deliveries (``milter.app.retryqueue``), claimed
    # and settled like the notice outbox (``_claim_due``, ``_settle``). Where its bytes
    # live is the back-end's: ``_retry_write`` / ``_retry_bytes`` / ``_retry_discard``.

    # True where the bytes go in the row's ``data`` column (one database shared by
    # nodes); False where ``_retry_write`` puts them in a local spool first.
    retry_bytes_in_row: ClassVar[bool] = False

    def _retry_write(self, entry_id: str, data: bytes) -> None:
        """Make an entry's bytes durable before its row is committed."""

    def _retry_bytes(self, db: Executor, entry_id: str) -> bytes:
        row = db.execute(
            self._sql("SELECT data FROM retry_queue WHERE id = ?"), (entry_id,)
        ).fetchone()
        if row is None or row[0] is None:
            raise NotFound(f"no bytes kept for queue entry {entry_id!r}")
        return bytes(row[0])

    def _retry_discard(self, entry_id: str) -> None:
        """Remove bytes kept outside the database once the entry is settled."""

    def retry_add(self, entry: RetryEntry, data: bytes) -> None:
        values: builtins.list[Any] = [
            entry.id,
            entry.queue_id,
            entry.sender,
            encode_list(entry.recipients),
            entry.route,
            entry.created_at,
            entry.next_attempt,
            entry.size,
            1 if entry.smtputf8 else 0,
            json.dumps(dict(entry.dsn), ensure_ascii=False),
            json.dumps(dict(entry.info), ensure_ascii=False, default=str),
            RETRY_QUEUED,
            entry.created_at,
            entry.last_error,
        ]
        columns = RETRY_INSERT
        if self.retry_bytes_in_row:
            columns += ", data"
            values.append(data)
        else:
            self._retry_write(entry.id, data)
        marks = ", ".join("?" * len(values))
        try:
            with self._transaction() as db:
                sql = f"INSERT INTO retry_queue ({columns}) VALUES ({marks})"
                db.execute(self._sql(sql), values)
        except BaseException:
            if not self.retry_bytes_in_row:
                self._retry_discard(entry.id)
            raise

    def retry_get(self, entry_id: str) -> RetryEntry | None:
        with self._reading() as db:
            row = db.execute(
                self._sql(f"SELECT {RETRY_COLUMNS} FROM retry_queue WHERE id = ?"), (entry_id,)
            ).fetchone()
        return row_to_retry(row) if row else None

    def retry_list(self, status: str | None = None) -> builtins.list[RetryEntry]:
        sql = f"SELECT {RETRY_COLUMNS} FROM retry_queue WHERE status IN (?, ?)"
        params: builtins.list[Any] = [RETRY_QUEUED, RETRY_SENDING]
        if status is not None:
            sql = f"SELECT {RETRY_COLUMNS} FROM retry_queue WHERE status = ?"
            params = [status]
        with self._reading() as db:
            rows = db.execute(self._sql(sql + " ORDER BY created_at, id"), params).fetchall()
        return [row_to_retry(r) for r in rows]

    def retry_read(self, entry_id: str) -> bytes:
        with self._reading() as db:
            row = db.execute(
                self._sql("SELECT status FROM retry_queue WHERE id = ?"), (entry_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no queue entry {entry_id!r}")
            if row[0] not in (RETRY_QUEUED, RETRY_SENDING):
                raise NotFound(f"queue entry {entry_id} is {row[0]}; its message is not kept")
            return self._retry_bytes(db, entry_id)

    def retry_claim(
        self, now: float, *, limit: int = 20, lease: float = 600.0
    ) -> builtins.list[RetryEntry]:
        rows = self._claim_due(
            "retry_queue",
            RETRY_COLUMNS,
            now,
            limit=limit,
            lease=lease,
            queued=RETRY_QUEUED,
            sending=RETRY_SENDING,
        )
        return sorted((row_to_retry(r) for r in rows), key=lambda e: (e.next_attempt, e.id))

    def retry_settle(
        self,
        entry_id: str,
        claim: str,
        *,
        status: str,
        now: float,
        error: str,
        next_attempt: float | None = None,
        recipients: Iterable[str] | None = None,
        delay_notified: bool | None = None,
    ) -> bool:
        assignments = "status = ?, updated_at = ?, last_error = ?"
        values: builtins.list[Any] = [status, now, error]
        if next_attempt is not None:
            assignments += ", next_attempt = ?"
            values.append(next_attempt)
        if recipients is not None:
            assignments += ", recipients = ?"
            values.append(encode_list(list(recipients)))
        if delay_notified is not None:
            assignments += ", delay_notified = ?"
            values.append(1 if delay_notified else 0)
        settled = status not in (RETRY_QUEUED, RETRY_SENDING)
        if settled and self.retry_bytes_in_row:
            assignments += ", data = NULL"
        ok = self._settle(
            entry_id, claim, assignments, values, table="retry_queue", sending=RETRY_SENDING
        )
        if ok and settled:
            self._retry_discard(entry_id)
        return ok

    def retry_unclaim(self, claims: Iterable[str], now: float) -> None:
        with self._transaction() as db:
            for claim in claims:
                db.execute(
                    self._sql(
                        "UPDATE retry_queue SET status = ?, claim = NULL, next_attempt = ?, "
                        "attempts = attempts - 1, updated_at = ? WHERE claim = ? AND status = ?"
                    ),
                    (RETRY_QUEUED, now, now, claim, RETRY_SENDING),
                )

    def retry_now(self, entry_id: str | None, now: float) -> int:
        sql = "UPDATE retry_queue SET next_attempt = ?, updated_at = ? WHERE status = ?"
        params: builtins.list[Any] = [now, now, RETRY_QUEUED]
        if entry_id is not None:
            sql += " AND id = ?"
            params.append(entry_id)
        with self._transaction() as db:
            rows = db.execute(self._sql(sql + " RETURNING id"), params).fetchall()
        return len(rows)

    def retry_delete(self, entry_id: str, actor: str, reason: str, *, action: str) -> RetryEntry:
        drop = ", data = NULL" if self.retry_bytes_in_row else ""
        with self._transaction() as db:
            row = db.execute(
                self._sql("SELECT status FROM retry_queue WHERE id = ?" + self.for_update),
                (entry_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"no queue entry {entry_id!r}")
            if row[0] != RETRY_QUEUED:
                raise StateConflict(entry_id, row[0], RETRY_QUEUED)
            db.execute(
                self._sql(
                    f"UPDATE retry_queue SET status = ?, updated_at = ?, last_error = ?{drop} "
                    "WHERE id = ?"
                ),
                (RETRY_DELETED, time.time(), f"{action}: {reason}", entry_id),
            )
            self._append(db, actor, action, entry_id, reason)
            out = db.execute(
                self._sql(f"SELECT {RETRY_COLUMNS} FROM retry_queue WHERE id = ?"), (entry_id,)
            ).fetchone()
        self._retry_discard(entry_id)
        return row_to_retry(out)

    def retry_stats(self) -> tuple[int, float | None]:
        with self._reading() as db:
            row = db.execute(
                self._sql(
                    "SELECT COUNT(*), MIN(created_at) FROM retry_queue WHERE status IN (?, ?)"
                ),
                (RETRY_QUEUED, RETRY_SENDING),
            ).fetchone()
        return int(row[0]), (float(row[1]) if row[1] is not None else None)

    def _purge_retry(self, cutoff: float) -> None:
        """Forget entries settled before ``cutoff`` (the log keeps what happened)."""
        with self._transaction() as db:
            db.execute(
                self._sql("DELETE FROM retry_queue WHERE status IN (?, ?, ?) AND updated_at < ?"),
                (RETRY_SENT, RETRY_FAILED, RETRY_DELETED, cutoff),
            )


RETRY_INSERT = (
    "id, queue_id, sender, recipients, route, created_at, next_attempt, size, smtputf8, "
    "dsn, info, status, updated_at, last_error"
)
RETRY_COLUMNS = (
    "id, queue_id, sender, recipients, route, created_at, next_attempt, size, smtputf8, "
    "dsn, info, attempts, status, last_error, updated_at, delay_notified, claim"
)


def row_to_retry(row: Sequence[Any]) -> RetryEntry:
    """The entry a ``RETRY_COLUMNS`` row describes."""
    return RetryEntry(
        id=row[0],
        queue_id=row[1],
        sender=row[2],
        recipients=decode_list(row[3]),
        route=row[4],
        created_at=float(row[5]),
        next_attempt=float(row[6]),
        size=int(row[7]),
        smtputf8=bool(row[8]),
        dsn=json.loads(row[9] or "{}"),
        info=json.loads(row[10] or "{}"),
        attempts=int(row[11]),
        status=row[12],
        last_error=row[13] or "",
        updated_at=float(row[14]) if row[14] is not None else None,
        delay_notified=bool(row[15]),
        claim=row[16] or "",
    )
