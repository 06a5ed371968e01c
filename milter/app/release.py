"""Releasing a held message: the one reader and writer of a hold's release plan.

When the gateway holds a recipient it records how that recipient would have been
served without the hold (the route, and the rewrites that route's copy gets, such as
``X-Klasifikasi`` on the way to sanapati): the release plan. A release claims the hold
first (held -> released, audited), prepares the message exactly as delivery would have
(``Outbound.prepare``: rewrites, then the signature) and hands it to that route. When
the next hop takes none of it, the hold goes back to held with the reason audited, so
a second release stays possible and a message is never sent twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
    HELD,
    RELEASED,
    QuarantineError,
    QuarantineRecord,
    QuarantineStore,
    StateConflict,
)


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
) -> Released:
    """Release hold ``qid`` once, to its held recipients or to ``to`` instead."""
    record = store.get(qid)
    if record is None:
        raise ReleaseError(f"no quarantined message {qid}")
    if record.status != HELD:
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
        store.transition(record.id, RELEASED, actor, why, expected=HELD)
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
