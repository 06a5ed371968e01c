"""Who hears about a message after its outcome, and getting the notices to them.

The texts live in ``milter.actions.notices``; this module decides who gets what:

- held mail: the internal sender gets a quarantine notice and the compliance
  officers an alert, always (never an external or null sender: no backscatter);
  addresses a holding rule names in ``notify`` get the alert too;
- audit-mode rules: the officers (a rule in audit mode applies none of its own
  actions, its ``notify`` included); test-mode rules are recorded only;
- other enforce-mode rules with ``notify`` (reject, route, deliver): a rule alert to
  the officers and addresses they name, and its own copy to the sender when named
  and internal (so that the sender's rate limit never costs the officers theirs);
- recipients refused while others were served: a delivery status notification to
  the internal sender.

Notices go through the upstream with a null envelope sender, after the client has its
reply, via a durable outbox: each notice is a row of the quarantine database's
``notice_outbox`` before the first attempt, marked sent on the next hop's 2xx, and
otherwise retried with growing delays until ``notices.give_up``. Each gateway worker
runs a sender that claims due rows atomically, so the workers and nodes sharing the
database never send one row twice; a worker that dies mid-send leaves a claim that
expires after ``LEASE`` and the row is sent again (at least once: the only duplicate
possible is a notice whose 250 was lost with its worker). Notices to the sender are
limited per sender by counting that same table, which holds across workers and nodes.
A notice that fails is logged and counted, never turned into a failure of the mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import email.utils
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from milter import log, metrics
from milter.actions.notices import (
    Disposition,
    FailedRecipient,
    RateLimiter,
    Templates,
    audit_alert,
    dsn,
    officer_alert,
    quarantine_notice,
    rule_alert,
    should_notify_sender,
)
from milter.config import GatewayConfig
from milter.delivery import Deliverer, DeliveryResult
from milter.envelope import Envelope
from milter.inspect.findings import Findings
from milter.message import Message
from milter.policy.verdict import Verdict
from milter.quarantine.store import OutboxNotice, QuarantineStore, open_store

if TYPE_CHECKING:
    from milter.app.pipeline import Outcome

# A claim not settled within this long belongs to a worker that died: the row is due
# again. Far above one SMTP transaction's timeouts, so a slow next hop is not a death.
LEASE = 900.0
# How often a worker looks for due rows it was not woken for (another worker's, or its
# own retries), at most; shorter retry delays shorten it.
POLL = 30.0
BATCH = 20
RATE_WINDOW = 3600.0


def _addresses(targets: Iterable[str]) -> list[str]:
    return sorted({t for t in targets if t not in ("sender", "officers") and "@" in t})


def _count(kind: str, result: str) -> None:
    """``milter_notices{kind, result}`` where the metrics module has it."""
    counter = getattr(metrics, "NOTICES", None)
    if counter is not None:
        counter.labels(kind, result).inc()


def _sender_name(message: Message, sender: str) -> str:
    """The From header's display name, when that header names the envelope sender:
    a name beside some other address is not this sender's to be called by."""
    try:
        head = message.head()
    except Exception:
        return ""
    parsed = email.message_from_bytes(head, policy=email.policy.default)
    try:
        value = parsed.get("From")
    except Exception:
        return ""
    if value is None:
        return ""
    name, addr = email.utils.parseaddr(str(value))
    if not name or addr.lower() != sender.strip("<>").lower():
        return ""
    return name.strip().strip('"').strip()


Send = Callable[[list[str], bytes], Awaitable[DeliveryResult]]


@dataclass(frozen=True)
class Pending:
    """A notice to queue: ``limited`` ones count against the sender's hourly limit."""

    kind: str
    recipients: list[str]
    data: bytes
    limited: bool = False


class ClaimingSender(ABC):
    """The worker side of a durable queue in the quarantine database (the notice outbox,
    the retry queue): a task that claims due rows, attempts each once, sleeps until woken
    or the next poll, and on stopping hands back what it still holds claimed.

    Subclasses supply ``run_once`` (claiming through ``self._claims``) and ``_unclaim``.
    """

    poll: float = POLL
    name = "queue"

    def __init__(self) -> None:
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._claims: set[str] = set()

    @abstractmethod
    async def run_once(self) -> int:
        """Claim the due rows and attempt each once; return how many were attempted."""

    @abstractmethod
    async def _unclaim(self, claims: set[str]) -> None:
        """Requeue, due now, the rows these claims still hold."""

    def wake(self) -> None:
        """Look for due rows now (one was just queued, or made due)."""
        self.start()
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                busy = await self.run_once() >= BATCH
            except Exception as exc:
                log.failure(f"{self.name}-failed", exc, logging.WARNING)
                busy = False
            if busy:
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)

    def start(self) -> None:
        """Run the sender in this event loop (once); a no-op outside one."""
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._task = loop.create_task(self._loop())
        self._wake.set()  # rows a previous run left behind

    async def close(self) -> None:
        """Stop the sender; what it holds claimed goes back to the queue, due now."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._claims:
            claims, self._claims = set(self._claims), set()
            with contextlib.suppress(Exception):
                await self._unclaim(claims)


class NoticeOutbox(ClaimingSender):
    """The durable queue of notices and the sender that works it, one per worker.

    ``store`` is called for the quarantine store the outbox lives in (opened on first
    use, so a worker that never notifies never connects); ``send`` delivers one notice.
    """

    name = "notice-outbox"

    def __init__(
        self,
        store: Callable[[], QuarantineStore],
        send: Send,
        *,
        retry: Sequence[float] = (60.0, 300.0, 900.0, 3600.0),
        give_up: float = 2 * 86400.0,
        clock: Callable[[], float] = time.time,
        lease: float = LEASE,
        autostart: bool = True,
    ) -> None:
        super().__init__()
        self._store = store
        # False leaves every attempt to explicit ``run_once`` calls (tests, tools).
        self.autostart = autostart
        self._send = send
        self.retry = tuple(retry) or (60.0,)
        self.give_up = give_up
        self.clock = clock
        self.lease = lease
        self.poll = min(POLL, max(0.05, min(self.retry)))
        # How blocking store calls run: the pipeline hands over its own store threads
        # (``StoreCalls``), so a frozen database never ties up the default pool.
        self.call: Callable[..., Awaitable[Any]] = asyncio.to_thread

    # -- queueing ---------------------------------------------------------------------

    async def submit(
        self, kind: str, sender: str, rcpts: Sequence[str], data: bytes, *, limit: int | None
    ) -> int | None:
        """Queue a notice durably and wake the sender; None when ``limit`` (notices to
        this sender per hour) is reached. Raises the store's error when it cannot."""
        store: QuarantineStore = await self.call(self._store)
        key = sender.strip("<>").lower() if limit is not None else None
        notice_id: int | None = await self.call(
            store.enqueue_notice,
            kind,
            sender,
            list(rcpts),
            data,
            now=self.clock(),
            rate_key=key,
            rate_limit=limit,
            window=RATE_WINDOW,
        )
        if notice_id is not None:
            _count(kind, "queued")
            if self.autostart:
                self.start()
                self._wake.set()
        return notice_id

    def delay(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failed attempt: the schedule, then its last."""
        return self.retry[min(max(attempts, 1), len(self.retry)) - 1]

    # -- sending ----------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim the due notices and attempt each once; return how many were attempted."""
        store: QuarantineStore = await self.call(self._store)
        claimed: list[OutboxNotice] = await self.call(
            store.claim_notices, self.clock(), limit=BATCH, lease=self.lease
        )
        self._claims.update(n.claim for n in claimed)
        try:
            for notice in claimed:
                await self._attempt(store, notice)
        finally:
            self._claims.difference_update(n.claim for n in claimed)
        return len(claimed)

    async def _attempt(self, store: QuarantineStore, notice: OutboxNotice) -> None:
        rcpts = list(notice.recipients)
        try:
            result = await self._send(rcpts, notice.data)
        except Exception as exc:  # a bug or a local failure: the row must not be stuck
            text = f"{type(exc).__name__}: {exc}"
            result = DeliveryResult(False, refused={a: (451, text) for a in rcpts}, code=451)
            result.message = text
        now = self.clock()
        accepted = set(result.accepted) if result.ok else set()
        if result.ok and not result.refused:
            accepted = set(rcpts)
        permanent = {a for a, (code, _) in result.refused.items() if code >= 500 and result.ok}
        remaining = [a for a in rcpts if a not in accepted and a not in permanent]
        for address in sorted(permanent):
            code, text = result.refused[address]
            log.event(
                "notice-refused",
                logging.WARNING,
                notice=notice.id,
                kind=notice.kind,
                to=address,
                reply=f"{code} {text}",
            )
        reply = f"{result.code} {result.message}".strip()
        if not remaining:
            await self.call(store.notice_sent, notice.id, notice.claim, now)
            _count(notice.kind, "sent")
            log.event(
                "notice",
                kind=notice.kind,
                notice=notice.id,
                to=sorted(accepted),
                attempts=notice.attempts,
                reply=reply,
            )
            return
        if now - notice.created_at >= self.give_up:
            await self.call(store.notice_failed, notice.id, notice.claim, now=now, error=reply)
            _count(notice.kind, "failed")
            log.event(
                "notice-given-up",
                logging.ERROR,
                kind=notice.kind,
                notice=notice.id,
                to=remaining,
                attempts=notice.attempts,
                reply=reply,
            )
            return
        wait = self.delay(notice.attempts)
        await self.call(
            store.notice_retry,
            notice.id,
            notice.claim,
            now=now,
            next_attempt=now + wait,
            error=reply,
            recipients=remaining,
        )
        log.event(
            "notice-deferred",
            logging.WARNING,
            kind=notice.kind,
            notice=notice.id,
            to=remaining,
            attempts=notice.attempts,
            retry_in=wait,
            reply=reply,
        )

    async def _unclaim(self, claims: set[str]) -> None:
        store: QuarantineStore = await self.call(self._store)
        await self.call(store.unclaim_notices, claims, self.clock())


class GatewayNotifier:
    """Sends the notices a message's outcome calls for."""

    def __init__(
        self,
        config: GatewayConfig,
        policy: Any,
        deliverer: Deliverer,
        store: QuarantineStore | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.deliverer = deliverer
        self.templates = Templates.load(config.notices.templates)
        # Only when the outbox cannot be reached: then the limit is this process's.
        self.limiter = RateLimiter(config.notices.rate_limit)
        self._store = store
        self._store_lock = threading.Lock()
        self.outbox = NoticeOutbox(
            self._outbox_store,
            self._deliver,
            retry=config.notices.retry,
            give_up=config.notices.give_up,
        )
        # Built inside a worker's event loop (``make_pipeline``): start sending now, so
        # notices a previous run left queued go out without waiting for new mail.
        self.outbox.start()

    def _outbox_store(self) -> QuarantineStore:
        """The store holding the outbox: the one given, else the configured quarantine
        opened once for the notices (a connection of their own)."""
        with self._store_lock:  # the sender and a submit may ask at once, from two threads
            if self._store is None:
                self._store = open_store(self.config.quarantine)
            return self._store

    async def submit_notice(self, kind: str, sender: str, rcpts: list[str], data: bytes) -> None:
        """Queue one notice about a message (the retry queue's DSNs and delay notices),
        counted against ``sender``'s hourly limit; sent directly when there is no outbox."""
        if not self.config.notices.enabled:
            return
        limit = self.config.notices.rate_limit
        try:
            queued = await self.outbox.submit(kind, sender, rcpts, data, limit=limit)
        except Exception as exc:
            log.failure("notice-outbox-unavailable", exc, logging.WARNING)
            if self.limiter.allow(sender.lower()):
                result = await self._deliver(rcpts, data)
                _count(kind, "sent" if result.ok else "failed")
            return
        if queued is None:
            log.event("notice-rate-limited", kind=kind, sender=sender)

    async def _deliver(self, rcpts: list[str], data: bytes) -> DeliveryResult:
        utf8 = any(not a.isascii() for a in rcpts)
        return await self.deliverer.send(
            "upstream", "", rcpts, Message.from_content(data), smtputf8=utf8
        )

    async def close(self) -> None:
        await self.outbox.close()

    def is_internal(self, address: str) -> bool:
        try:
            return bool(self.policy.in_set("internal", address))
        except KeyError:
            return False

    def descriptions(self) -> dict[str, dict[str, str]]:
        """Each rule's description per language, as the running policy gives it."""
        out: dict[str, dict[str, str]] = {}
        for rule in getattr(self.policy, "rules", ()) or ():
            given = dict(getattr(rule, "descriptions", ()) or ())
            if given:
                out[rule.name] = given
        return out

    async def after(
        self,
        env: Envelope,
        message: Message,
        findings: Findings | None,
        verdict: Verdict,
        outcome: Outcome,
    ) -> None:
        if not self.config.notices.enabled:
            return
        for pending in self.plan(env, message, findings, verdict, outcome):
            await self._queue(env, pending)

    def plan(
        self,
        env: Envelope,
        message: Message,
        findings: Findings | None,
        verdict: Verdict,
        outcome: Outcome,
    ) -> list[Pending]:
        """The notices this outcome calls for, built and addressed, not yet queued."""
        cfg = self.config.notices
        subject = findings.subject if findings is not None else ""
        sender_internal = should_notify_sender(env.mail_from, self.is_internal)
        name = _sender_name(message, env.mail_from) if sender_internal else ""
        modes = {r.name: r.mode for r in verdict.rules}
        asks = {n.rule: n.targets for n in verdict.notify}
        held_rules = {rule for record in outcome.records for rule in record.rules}
        held_in = {a: record.id for record in outcome.records for a in record.recipients}
        where = [
            Disposition(o.address, o.action, o.route, held_in.get(o.address))
            for o in outcome.recipients
        ]
        words = self.descriptions()
        t = self.templates
        retention = self.config.quarantine.retention
        out: list[Pending] = []

        for record in outcome.records:
            common: dict[str, Any] = {
                "verdict": verdict,
                "templates": t,
                "others": where,
                "sender_name": name,
                "retention": retention,
                "descriptions": words,
            }
            if sender_internal:
                notice = quarantine_notice(cfg, record, **common)
                out.append(Pending("quarantine-notice", [env.mail_from], notice, limited=True))
            alert = officer_alert(cfg, record, **common)
            if alert is not None:
                out.append(Pending("officer-alert", list(cfg.officers), alert))
            extra = _addresses(x for rule in record.rules for x in asks.get(rule, ()))
            if extra:
                alert = officer_alert(cfg, record, to=extra, **common)
                if alert is not None:
                    out.append(Pending("officer-alert", extra, alert))

        about: dict[str, Any] = {
            "queue_id": env.queue_id,
            "sender": env.mail_from,
            "subject": subject,
            "templates": t,
            "received_at": env.received_at,
            "descriptions": words,
        }
        audited = [n for n in verdict.audit if modes.get(n) == "audit"]
        if audited:
            alert = audit_alert(cfg, verdict, rules=audited, outcomes=where, **about)
            if alert is not None:
                out.append(Pending("audit-alert", list(cfg.officers), alert))

        enforced = [r for r in asks if modes.get(r) == "enforce" and r not in held_rules]
        if enforced:
            wanted = {x for rule in enforced for x in asks[rule]}
            to = list(
                dict.fromkeys(
                    [*(cfg.officers if "officers" in wanted else ()), *_addresses(wanted)]
                )
            )
            if to:
                alert = rule_alert(cfg, verdict, to=to, rules=enforced, outcomes=where, **about)
                if alert is not None:
                    out.append(Pending("rule-alert", to, alert))
            if "sender" in wanted and sender_internal and env.mail_from not in to:
                alert = rule_alert(
                    cfg, verdict, to=[env.mail_from], rules=enforced, outcomes=where, **about
                )
                if alert is not None:
                    out.append(Pending("rule-alert", [env.mail_from], alert, limited=True))

        refused = [o for o in outcome.recipients if o.action in ("rejected", "refused")]
        if refused and outcome.reply.code < 300 and sender_internal:
            failed = [
                FailedRecipient(o.address, o.reply.status or "5.0.0", o.reply.line())
                for o in refused
            ]
            report = dsn(
                cfg,
                original=message.head(),
                sender=env.mail_from,
                failed=failed,
                reporting_mta=self.config.hostname,
                queue_id=env.queue_id,
                arrival=env.received_at,
                delivered=[d for d in where if d.action not in ("rejected", "refused")],
                templates=t,
                sender_name=name,
            )
            out.append(Pending("dsn", [env.mail_from], report, limited=True))
        return out

    async def _queue(self, env: Envelope, pending: Pending) -> None:
        rcpts = list(dict.fromkeys(pending.recipients))
        if not rcpts:
            return
        limit = self.config.notices.rate_limit if pending.limited else None
        try:
            queued = await self.outbox.submit(
                pending.kind, env.mail_from, rcpts, pending.data, limit=limit
            )
        except Exception as exc:
            # No outbox (the database is down): one direct attempt beats silence.
            log.failure("notice-outbox-unavailable", exc, logging.WARNING, id=env.queue_id)
            if pending.limited and not self.limiter.allow(env.mail_from.lower()):
                return
            await self._direct(env, pending.kind, rcpts, pending.data)
            return
        if queued is None:
            log.event(
                "notice-rate-limited", id=env.queue_id, kind=pending.kind, sender=env.mail_from
            )

    async def _direct(self, env: Envelope, kind: str, rcpts: list[str], data: bytes) -> None:
        result = await self._deliver(rcpts, data)
        _count(kind, "sent" if result.ok else "failed")
        log.event(
            "notice",
            logging.INFO if result.ok else logging.WARNING,
            id=env.queue_id,
            kind=kind,
            to=rcpts,
            ok=result.ok,
            durable=False,
            reply=f"{result.code} {result.message}",
        )
