"""The one seam every front-end calls: (envelope, message) -> per-recipient outcome.

Front-ends (the SMTP proxy now, a Sendmail-milter front-end later) know only the
protocol; this module knows the order of things that makes the gateway safe:
inspect, decide, store what is held (durably) before delivering what is allowed,
and only then say 250. Anything that goes wrong before any way out accepted is a
4xx, so the sender keeps the message and retries: mail is never lost. Once one way
accepted (a next hop's 2xx, a durable hold), a 4xx would make the sender's retry
deliver a second copy to those already served; then what deferred goes to the
gateway's own retry queue (``milter.app.retryqueue``), durably, before the 250.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from milter import log, metrics
from milter.app.inspection import InspectionPool
from milter.app.outbound import Outbound
from milter.app.release import ReleasePlan
from milter.app.retryqueue import RetryQueue, StoreCalls
from milter.config import GatewayConfig
from milter.delivery import Deliverer, DeliveryResult, split_status
from milter.envelope import Envelope, new_id
from milter.inspect.findings import Findings
from milter.inspect.simple import cheap_to_inspect
from milter.message import Message
from milter.policy.verdict import RecipientVerdict, Rewrite, Verdict, deliver_all
from milter.quarantine.store import DELETED, QuarantineRecord
from milter.replies import TEMP_FAILURE, Reply


class PolicyLike(Protocol):
    """What the pipeline needs from a loaded policy (``milter.policy.engine.Policy``)."""

    def evaluate(self, envelope: Envelope, findings: Findings) -> Verdict: ...

    def in_set(self, name: str, address: str) -> bool: ...


class Inspector(Protocol):
    def __call__(self, data: bytes) -> Findings: ...


class StoreLike(Protocol):
    def put(self, data: bytes, record: QuarantineRecord) -> str: ...

    def transition(
        self,
        qid: str,
        new_status: str,
        actor: str,
        reason: str,
        *,
        expected: str | None = ...,
        action: str | None = ...,
    ) -> QuarantineRecord: ...


class Notifier(Protocol):
    """Sends notices after the outcome is known; failures never change the outcome."""

    policy: Any  # who counts as internal: the running policy's ``internal`` set

    async def after(
        self,
        envelope: Envelope,
        message: Message,
        findings: Findings | None,
        verdict: Verdict,
        outcome: Outcome,
    ) -> None: ...

    async def close(self) -> None:
        """Hand back what is in flight (notices claimed but not sent)."""


@dataclass
class RecipientOutcome:
    """What happened to one envelope recipient."""

    address: str
    action: str  # delivered | quarantined | rejected | refused | deferred | queued
    reply: Reply
    route: str | None = None
    rules: tuple[str, ...] = ()


@dataclass
class Kept:
    """The recipients left to the MTA in front (milter mode), and their copy."""

    recipients: tuple[str, ...]
    bcc: tuple[str, ...]
    message: Message


@dataclass
class Outcome:
    """The reply to DATA and what it stands for, per recipient."""

    reply: Reply
    recipients: list[RecipientOutcome] = field(default_factory=list)
    quarantine_id: str | None = None  # the ids of the held copies, comma-separated
    classification: str | None = None
    rules: tuple[str, ...] = ()
    records: list[QuarantineRecord] = field(default_factory=list)  # for notices
    # Milter mode: the recipients the MTA's own copy still serves, and that copy as the
    # gateway prepared it (rewritten, signed); None when the gateway delivered them all.
    kept: Kept | None = None
    # The retry queue entries holding recipients that deferred after another way out
    # accepted the message (action ``queued``).
    queued: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """One word for metrics: the DATA reply's meaning."""
        actions = {r.action for r in self.recipients}
        if self.reply.code >= 500:
            return "rejected"
        if self.reply.code >= 400:
            return "deferred"
        if actions <= {"delivered"}:
            return "delivered"
        if actions <= {"quarantined"}:
            return "quarantined"
        return "partial"


def _tempfail(env: Envelope, classification: str | None = None) -> Outcome:
    """451 for every recipient: nothing was delivered, the sender keeps the message."""
    deferred = [RecipientOutcome(a, "deferred", TEMP_FAILURE) for a in env.rcpt_tos]
    return Outcome(TEMP_FAILURE, deferred, classification=classification)


@dataclass
class _Leftover:
    """One way out's recipients that deferred, with what the retry queue needs."""

    route: str
    rewrites: tuple[Rewrite, ...]
    rcpts: list[RecipientVerdict]
    addresses: list[str]  # deferred, bcc addresses of the group included
    result: DeliveryResult
    prepared: Message | None


def _deferred_addresses(rcpts: list[RecipientVerdict], result: DeliveryResult) -> list[str]:
    """The addresses of one group (recipients and their bcc) the next hop deferred."""
    addresses = list(dict.fromkeys([r.address for r in rcpts] + [b for r in rcpts for b in r.bcc]))
    out = []
    for a in addresses:
        if a in result.refused:
            if result.refused[a][0] < 500:
                out.append(a)
        elif not (result.ok and 200 <= result.code < 300) and result.code < 500:
            out.append(a)
    return out


def _withdraw_quietly(store: StoreLike, qid: str, reason: str) -> None:
    """Withdraw a hold from a store thread, expecting it may be gone already."""
    try:
        store.transition(qid, DELETED, "gateway", reason, action="withdraw")
    except Exception as exc:
        log.failure("withdraw-failed", exc, quarantine_id=qid)


_DATE: list[tuple[int, str]] = [(-1, "")]


def _received_date(when: float) -> str:
    """RFC 5322 date of the gateway's local time; formatted once a second, not once a
    message (the formatting is a noticeable part of relaying a small message)."""
    second = int(when)
    cached = _DATE[0]
    if cached[0] != second:
        cached = (second, email.utils.formatdate(second, localtime=True))
        _DATE[0] = cached
    return cached[1]


def received_header(config: GatewayConfig, env: Envelope) -> bytes:
    """The one header the gateway adds (RFC 5321 section 4.4)."""
    proto = ("UTF8SMTP" if env.smtputf8 else "ESMTP" if env.esmtp else "SMTP") + (
        "S" if env.tls else ""
    )
    helo = (
        "".join(
            c
            for c in env.helo
            if c.isprintable() and c not in "()" and (env.smtputf8 or c.isascii())
        )
        or "unknown"
    )
    ip = env.peer_addr or env.client_addr
    for_clause = f"\r\n\tfor <{env.rcpt_tos[0]}>" if len(env.rcpt_tos) == 1 else ""
    date = _received_date(env.received_at)
    line = (
        f"Received: from {helo} ([{ip}])\r\n\tby {config.hostname} (milter) with {proto}"
        f" id {env.queue_id}{for_clause};\r\n\t{date}\r\n"
    )
    return line.encode("utf-8", "surrogateescape")


def _ids(env: Envelope) -> dict[str, Any]:
    """What ties an event about one message to the MTA's log and to the sender: the
    gateway's id, the front MTA's queue id, the SASL login, front-end and client."""
    origin = env.origin()
    return {
        "id": env.queue_id,
        "queue_id": origin["queue_id"],
        "login": origin["login"],
        "frontend": origin["frontend"],
        "client_address": origin["client_address"],
    }


def _summary(findings: Findings | None, verdict: Verdict) -> dict[str, Any]:
    """What the quarantine record keeps of the findings: enough to explain the hold."""
    out: dict[str, Any] = {"rules": [r.to_dict() for r in verdict.rules if r.matched]}
    if findings is not None:
        d = findings.to_dict()
        out.update({k: d[k] for k in ("labels", "attachments", "detectors", "unscannable")})
    return out


class Pipeline:
    """Inspect, decide, act; shared by every front-end of one process."""

    def __init__(
        self,
        config: GatewayConfig,
        deliverer: Deliverer,
        *,
        policy: PolicyLike | None = None,
        inspector: Inspector | None = None,
        store: StoreLike | None = None,
        notifier: Notifier | None = None,
        rewrite: Callable[[bytes, Sequence[Rewrite]], bytes] | None = None,
        sign: Callable[[bytes, str], bytes] | None = None,
    ) -> None:
        self.config = config
        self.deliverer = deliverer
        self.policy = policy
        self.inspector = inspector
        self.store = store
        self.notifier = notifier
        self.outbound = Outbound(rewrite, sign)
        self.inspection: InspectionPool | None = None
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="inspect")
        self._background: set[asyncio.Task[None]] = set()
        # Store calls on threads of their own, each within ``quarantine.timeout``.
        self.store_calls = StoreCalls(config.quarantine.timeout)
        self.retry: RetryQueue | None = None

    def use_policy(self, policy: PolicyLike, inspector: Inspector) -> None:
        """Switch to a reloaded policy; messages already being decided keep the old one."""
        self.policy = policy
        self.inspector = inspector
        metrics.declare_rules(getattr(policy, "rules", ()))
        if self.inspection is not None:
            self.inspection.use(inspector)
        if self.notifier is not None:
            self.notifier.policy = policy

    async def process(self, env: Envelope, message: Message, *, keep: bool = False) -> Outcome:
        """Decide and act on one message; the outcome is final when this returns.

        ``keep`` is the milter front-end's mode: the MTA in front still holds the
        message and delivers it itself, so one group of upstream recipients is left to
        the MTA's copy (``Outcome.kept``) instead of being sent by the gateway, and the
        MTA, not the gateway, writes the Received header.
        """
        started = time.monotonic()
        if not keep:
            message.prepend(received_header(self.config, env))
        findings: Findings | None = None
        try:
            findings, verdict = await self._decide(env, message)
        except Exception as exc:
            log.failure("decision-failed", exc, **_ids(env))
            fallback = self._on_error(env)
            if fallback is None:
                outcome = _tempfail(env)
                self._finish(env, message, outcome, started, None)
                return outcome
            findings, verdict = None, fallback
        outcome = await self._act(env, message, findings, verdict, keep)
        self._finish(env, message, outcome, started, verdict)
        self._record_rejections(env, outcome, verdict)
        if any(o.action in ("rejected", "refused") for o in outcome.recipients):
            message.head()  # kept for the DSN: the spool file goes with the session
        if self.notifier is not None and outcome.reply.code < 400:
            task = asyncio.create_task(self._notify(env, message, findings, verdict, outcome))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return outcome

    def _record_rejections(self, env: Envelope, outcome: Outcome, verdict: Verdict) -> None:
        """Rejected recipients leave no hold, but the agency dashboard and the weekly
        digest (clause 3.b) count them: a row in the store, written off the event loop
        and without holding up the reply; losing one costs a figure, not a message."""
        store = self.store
        rejected = [o for o in outcome.recipients if o.action == "rejected"]
        if not rejected or store is None or not hasattr(store, "record_rejection"):
            return
        addresses = {o.address for o in rejected}
        clauses = [c for r in verdict.recipients if r.address in addresses for c in r.clauses]
        self.store_calls.submit(
            partial(
                store.record_rejection,
                at=time.time(),
                queue_id=env.queue_id,
                sender=env.mail_from,
                recipients=[o.address for o in rejected],
                rules=list(dict.fromkeys(x for o in rejected for x in o.rules)),
                clauses=list(dict.fromkeys(clauses)),
            )
        )

    def _on_error(self, env: Envelope) -> Verdict | None:
        """``on_error`` when inspection or policy failed: None means tempfail (451, the
        default: the sender retries), ``deliver`` lets the mail through, ``quarantine``
        holds it for an officer to look at."""
        if self.config.on_error == "deliver":
            return deliver_all(env.rcpt_tos)
        if self.config.on_error == "quarantine" and self.store is not None:
            return Verdict(
                classification=None,
                recipients=tuple(
                    RecipientVerdict(a, "quarantine", rules=("on_error",)) for a in env.rcpt_tos
                ),
            )
        return None

    async def _decide(self, env: Envelope, message: Message) -> tuple[Findings | None, Verdict]:
        if self.policy is None or self.inspector is None:
            return None, deliver_all(env.rcpt_tos)
        t0 = time.monotonic()
        try:
            limit = self.config.inspect.inline_max
            if self.inspection is not None and limit and message.size <= limit:
                data = message.content()
                inline = cheap_to_inspect(data, limit)
            else:
                inline = False
            if inline:
                # A small all-text message costs less to inspect than to hand to a
                # child process, and its cost is bounded by its size.
                findings = self.inspector(data)
            elif self.inspection is not None:
                findings = await self.inspection.inspect(message.content())
            else:
                findings = await self._inspect_in_thread(self.inspector, message)
        finally:
            # Observed when inspection fails too: a killed inspector's time is the
            # part of the distribution an operator most needs to see.
            t1 = time.monotonic()
            metrics.INSPECTION.observe(t1 - t0)
            metrics.child(metrics.STAGE_SECONDS, "inspection", "").observe(t1 - t0)
        metrics.count_findings(findings)
        verdict = self.policy.evaluate(env, findings)
        metrics.child(metrics.STAGE_SECONDS, "policy", "").observe(time.monotonic() - t1)
        return findings, verdict

    async def _inspect_in_thread(self, inspector: Inspector, message: Message) -> Findings:
        """Without inspection processes (``inspect.processes: 0``): a thread, which a
        hostile message can keep busy; the bound below only gives later messages a
        fresh thread."""
        loop = asyncio.get_running_loop()
        budget = self.config.inspect.time_budget * 3 + 5
        pool = self._pool
        try:
            async with asyncio.timeout(budget):
                return await loop.run_in_executor(pool, inspector, message.content())
        except TimeoutError:
            if self._pool is pool:
                self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="inspect")
                pool.shutdown(wait=False)
            raise

    async def _act(
        self,
        env: Envelope,
        message: Message,
        findings: Findings | None,
        verdict: Verdict,
        keep: bool = False,
    ) -> Outcome:
        held = [r for r in verdict.recipients if r.action == "quarantine"]
        rejected = [r for r in verdict.recipients if r.action == "reject"]
        groups: dict[tuple[str, tuple[Rewrite, ...]], list[RecipientVerdict]] = {}
        for r in verdict.recipients:
            if r.action == "deliver":
                groups.setdefault((r.route or "upstream", r.rewrites), []).append(r)
        outcomes: dict[str, RecipientOutcome] = {}
        quarantine_id: str | None = None
        records: list[QuarantineRecord] = []

        for r in rejected:
            text = r.reject_text or "Pesan ditolak oleh kebijakan / Message rejected by policy"
            rule = f" [{', '.join(r.rules)}]" if r.rules else ""
            outcomes[r.address] = RecipientOutcome(
                r.address, "rejected", Reply(550, f"{text}{rule}", "5.7.1"), None, r.rules
            )
        if held:
            # Held mail is made durable before anything is delivered: if the store
            # fails, nothing has left yet and a 451 costs the sender only a retry.
            # One copy per way out, so that a release sends each the way it would
            # have gone (sanapati stays sanapati, with its header).
            paths: dict[tuple[str, tuple[Rewrite, ...]], list[RecipientVerdict]] = {}
            for r in held:
                paths.setdefault((r.release_route or "upstream", r.release_rewrites), []).append(r)
            try:
                for (route, rewrites), group in paths.items():
                    record = await self._quarantine(
                        env, message, findings, verdict, group, route=route, rewrites=rewrites
                    )
                    records.append(record)
                    for r in group:
                        text = f"ditahan di karantina / held in quarantine {record.id}"
                        outcomes[r.address] = RecipientOutcome(
                            r.address, "quarantined", Reply(250, text, "2.6.0"), None, r.rules
                        )
            except Exception as exc:
                metrics.QUARANTINE_WRITE_ERRORS.inc()
                log.failure("quarantine-failed", exc, **_ids(env))
                if records:
                    await self._withdraw(env, records, TEMP_FAILURE)
                return _tempfail(env, verdict.classification)
            quarantine_id = ", ".join(r.id for r in records)

        kept: Kept | None = None
        if keep:
            # The MTA's copy serves the largest group bound for the upstream (the others
            # are sent by the gateway through the upstream route and removed from it).
            upstream = [k for k in groups if k[0] == "upstream"]
            if upstream:
                key = max(upstream, key=lambda k: len(groups[k]))
                rcpts_kept = groups.pop(key)
                try:
                    prepared = await self._prepared(env, message, key[1])
                except Exception as exc:
                    log.failure("rewrite-failed", exc, **_ids(env))
                    if records:
                        await self._withdraw(env, records, TEMP_FAILURE)
                    return _tempfail(env, verdict.classification)
                kept = Kept(
                    tuple(r.address for r in rcpts_kept),
                    tuple(dict.fromkeys(b for r in rcpts_kept for b in r.bcc)),
                    prepared,
                )
                for r in rcpts_kept:
                    text = "diteruskan oleh MTA / left to the MTA"
                    outcomes[r.address] = RecipientOutcome(
                        r.address, "delivered", Reply(250, text, "2.0.0"), "upstream", r.rules
                    )
        sends = [
            self._deliver(env, message, route, rewrites, rcpts)
            for (route, rewrites), rcpts in groups.items()
        ]
        results: list[tuple[DeliveryResult, Message] | BaseException]
        if len(sends) == 1:  # the usual case: no task and no gathering future for one
            try:
                results = [await sends[0]]
            except Exception as exc:
                results = [exc]
        else:
            results = await asyncio.gather(*sends, return_exceptions=True)
        leftovers: list[_Leftover] = []
        accepted = bool(records)  # a durable hold is a way out that accepted
        for (route, rewrites), rcpts, got in zip(groups, groups.values(), results, strict=True):
            copy: Message | None = None
            if isinstance(got, BaseException):
                # One group's local failure defers that group only; the others keep
                # the outcome they really had.
                log.failure("delivery-failed", got, route=route, **_ids(env))
                result = DeliveryResult.failed(TEMP_FAILURE, [r.address for r in rcpts], route)
            else:
                result, copy = got
            accepted = accepted or (result.ok and 200 <= result.code < 300)
            for r in rcpts:
                outcomes[r.address] = self._recipient_outcome(r, route, result)
            left = _deferred_addresses(rcpts, result)
            if left:
                leftovers.append(_Leftover(route, rewrites, rcpts, left, result, copy))
        queued: list[str] = []
        if leftovers and accepted and self.retry is not None:
            queued = await self._queue_leftovers(env, message, findings, leftovers, outcomes)
        ordered = [outcomes[a] for a in dict.fromkeys(r.address for r in verdict.recipients)]
        rules = tuple(dict.fromkeys(x for r in verdict.recipients for x in r.rules))
        reply = self._reply(env, ordered, quarantine_id)
        if records and reply.code >= 400:
            # The client will send it again: the copies held now must not stay behind
            # as second holds (and, once released, second deliveries).
            await self._withdraw(env, records, reply)
            records, quarantine_id = [], None
        return Outcome(
            reply, ordered, quarantine_id, verdict.classification, rules, records, kept, queued
        )

    async def _queue_leftovers(
        self,
        env: Envelope,
        message: Message,
        findings: Findings | None,
        leftovers: list[_Leftover],
        outcomes: dict[str, RecipientOutcome],
    ) -> list[str]:
        """Queue what deferred, durably, so the message can be answered 250; nothing
        (and the outcomes as they were: a 451 follows) when any entry cannot be written."""
        retry = self.retry
        if retry is None:
            return []
        added: list[str] = []
        marked: dict[str, RecipientOutcome] = {}
        try:
            for left in leftovers:
                copy = left.prepared
                if copy is None:
                    copy = await self._prepared(env, message, left.rewrites)
                error = f"{left.result.code} {left.result.message}".strip()
                entry = retry.entry(
                    queue_id=env.queue_id,
                    sender=env.mail_from,
                    recipients=left.addresses,
                    route=left.route,
                    size=copy.size,
                    smtputf8=env.smtputf8,
                    dsn_params=env.dsn,
                    info={
                        "subject": findings.subject if findings is not None else "",
                        "recipients": list(env.rcpt_tos),
                        "bcc": sorted({b for r in left.rcpts for b in r.bcc}),
                        "rewrites": [str(rw) for rw in left.rewrites],
                        "client": env.client_addr,
                    },
                    error=error,
                )
                await retry.add(entry, copy.content())
                added.append(entry.id)
                for r in left.rcpts:
                    if r.address in left.addresses:
                        text = (
                            f"dalam antrean ulang gateway {entry.id} / "
                            f"queued for retry by the gateway {entry.id}"
                        )
                        marked[r.address] = RecipientOutcome(
                            r.address, "queued", Reply(250, text, "2.0.0"), left.route, r.rules
                        )
        except Exception as exc:
            log.failure("queue-failed", exc, **_ids(env))
            if added:
                await retry.withdraw(added, "another entry of its message could not be queued")
            return []
        outcomes.update(marked)
        return added

    async def abandoned(self, env: Envelope, outcome: Outcome) -> None:
        """The client went away before hearing the reply, so it will send the message
        again: take back what that retry would duplicate (holds, queue entries).

        Deliveries a next hop already accepted cannot be taken back; they stand.
        """
        if outcome.reply.code >= 400:
            return  # holds and queue entries of a 4xx were withdrawn already
        why = "the client went away before the reply: it sends the message again"
        if outcome.records:
            await self._withdraw(env, outcome.records, outcome.reply, why=why)
        if outcome.queued and self.retry is not None:
            await self.retry.withdraw(outcome.queued, why)
        log.event(
            "reply-lost",
            logging.WARNING,
            **_ids(env),
            reply=outcome.reply.line(),
            withdrawn=[r.id for r in outcome.records] + list(outcome.queued),
            delivered=[o.address for o in outcome.recipients if o.action == "delivered"],
        )

    async def _withdraw(
        self,
        env: Envelope,
        records: list[QuarantineRecord],
        reply: Reply,
        *,
        why: str | None = None,
    ) -> None:
        store = self.store
        if store is None:
            return
        reason = why or f"transaction answered {reply.code}: the client retries"
        for record in records:
            try:
                await self.store_calls(
                    store.transition, record.id, DELETED, "gateway", reason, action="withdraw"
                )
            except Exception as exc:
                log.failure("withdraw-failed", exc, quarantine_id=record.id, **_ids(env))
                # Still take it back once the database answers: a hold nobody was told
                # about must not wait for an officer's release.
                self.store_calls.submit(_withdraw_quietly, store, record.id, reason)

    async def _deliver(
        self,
        env: Envelope,
        message: Message,
        route: str,
        rewrites: tuple[Rewrite, ...],
        rcpts: list[RecipientVerdict],
    ) -> tuple[DeliveryResult, Message]:
        out = await self._prepared(env, message, rewrites)
        addresses = list(
            dict.fromkeys([r.address for r in rcpts] + [b for r in rcpts for b in r.bcc])
        )
        t0 = time.monotonic()
        result = await self.deliverer.send(
            route, env.mail_from, addresses, out, smtputf8=env.smtputf8, dsn=env.dsn
        )
        metrics.child(metrics.STAGE_SECONDS, "delivery", route).observe(time.monotonic() - t0)
        if not result.ok:
            kind = "temporary" if result.code < 500 else "permanent"
            metrics.child(metrics.NEXTHOP_ERRORS, route, kind).inc()
        return result, out

    async def _prepared(
        self, env: Envelope, message: Message, rewrites: tuple[Rewrite, ...]
    ) -> Message:
        """The copy one group receives; rewriting and signing are CPU work on the
        whole message, so they run off the event loop."""
        if not self.outbound.needed(rewrites):
            return message
        return await asyncio.to_thread(
            self.outbound.prepare, message, rewrites, env.mail_from, log_id=env.queue_id
        )

    @staticmethod
    def _recipient_outcome(
        r: RecipientVerdict, route: str, result: DeliveryResult
    ) -> RecipientOutcome:
        if r.address in result.refused:
            code, text = result.refused[r.address]
            status, text = split_status(text)
            if not status:
                status = (
                    result.status
                    if not result.ok and result.status
                    else ("4.0.0" if code < 500 else "5.0.0")
                )
            action = "deferred" if code < 500 else "refused"
            return RecipientOutcome(r.address, action, Reply(code, text, status), route, r.rules)
        if result.ok:
            return RecipientOutcome(
                r.address,
                "delivered",
                Reply(result.code, result.message, result.status or "2.0.0"),
                route,
                r.rules,
            )
        code = result.code if result.code >= 400 else 451
        return RecipientOutcome(
            r.address,
            "deferred" if code < 500 else "refused",
            Reply(code, result.message, result.status),
            route,
            r.rules,
        )

    @staticmethod
    def _reply(env: Envelope, outcomes: list[RecipientOutcome], quarantine_id: str | None) -> Reply:
        """One DATA reply that does not lie about any recipient.

        Any temporary failure means 4xx for the whole message: the sender retries,
        and a recipient already served may get a duplicate, which is better than a
        loss. All refused means 5xx. Otherwise 250, and the refused recipients are
        reported by a delivery status notification.
        """
        deferred = [o for o in outcomes if o.action == "deferred"]
        if deferred:
            worst = deferred[0].reply
            status = worst.status if worst.status.startswith("4") else "4.4.1"
            return Reply(
                worst.code if worst.code < 500 else 451,
                f"Penerusan tertunda, coba lagi / Next hop deferred: {worst.text}",
                status,
            )
        ok = [o for o in outcomes if o.action in ("delivered", "quarantined", "queued")]
        if not ok:
            first = outcomes[0]
            if all(o.action == "rejected" for o in outcomes):
                return first.reply
            status = first.reply.status if first.reply.status.startswith("5") else "5.0.0"
            return Reply(first.reply.code, first.reply.text, status)
        parts = []
        delivered = [o for o in outcomes if o.action == "delivered"]
        if delivered:
            parts.append(f"Diterima / Queued as {env.queue_id}")
        if quarantine_id:
            held = [o for o in outcomes if o.action == "quarantined"]
            rules = ", ".join(dict.fromkeys(x for o in held for x in o.rules)) or "-"
            n = len(held)
            parts.append(
                f"{n} penerima ditahan di karantina {quarantine_id} (aturan {rules}) / "
                f"{n} recipient(s) held in quarantine {quarantine_id} (rule {rules})"
            )
        queued = [o for o in outcomes if o.action == "queued"]
        if queued:
            n = len(queued)
            parts.append(
                f"{n} penerima dalam antrean ulang gateway / "
                f"{n} recipient(s) queued for retry by the gateway"
            )
        failed = len(outcomes) - len(ok)
        if failed:
            parts.append(
                f"{failed} penerima ditolak, lihat laporan / "
                f"{failed} recipient(s) refused, see report"
            )
        return Reply(250, "; ".join(parts), "2.6.0" if quarantine_id else "2.0.0")

    async def _quarantine(
        self,
        env: Envelope,
        message: Message,
        findings: Findings | None,
        verdict: Verdict,
        held: list[RecipientVerdict],
        *,
        route: str,
        rewrites: tuple[Rewrite, ...],
    ) -> QuarantineRecord:
        if self.store is None:
            raise RuntimeError("quarantine verdict but no quarantine store is configured")
        record = QuarantineRecord(
            id=new_id(),
            received_at=env.received_at,
            client=env.client_addr,
            sender=env.mail_from,
            recipients=tuple(r.address for r in held),
            subject=findings.subject if findings else "",
            size=message.size,
            classification=verdict.classification,
            labels=tuple(sorted({lb.raw for lb in findings.labels})) if findings else (),
            rules=tuple(dict.fromkeys(x for r in held for x in r.rules)),
            clauses=tuple(dict.fromkeys(x for r in held for x in r.clauses)),
            findings=_summary(findings, verdict),
            route=route,
            queue_id=env.queue_id,
            origin=env.origin(),
            release_plan=ReleasePlan(route, rewrites).to_record(),
        )
        store = self.store
        t0 = time.monotonic()

        def stored_late(_: str) -> None:
            # Stored after the client was answered 451: it sends the message again.
            _withdraw_quietly(store, record.id, "stored after the client was answered 451")

        await self.store_calls(store.put, message.content(), record, late=stored_late)
        metrics.child(metrics.STAGE_SECONDS, "quarantine", "").observe(time.monotonic() - t0)
        return record

    async def _notify(
        self,
        env: Envelope,
        message: Message,
        findings: Findings | None,
        verdict: Verdict,
        outcome: Outcome,
    ) -> None:
        if self.notifier is None:
            return
        try:
            await self.notifier.after(env, message, findings, verdict, outcome)
        except Exception as exc:
            log.failure("notice-failed", exc, logging.WARNING, **_ids(env))

    def _finish(
        self,
        env: Envelope,
        message: Message,
        outcome: Outcome,
        started: float,
        verdict: Verdict | None,
    ) -> None:
        elapsed = time.monotonic() - started
        metrics.PROCESSING.observe(elapsed)
        metrics.child(metrics.MESSAGES, env.frontend, outcome.label).inc()
        for o in outcome.recipients:
            metrics.child(metrics.RECIPIENTS, env.frontend, o.action).inc()
        if outcome.reply.code < 400:
            metrics.MESSAGE_BYTES.inc(message.size)
        if verdict is not None:
            metrics.count_rule_hits(verdict.rules)
        clauses = {r.address: list(r.clauses) for r in verdict.recipients} if verdict else {}
        log.message_line(
            id=env.queue_id,
            client=env.client_addr,
            **env.origin(),
            sender=env.mail_from,
            recipients=[
                {
                    "address": o.address,
                    "action": o.action,
                    "route": o.route,
                    "reply": o.reply.line(),
                    "rules": list(o.rules),
                    "clauses": clauses.get(o.address, []),
                }
                for o in outcome.recipients
            ],
            size=message.size,
            classification=outcome.classification,
            quarantine_id=outcome.quarantine_id,
            reply=outcome.reply.line(),
            audit=list(verdict.audit) if verdict else [],
            duration_ms=round(elapsed * 1000, 1),
        )

    async def start(self) -> None:
        """Start what must run before the first message (the inspection processes)."""
        if self.policy is not None:
            metrics.declare_rules(getattr(self.policy, "rules", ()))
        if self.inspection is not None:
            await self.inspection.start()
        self.start_retry_queue()

    def start_retry_queue(self) -> None:
        """Give this worker its retry queue sender (where the quarantine has one), and the
        notices their store threads; entries other workers or a previous run left due
        are sent from now on."""
        store = self.store
        if self.retry is not None or store is None or not hasattr(store, "retry_add"):
            return
        notifier = self.notifier
        outbox = getattr(notifier, "outbox", None)
        if outbox is not None:
            outbox.call = self.store_calls
        self.retry = RetryQueue(
            self.config,
            lambda: store,  # type: ignore[arg-type,return-value]
            self.deliverer,
            self.store_calls,
            notify=getattr(notifier, "submit_notice", None),
            is_internal=getattr(notifier, "is_internal", None),
            templates=getattr(notifier, "templates", None),
        )
        self.retry.start()

    async def close(self) -> None:
        if self.inspection is not None:
            await self.inspection.close()
        if self._background:
            with contextlib.suppress(Exception):
                await asyncio.wait(self._background, timeout=10)
        if self.notifier is not None:
            with contextlib.suppress(Exception):
                await self.notifier.close()
        if self.retry is not None:
            with contextlib.suppress(Exception):
                await self.retry.close()
        await self.deliverer.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.store_calls.shutdown()
