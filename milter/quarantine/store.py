"""The quarantine store: the interface the gateway and the officers' CLI rely on.

A quarantined message is evidence. The gateway answers ``250`` only once both the
original bytes and the record describing them are durable, so a crash at any point
leaves either nothing (the client retries after its ``4xx``) or a complete record.
Every change of a record's status and every officer action goes into an audit log
whose entries each carry the SHA-256 of the previous one: editing, deleting or
reordering a row breaks the chain, which ``verify_audit`` reports.

Two back-ends implement it: ``milter.quarantine.sqlite`` (one node, the default) and
``milter.quarantine.postgres`` (several nodes sharing one database), both on the
common SQL store in ``milter.quarantine.sql``. ``open_store`` picks one from the
configured URL.
"""

from __future__ import annotations

import builtins
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from milter.config import QuarantineConfig
from milter.envelope import new_id

HELD = "held"
RELEASED = "released"
DELETED = "deleted"
EXPIRED = "expired"
# Approved by one officer, waiting for a second, different one (``review.two_person``).
PENDING = "pending"
STATUSES = (HELD, PENDING, RELEASED, DELETED, EXPIRED)

# The states of a row of the notice outbox (``notice_outbox``).
NOTICE_QUEUED = "queued"  # waiting for its next attempt
NOTICE_SENDING = "sending"  # claimed by one worker, which is sending it now
NOTICE_SENT = "sent"  # the next hop took it (2xx)
NOTICE_FAILED = "failed"  # given up after the configured age

# The audit action recorded for each status a record moves into, unless the caller
# names a more precise one (for example ``release-failed`` when moving back to held).
ACTION_FOR_STATUS = {
    HELD: "hold",
    PENDING: "approve",
    RELEASED: "release",
    DELETED: "delete",
    EXPIRED: "expire",
}

GENESIS = "0" * 64

# Named points inside ``put`` where a test can stop the process to prove crash safety.
STEP_SPOOL_WRITTEN = "spool-written"  # temp file written and fsync'd, not yet renamed
STEP_SPOOL_RENAMED = "spool-renamed"  # renamed and directory fsync'd, row not committed
STEP_COMMITTED = "committed"  # row committed

StepHook = Callable[[str], None]


class QuarantineError(Exception):
    """Base of every quarantine store failure."""


class StoreUnavailable(QuarantineError):
    """The database or spool cannot be opened or written."""


class NotFound(QuarantineError):
    """No such quarantine id, or its message bytes are gone (deleted or expired)."""


class StateConflict(QuarantineError):
    """A transition was refused because the record is not in the expected status."""

    def __init__(self, qid: str, status: str, expected: str | None) -> None:
        super().__init__(f"{qid} is {status}, not {expected}")
        self.qid, self.status, self.expected = qid, status, expected


@dataclass(frozen=True)
class QuarantineRecord:
    """What was held, why, and for whom; enough to explain and to release it."""

    id: str
    received_at: float
    client: str
    sender: str
    recipients: tuple[str, ...]  # the recipients held, not every envelope recipient
    subject: str
    size: int
    classification: str | None = None
    labels: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    clauses: tuple[str, ...] = ()
    findings: Mapping[str, Any] = field(default_factory=dict)
    status: str = HELD
    route: str = "upstream"  # where the held recipients would have gone
    queue_id: str = ""  # the gateway's own transaction id
    updated_at: float | None = None
    # Where it came from: the ``Envelope.origin()`` fields (front-end, client address
    # and name, HELO, SASL login, the queue id of the MTA in front of the gateway).
    origin: Mapping[str, str] = field(default_factory=dict)
    # How a release sends it; written and read by the application's release code
    # only (the store keeps it as it was given).
    release_plan: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        origin = self.origin
        return {
            "id": self.id,
            "received_at": self.received_at,
            "client": self.client,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "subject": self.subject,
            "size": self.size,
            "classification": self.classification,
            "labels": list(self.labels),
            "rules": list(self.rules),
            "clauses": list(self.clauses),
            "findings": dict(self.findings),
            "status": self.status,
            "route": self.route,
            # The MTA's queue id where one was in front (Postfix's, to follow the
            # message through its log); else the gateway's own.
            "queue_id": origin.get("queue_id") or self.queue_id,
            "transaction_id": self.queue_id,
            "frontend": origin.get("frontend", "smtp"),
            "client_address": origin.get("client_address") or self.client,
            "client_name": origin.get("client_name", ""),
            "helo": origin.get("helo", ""),
            "login": origin.get("login", ""),
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class OutboxNotice:
    """One notice in the durable outbox: written before its first attempt, so a next
    hop that refuses it, or a worker that dies while sending, loses nothing."""

    id: int
    kind: str  # quarantine-notice | officer-alert | audit-alert | rule-alert | dsn
    sender: str  # the envelope sender of the message the notice is about
    recipients: tuple[str, ...]  # those still to be reached
    data: bytes
    attempts: int  # attempts started, this one included once claimed
    next_attempt: float
    status: str
    last_error: str
    created_at: float
    claim: str = ""  # the token of the worker that claimed it, while sending


# -- the retry queue -------------------------------------------------------------------
# Recipients the gateway took responsibility for (it answered 250 because another way
# out of the same message had accepted it) while their own next hop deferred: kept in
# the ``retry_queue`` table and retried until delivered, refused or too old.
RETRY_QUEUED = "queued"  # waiting for its next attempt
RETRY_SENDING = "sending"  # claimed by one worker, which is sending it now
RETRY_SENT = "sent"  # every recipient was taken (2xx) or refused for good
RETRY_FAILED = "failed"  # given up (5xx from the next hop, or ``queue.max_age``)
RETRY_DELETED = "deleted"  # removed by an operator, or withdrawn by the gateway
RETRY_STATUSES = (RETRY_QUEUED, RETRY_SENDING, RETRY_SENT, RETRY_FAILED, RETRY_DELETED)


@dataclass(frozen=True)
class RetryEntry:
    """One deferred delivery: who still has to receive which exact bytes, and how.

    ``data`` (the bytes prepared for this way out: rewritten, signed) is kept apart,
    written durably before the row is committed (``retry_add``) and read by ``retry_read``.
    """

    id: str
    queue_id: str  # the transaction the gateway answered 250
    sender: str
    recipients: tuple[str, ...]  # still to reach (bcc addresses of the group included)
    route: str
    created_at: float
    next_attempt: float
    size: int = 0
    smtputf8: bool = False
    dsn: Mapping[str, Any] = field(default_factory=dict)  # ``Dsn`` fields, as JSON
    # For people and notices: subject, the original recipients, rules, rewrites, bcc.
    info: Mapping[str, Any] = field(default_factory=dict)
    attempts: int = 0
    status: str = RETRY_QUEUED
    last_error: str = ""
    updated_at: float | None = None
    delay_notified: bool = False
    claim: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "queue_id": self.queue_id,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "route": self.route,
            "created_at": self.created_at,
            "next_attempt": self.next_attempt,
            "size": self.size,
            "smtputf8": self.smtputf8,
            "dsn": dict(self.dsn),
            "info": dict(self.info),
            "attempts": self.attempts,
            "status": self.status,
            "last_error": self.last_error,
            "updated_at": self.updated_at,
            "delay_notified": self.delay_notified,
        }


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit trail; ``hash`` covers every other field and ``prev_hash``."""

    seq: int
    at: float
    actor: str
    action: str
    qid: str
    reason: str
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "id": self.qid,
            "reason": self.reason,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def audit_hash(
    prev_hash: str, *, seq: int, at: float, actor: str, action: str, qid: str, reason: str
) -> str:
    """The chained digest of one entry: canonical JSON, so every back-end agrees."""
    body = json.dumps(
        [prev_hash, seq, repr(float(at)), actor, action, qid, reason],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _entry_hash(e: AuditEntry) -> str:
    return audit_hash(
        e.prev_hash, seq=e.seq, at=e.at, actor=e.actor, action=e.action, qid=e.qid, reason=e.reason
    )


def chain_problems(entries: Iterable[AuditEntry]) -> list[str]:
    """Every break in the chain, in words; empty when the log is intact.

    Removing the newest entries leaves a shorter but consistent chain; the back-ends
    therefore also compare each record's status with its last audited action.
    """
    problems: list[str] = []
    prev = GENESIS
    expected_seq = 1
    for e in entries:
        if e.seq != expected_seq:
            problems.append(f"entry {e.seq}: expected sequence {expected_seq} (entry missing)")
        if e.prev_hash != prev:
            problems.append(f"entry {e.seq}: does not follow the previous entry")
        if _entry_hash(e) != e.hash:
            problems.append(f"entry {e.seq}: content does not match its hash (edited)")
        prev = e.hash
        expected_seq = e.seq + 1
    return problems


# Which audited action must be the last one for a record in a given status.
_LAST_ACTION_FOR_STATUS = {
    HELD: {"quarantine", "hold", "release-failed"},
    PENDING: {"approve"},
    RELEASED: {"release", "release-partial"},
    DELETED: {"delete", "withdraw"},  # withdraw: the gateway's own, when a hold's
    # transaction was answered 4xx and the client will send the message again
    EXPIRED: {"expire"},
}


_STATUS_ACTIONS = set().union(*_LAST_ACTION_FOR_STATUS.values())


def status_problems(statuses: Mapping[str, str], entries: Iterable[AuditEntry]) -> list[str]:
    """Records whose status the audit log does not account for (truncated or forged)."""
    last: dict[str, str] = {}
    for e in entries:
        if e.action in _STATUS_ACTIONS:
            last[e.qid] = e.action
    problems = []
    for qid, status in sorted(statuses.items()):
        action = last.get(qid)
        if action is None:
            problems.append(f"record {qid}: no audit entry")
        elif action not in _LAST_ACTION_FOR_STATUS.get(status, set()):
            problems.append(f"record {qid}: status {status} but last audited action is {action}")
    return problems


def matches(
    record: QuarantineRecord,
    status: str | None,
    since: float | None,
    sender: str | None,
    rule: str | None,
) -> bool:
    """The list filter, shared by the back-ends so both answer the same way.

    ``sender`` is an address (case-insensitive) or ``@domain``.
    """
    if status is not None and record.status != status:
        return False
    if since is not None and record.received_at < since:
        return False
    if sender:
        s = sender.lower()
        have = record.sender.lower()
        if s.startswith("@"):
            if not have.endswith(s):
                return False
        elif have != s:
            return False
    return rule is None or rule in record.rules


# The orders the list page may ask for; a leading ``-`` means descending.
SEARCH_SORTS = ("received_at", "sender", "subject", "size", "classification", "status")


@dataclass(frozen=True)
class Search:
    """One page of the review list: every non-empty filter must hold.

    ``q`` is free text over subject, sender and recipients; ``sender`` is an address
    or ``@domain``; ``recipient`` an address; ``rule`` a rule name. Text compares
    case-insensitively. ``sender_domains`` restricts to the agencies a head of agency
    may see (subdomains included); None means no restriction, an empty tuple nothing.
    """

    q: str = ""
    sender: str = ""
    recipient: str = ""
    rule: str = ""
    classification: str = ""
    status: str = ""
    since: float | None = None
    until: float | None = None
    sender_domains: tuple[str, ...] | None = None
    sort: str = "-received_at"
    page: int = 1
    per_page: int = 50
    # Count no further than this: a list page needs to know whether there is a next
    # page, not that 24,126 messages match (counting them all is most of the cost of
    # a broad search). When more match, the total is ``count_limit + 1``. None: exact.
    count_limit: int | None = None

    def __post_init__(self) -> None:
        if self.sort.lstrip("-") not in SEARCH_SORTS:
            raise QuarantineError(f"cannot sort by {self.sort!r}; expected one of {SEARCH_SORTS}")
        if self.page < 1 or not 1 <= self.per_page <= 1000:
            raise QuarantineError("page must be >= 1 and per_page between 1 and 1000")
        if self.status:
            check_status(self.status)


def reversed_domain(address_or_domain: str) -> str:
    """``a@bpkd.jakarta.go.id`` -> ``id.go.jakarta.bpkd.``: an agency and all its
    subdomains then share one prefix, which an index answers as a range."""
    domain = address_or_domain.rpartition("@")[2].strip().strip(".").lower()
    return ".".join(reversed(domain.split("."))) + "." if domain else ""


# ``Fact.status`` of a message refused outright (``record_rejection``), never held.
REJECTED = "rejected"


@dataclass(frozen=True)
class Fact:
    """One held or rejected message, as the agency figures (clause 3.b) count it."""

    at: float  # received (held) or refused (rejected)
    status: str  # a record's status, or REJECTED
    sender: str
    recipients: tuple[str, ...]
    rules: tuple[str, ...]
    clauses: tuple[str, ...]


def record_for_put(record: QuarantineRecord) -> QuarantineRecord:
    """The record as stored: a fresh id when none was given, status ``held``."""
    return replace(record, id=record.id or new_id(), status=HELD, updated_at=None)


def check_status(new_status: str) -> None:
    if new_status not in STATUSES:
        raise QuarantineError(f"unknown status {new_status!r}; expected one of {STATUSES}")


class QuarantineStore(ABC):
    """The durable quarantine and its audit log; every method is safe to call from threads."""

    @abstractmethod
    def put(self, data: bytes, record: QuarantineRecord) -> str:
        """Store the message and its record durably; return the quarantine id.

        The id is ``record.id``, or a fresh one when that is empty. When this returns,
        both the bytes and the record survive a crash; when it raises, neither exists.
        """

    @abstractmethod
    def get(self, qid: str) -> QuarantineRecord | None: ...

    @abstractmethod
    def list(
        self,
        status: str | None = None,
        since: float | None = None,
        sender: str | None = None,
        rule: str | None = None,
    ) -> builtins.list[QuarantineRecord]:
        """Records matching every given filter, oldest first."""

    @abstractmethod
    def read(self, qid: str) -> bytes:
        """The original message bytes; NotFound when unknown, deleted or expired."""

    @abstractmethod
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
        """Move a record to ``new_status`` and audit it, atomically.

        Refused with StateConflict unless the record is in ``expected`` (None accepts
        any status), so two officers cannot both release one message. Moving to
        ``deleted`` or ``expired`` discards the message bytes.
        """

    @abstractmethod
    def expire(self, now: float, retention: float) -> builtins.list[str]:
        """Expire held records older than ``retention`` seconds; return their ids.

        Also discards bytes left behind by interrupted writes and by records that
        are no longer held.
        """

    @abstractmethod
    def append_audit(self, actor: str, action: str, qid: str, reason: str) -> AuditEntry:
        """Record an officer action that changes no status (for example an export)."""

    @abstractmethod
    def audit_entries(self) -> builtins.list[AuditEntry]: ...

    def audit_for(self, qid: str) -> builtins.list[AuditEntry]:
        """The audit entries about one message, oldest first."""
        return [e for e in self.audit_entries() if e.qid == qid]

    def search(self, s: Search) -> tuple[builtins.list[QuarantineRecord], int]:
        """One page of the records ``s`` selects, and how many match in all."""
        raise StoreUnavailable("this quarantine store cannot search")

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
        """Keep a durable trace of recipients the policy rejected (for the agency
        figures): the quarantine sees only what was held."""
        raise StoreUnavailable("this quarantine store keeps no rejections")

    def facts(
        self, since: float, until: float, sender_domains: tuple[str, ...] | None = None
    ) -> builtins.list[Fact]:
        """Holds received and rejections made in [since, until), from ``sender_domains``
        (subdomains included; None: every sender)."""
        raise StoreUnavailable("this quarantine store keeps no figures")

    @abstractmethod
    def verify_audit(self) -> builtins.list[str]:
        """Every sign of tampering with the audit log; empty when intact."""

    @abstractmethod
    def close(self) -> None: ...

    # -- the notice outbox ------------------------------------------------------------
    # Not abstract: a store without an outbox (a test double, say) still works, and the
    # notifier then sends without one.

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
        """Store a notice durably, due now; return its id.

        With ``rate_key``, None instead when ``rate_limit`` notices with that key were
        queued within ``window`` seconds: counted in the shared table, so the limit
        holds across the workers and nodes sharing the database.
        """
        raise StoreUnavailable("this quarantine store has no notice outbox")

    def claim_notices(
        self, now: float, *, limit: int = 20, lease: float = 600.0
    ) -> builtins.list[OutboxNotice]:
        """Atomically claim up to ``limit`` due notices for this caller alone.

        Due: queued with ``next_attempt <= now``, or claimed by a worker more than
        ``lease`` seconds ago that never reported back (it died). Each claim counts an
        attempt.
        """
        raise StoreUnavailable("this quarantine store has no notice outbox")

    def notice_sent(self, notice_id: int, claim: str, now: float) -> bool:
        """Mark a claimed notice sent; False when the claim was lost meanwhile."""
        raise StoreUnavailable("this quarantine store has no notice outbox")

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
        """Put a claimed notice back in the queue until ``next_attempt``, with only
        ``recipients`` still to reach when given."""
        raise StoreUnavailable("this quarantine store has no notice outbox")

    def notice_failed(self, notice_id: int, claim: str, *, now: float, error: str) -> bool:
        """Give a claimed notice up for good."""
        raise StoreUnavailable("this quarantine store has no notice outbox")

    def unclaim_notices(self, claims: Iterable[str], now: float) -> None:
        """Requeue, due now, what these claims still hold (a worker stopping)."""
        raise StoreUnavailable("this quarantine store has no notice outbox")

    def outbox(self, status: str | None = None) -> builtins.list[OutboxNotice]:
        """Every notice in the outbox (with ``status``), oldest first."""
        raise StoreUnavailable("this quarantine store has no notice outbox")

    # -- the retry queue --------------------------------------------------------------
    # Not abstract either: without one the gateway answers as before (451 when any way
    # out deferred). The SQL back-ends implement these in ``milter.quarantine.sql``.

    def retry_add(self, entry: RetryEntry, data: bytes) -> None:
        """Store an entry and its bytes durably, due at ``entry.next_attempt``: when this
        returns both survive a crash; when it raises, neither is visible."""
        raise StoreUnavailable("this quarantine store has no retry queue")

    def retry_get(self, entry_id: str) -> RetryEntry | None:
        raise StoreUnavailable("this quarantine store has no retry queue")

    def retry_list(self, status: str | None = None) -> builtins.list[RetryEntry]:
        """Entries (with ``status``; None: those still to be sent), oldest first."""
        raise StoreUnavailable("this quarantine store has no retry queue")

    def retry_read(self, entry_id: str) -> bytes:
        """The bytes an entry sends; NotFound once it is settled."""
        raise StoreUnavailable("this quarantine store has no retry queue")

    def retry_claim(
        self, now: float, *, limit: int = 20, lease: float = 600.0
    ) -> builtins.list[RetryEntry]:
        """Atomically claim due entries for this caller alone (as ``claim_notices``)."""
        raise StoreUnavailable("this quarantine store has no retry queue")

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
        """Record the outcome of a claimed attempt; False when the claim was lost.
        A settled entry (sent, failed) drops its bytes."""
        raise StoreUnavailable("this quarantine store has no retry queue")

    def retry_unclaim(self, claims: Iterable[str], now: float) -> None:
        """Requeue, due now, what these claims still hold (a worker stopping)."""
        raise StoreUnavailable("this quarantine store has no retry queue")

    def retry_now(self, entry_id: str | None, now: float) -> int:
        """Make a queued entry (None: every queued entry) due now; how many were."""
        raise StoreUnavailable("this quarantine store has no retry queue")

    def retry_delete(self, entry_id: str, actor: str, reason: str, *, action: str) -> RetryEntry:
        """Remove an entry that is not being sent, with an audit entry in the same
        transaction; NotFound or StateConflict otherwise."""
        raise StoreUnavailable("this quarantine store has no retry queue")

    def retry_stats(self) -> tuple[int, float | None]:
        """(entries still to be sent, creation time of the oldest of them)."""
        raise StoreUnavailable("this quarantine store has no retry queue")

    def __enter__(self) -> QuarantineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(config: QuarantineConfig, step_hook: StepHook | None = None) -> QuarantineStore:
    """The store the configuration names: ``sqlite:///PATH`` or ``postgresql://...``."""
    url = config.database
    if url.startswith("sqlite:///"):
        # Imported here: the back-ends import this module, and psycopg loads only when used.
        from milter.quarantine.sqlite import SqliteStore

        # The loader makes paths absolute (``sqlite:////abs``); the built-in default
        # ``sqlite:///var/lib/...`` means the same absolute path.
        rest = url[len("sqlite:///") :]
        path = rest if rest.startswith("/") else "/" + rest
        return SqliteStore(path, config.spool, step_hook=step_hook)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from milter.quarantine.postgres import PostgresStore
        except ModuleNotFoundError as exc:
            # The driver is an optional extra: a single-node gateway on SQLite never needs it.
            if (exc.name or "").partition(".")[0] != "psycopg":
                raise
            raise StoreUnavailable(
                "a postgresql:// quarantine needs the PostgreSQL driver: "
                "pip install 'milter[postgres]'"
            ) from None

        return PostgresStore(url, step_hook=step_hook)
    raise StoreUnavailable(f"unsupported quarantine database URL: {url}")
