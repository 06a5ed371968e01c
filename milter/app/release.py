"""Releasing a held message: the one reader and writer of a hold's release plan.

When the gateway holds a recipient it records how that recipient would have been
served without the hold (the route, and the rewrites that route's copy gets, such as
``X-Klasifikasi`` on the way to sanapati): the release plan. A release claims the hold
first (held -> released, audited), prepares the message exactly as delivery would have
(``Outbound.prepare``: rewrites, then the signature) and hands it to that route. When
the next hop takes none of it, the hold goes back to held with the reason audited, so
a second release stays possible and a message is never sent twice.

``review_release`` and ``review_delete`` are what people call, from the command line
and from the review UI alike. On top of ``release`` they apply the review rules:
a classification listed in ``review.two_person`` needs two different officers (the
first one's release leaves the hold ``pending``, audited as ``approve``; the second
one's delivers it), and a release to an address other than the held recipients
(``to``) runs the configured policy again for that address, refuses what the policy
would not deliver, and leaves the hold as it is for the recipients it was held for.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from milter.app.outbound import Outbound
from milter.config import GatewayConfig
from milter.delivery import DeliveryResult, send_message
from milter.errors import UserError
from milter.message import Message
from milter.policy.verdict import (
    Rewrite,
    RewriteFormatError,
    rewrite_from_dict,
    rewrite_to_dict,
)
from milter.quarantine.store import (
    DELETED,
    HELD,
    PENDING,
    RELEASED,
    QuarantineError,
    QuarantineRecord,
    QuarantineStore,
    StateConflict,
)

if TYPE_CHECKING:
    from milter.policy.engine import Policy


class ReleaseError(UserError):
    """A release that did not happen, or happened only in part (one line for people)."""


@dataclass(frozen=True)
class ReleasePlan:
    """Where and how the held recipients' copy goes when an officer releases it."""

    route: str = "upstream"
    rewrites: tuple[Rewrite, ...] = ()

    def to_record(self) -> dict[str, Any]:
        """What the quarantine record keeps (the store treats it as opaque JSON)."""
        return {"route": self.route, "rewrites": [rewrite_to_dict(rw) for rw in self.rewrites]}

    @classmethod
    def of(cls, record: QuarantineRecord) -> ReleasePlan:
        """The plan stored with a hold. Holds made before plans had their own column
        kept the rewrites among the findings; they are read from there."""
        stored: Mapping[str, Any] = record.release_plan or {}
        raw = stored.get("rewrites")
        if raw is None:
            raw = record.findings.get("release_rewrites", ())
        try:
            rewrites = tuple(rewrite_from_dict(d) for d in raw)
        except (RewriteFormatError, AttributeError) as exc:
            raise ReleaseError(f"{record.id}: its release plan cannot be read: {exc}") from None
        return cls(str(stored.get("route") or record.route or "upstream"), rewrites)


@dataclass(frozen=True)
class Released:
    """A release that reached every recipient it was meant for."""

    record: QuarantineRecord
    recipients: tuple[str, ...]
    route: str


def _check_addresses(addresses: Sequence[str]) -> None:
    for address in addresses:
        if address.count("@") != 1 or any(c in address for c in " <>\r\n"):
            raise ReleaseError(f"not a mail address: {address!r}")


def _outcome(result: DeliveryResult) -> tuple[tuple[str, ...], str] | None:
    """None when every recipient took it; else (who did take it, why the rest did not)."""
    refused = dict(result.refused)
    if result.ok and not refused:
        return None
    if refused:
        detail = "; ".join(f"{a}: {c} {m}" for a, (c, m) in sorted(refused.items()))
        text = f"refused by the next hop: {detail}"
    else:
        text = f"the next hop answered {result.code} {result.message}".strip()
    return tuple(result.accepted) if result.ok else (), text


def release(
    config: GatewayConfig,
    store: QuarantineStore,
    outbound: Outbound,
    qid: str,
    *,
    actor: str,
    reason: str,
    to: Sequence[str] = (),
    expected: str = HELD,
) -> Released:
    """Release hold ``qid`` once, to its held recipients or to ``to`` instead.

    This is the mechanism without the review rules (``review_release`` applies them):
    it claims the hold from ``expected`` (held, or pending a second approval).
    """
    record = store.get(qid)
    if record is None:
        raise ReleaseError(f"no quarantined message {qid}")
    if record.status != expected:
        raise ReleaseError(f"{record.id} is {record.status}; only a held message can be released")
    rcpts = tuple(to) or record.recipients
    _check_addresses(rcpts)
    plan = ReleasePlan.of(record)
    try:
        config.route(plan.route)
    except KeyError:
        raise ReleaseError(f"route {plan.route!r} of {record.id} is not configured") from None
    try:
        data = store.read(record.id)
    except QuarantineError as exc:
        raise ReleaseError(str(exc)) from None
    try:
        message = outbound.prepare(
            Message.from_content(data), plan.rewrites, record.sender, log_id=record.id
        )
    except ValueError as exc:  # RewriteError: the plan no longer applies
        raise ReleaseError(f"{record.id}: cannot apply its rewrites: {exc}") from None
    why = reason + (f" (to {', '.join(rcpts)})" if to else "")
    try:
        store.transition(record.id, RELEASED, actor, why, expected=expected)
    except StateConflict as exc:
        raise ReleaseError(f"{record.id} is {exc.status}; it cannot be released again") from None
    except QuarantineError as exc:
        raise ReleaseError(str(exc)) from None
    try:
        result = send_message(config, plan.route, record.sender, list(rcpts), message.content())
        failed = _outcome(result)
    except Exception as exc:  # any failure to hand over means: not released
        failed = (), f"{type(exc).__name__}: {exc}"
    if failed is None:
        return Released(record, rcpts, plan.route)
    delivered, text = failed
    if delivered:
        store.append_audit(actor, "release-refused", record.id, text)
        raise ReleaseError(f"{record.id} released to {', '.join(delivered)}, but {text}")
    try:
        store.transition(
            record.id,
            HELD,
            actor,
            f"re-injection failed: {text}",
            expected=RELEASED,
            action="release-failed",
        )
    except QuarantineError as exc:
        raise ReleaseError(f"{record.id}: re-injection failed ({text}) and {exc}") from None
    raise ReleaseError(f"{record.id} not released, still held: {text}")


# -- the review rules: two officers, policy for a new recipient -------------------------


@dataclass(frozen=True)
class ReviewResult:
    """What a person's release or delete came to, in one line for that person.

    ``status``: ``released`` (sent to ``delivered``), ``pending`` (approved, waiting
    for a second officer), ``deleted``, or ``refused`` (nothing happened, or the hop
    refused it and the hold is back to held; ``message`` says which).
    """

    status: str
    message: str
    delivered: tuple[str, ...] = ()


@dataclass
class _Review:
    """What one review action works with; the policy is loaded only when needed."""

    config: GatewayConfig
    store: QuarantineStore
    outbound: Outbound
    policy: Policy | None = None

    def needs_two(self, record: QuarantineRecord) -> bool:
        """Whether releasing ``record`` needs two different officers."""
        wanted = {c.upper() for c in self.config.review.two_person}
        return (record.classification or "").upper() in wanted

    def loaded_policy(self) -> Policy:
        if self.policy is None:
            from milter.app.wiring import load_policy

            if not self.config.policy:
                raise ReleaseError("no policy is configured to check the new recipient against")
            self.policy = load_policy(self.config)
        return self.policy


def _approver(store: QuarantineStore, qid: str) -> str | None:
    """Who approved the pending release of ``qid`` (the newest approval)."""
    approvals = [e for e in store.audit_for(qid) if e.action == "approve"]
    return approvals[-1].actor if approvals else None


def _review_release(
    ctx: _Review, qid: str, actor: str, reason: str, to: Sequence[str]
) -> ReviewResult:
    store = ctx.store
    if not actor.strip():
        return ReviewResult("refused", "no actor: every release names who did it")
    if not reason.strip():
        return ReviewResult("refused", "a reason is required")
    record = store.get(qid)
    if record is None:
        return ReviewResult("refused", f"no quarantined message {qid}")
    if to:
        return _release_to(ctx, record, actor, reason, tuple(to))
    if record.status not in (HELD, PENDING):
        return ReviewResult(
            "refused", f"{record.id} is {record.status}; only a held message can be released"
        )
    if ctx.needs_two(record) and record.status == HELD:
        try:
            _check_sendable(ctx, record)
            store.transition(record.id, PENDING, actor, reason, expected=HELD, action="approve")
        except ReleaseError as exc:
            return ReviewResult("refused", str(exc))
        except StateConflict as exc:
            return ReviewResult("refused", f"{record.id} changed meanwhile: it is now {exc.status}")
        except QuarantineError as exc:
            return ReviewResult("refused", str(exc))
        return ReviewResult(
            "pending",
            f"{record.id} is {record.classification}: approved by {actor}; a second, "
            "different officer must release it too",
        )
    if record.status == PENDING:
        first = _approver(store, record.id)
        if first == actor:
            return ReviewResult(
                "refused",
                f"{record.id} was approved by {actor}; a second, different officer must release it",
            )
        reason = f"{reason} (second officer; approved by {first or 'unknown'})"
    try:
        done = release(
            ctx.config,
            store,
            ctx.outbound,
            record.id,
            actor=actor,
            reason=reason,
            expected=record.status,
        )
    except ReleaseError as exc:
        return ReviewResult("refused", str(exc))
    return ReviewResult(
        "released",
        f"{record.id} released to {', '.join(done.recipients)} via {done.route}",
        done.recipients,
    )


def _check_sendable(ctx: _Review, record: QuarantineRecord) -> None:
    """Refuse an approval that the second officer could never complete."""
    plan = ReleasePlan.of(record)
    try:
        ctx.config.route(plan.route)
    except KeyError:
        raise ReleaseError(f"route {plan.route!r} of {record.id} is not configured") from None
    try:
        ctx.store.read(record.id)
    except QuarantineError as exc:
        raise ReleaseError(str(exc)) from None


def _release_to(
    ctx: _Review, record: QuarantineRecord, actor: str, reason: str, to: tuple[str, ...]
) -> ReviewResult:
    """Send a copy to ``to`` when the policy would deliver it there; the hold stays."""
    from milter.app.wiring import inspector_for
    from milter.envelope import Envelope

    try:
        _check_addresses(to)
    except ReleaseError as exc:
        return ReviewResult("refused", str(exc))
    if record.status != HELD:
        return ReviewResult(
            "refused", f"{record.id} is {record.status}; only a held message can be released"
        )
    if ctx.needs_two(record):
        return ReviewResult(
            "refused",
            f"{record.id} is {record.classification}: it is released only to its held "
            "recipients, by two officers",
        )
    try:
        policy = ctx.loaded_policy()
        data = ctx.store.read(record.id)
    except (ReleaseError, UserError, QuarantineError) as exc:
        return ReviewResult("refused", str(exc))
    # A fresh inspection rather than the stored summary: the policy's conditions need
    # the whole findings, and the policy may have changed since the hold.
    try:
        findings = inspector_for(policy, ctx.config)(data)
    except Exception as exc:  # nothing goes out on an inspection that did not finish
        return ReviewResult("refused", f"{record.id}: cannot inspect it again: {exc}")
    envelope = Envelope(mail_from=record.sender, rcpt_tos=to, client_addr=record.client)
    verdict = policy.evaluate(envelope, findings)
    refused = [rv for rv in verdict.recipients if rv.action != "deliver"]
    if refused:
        why = "; ".join(
            f"{rv.address}: {rv.action} by {', '.join(rv.rules) or 'the policy'}" for rv in refused
        )
        ctx.store.append_audit(actor, "release-refused", record.id, f"{reason} (to: {why})")
        return ReviewResult("refused", f"the policy does not deliver {record.id} there: {why}")
    groups: dict[tuple[str, tuple[Any, ...]], list[str]] = {}
    for rv in verdict.recipients:
        key = (rv.route or "upstream", rv.rewrites)
        groups.setdefault(key, []).extend([rv.address, *rv.bcc])
    delivered: list[str] = []
    problems: list[str] = []
    for (route, rewrites), rcpts in groups.items():
        try:
            message = ctx.outbound.prepare(
                Message.from_content(data), rewrites, record.sender, log_id=record.id
            )
            result = send_message(ctx.config, route, record.sender, rcpts, message.content())
            failed = _outcome(result)
        except Exception as exc:  # any failure to hand over: that group is not released
            failed = (), f"{type(exc).__name__}: {exc}"
        took = list(rcpts) if failed is None else list(failed[0])
        if took:
            ctx.store.append_audit(
                actor, "release-to", record.id, f"{reason} (to {', '.join(took)} via {route})"
            )
            delivered += took
        if failed is not None:
            problems.append(failed[1])
    if problems:
        ctx.store.append_audit(actor, "release-refused", record.id, "; ".join(problems))
        sent = f"sent to {', '.join(delivered)}; " if delivered else ""
        return ReviewResult(
            "refused", f"{record.id}: {sent}{'; '.join(problems)}", tuple(delivered)
        )
    return ReviewResult(
        "released",
        f"{record.id} sent to {', '.join(delivered)}; still held for "
        f"{', '.join(record.recipients)}",
        tuple(delivered),
    )


def review_release_sync(
    config: GatewayConfig,
    store: QuarantineStore,
    outbound: Outbound,
    qid: str,
    *,
    actor: str,
    reason: str,
    to: Sequence[str] = (),
    policy: Policy | None = None,
) -> ReviewResult:
    """``review_release`` for a caller outside an event loop (it blocks on the database,
    the inspection and the next hop)."""
    ctx = _Review(config, store, outbound, policy)
    return _review_release(ctx, qid, actor, reason, tuple(to))


async def review_release(
    config: GatewayConfig,
    store: QuarantineStore,
    outbound: Outbound,
    qid: str,
    *,
    actor: str,
    reason: str,
    to: Sequence[str] = (),
    policy: Policy | None = None,
) -> ReviewResult:
    """An officer's release of ``qid``, with the review rules (see the module text).

    The first three are what ``release`` takes: the configuration (routes and
    ``review.two_person``), the quarantine, and the ``Outbound`` of the process
    (``Outbound(milter.actions.rewrite.apply, milter.app.wiring.load_signer(config))``).
    ``policy`` is used for a release to other addresses (``to``); when not given, the
    configured policy is loaded then. ``actor`` must be an authenticated identity (the
    OS user, or the UI's account). A refusal is a result, not an exception. The work
    (database, inspection, SMTP) runs in a thread, off the caller's event loop.
    """
    return await asyncio.to_thread(
        functools.partial(
            review_release_sync,
            config,
            store,
            outbound,
            qid,
            actor=actor,
            reason=reason,
            to=to,
            policy=policy,
        )
    )


def review_delete(store: QuarantineStore, qid: str, actor: str, reason: str) -> ReviewResult:
    """An officer's delete of a held, pending or released message (bytes discarded)."""
    if not actor.strip():
        return ReviewResult("refused", "no actor: every delete names who did it")
    if not reason.strip():
        return ReviewResult("refused", "a reason is required")
    record = store.get(qid)
    if record is None:
        return ReviewResult("refused", f"no quarantined message {qid}")
    if record.status not in (HELD, PENDING, RELEASED):
        return ReviewResult("refused", f"{record.id} is {record.status}; nothing left to delete")
    try:
        store.transition(record.id, DELETED, actor, reason, expected=record.status)
    except StateConflict as exc:
        return ReviewResult("refused", f"{record.id} changed meanwhile: it is now {exc.status}")
    except QuarantineError as exc:
        return ReviewResult("refused", str(exc))
    return ReviewResult("deleted", f"{record.id} deleted")
