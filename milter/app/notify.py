"""Who hears about a message after its outcome, and sending them the notices.

The texts live in ``milter.actions.notices``; this module decides who gets what:

- held mail: the internal sender gets a quarantine notice and the compliance
  officers an alert, always (never an external or null sender: no backscatter);
  addresses a holding rule names in ``notify`` get the alert too;
- audit-mode rules: the officers (a rule in audit mode applies none of its own
  actions, its ``notify`` included); test-mode rules are recorded only;
- other enforce-mode rules with ``notify`` (reject, route, deliver): a rule alert to
  the officers, addresses and, when internal, the sender they name;
- recipients refused while others were served: a delivery status notification to
  the internal sender.

Everything sent to the sender is rate-limited per sender. Notices go through the
upstream with a null envelope sender, after the client has its reply: a notice that
fails is logged, never turned into a failure of the mail.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from milter import log
from milter.actions.notices import (
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
from milter.delivery import Deliverer
from milter.envelope import Envelope
from milter.inspect.findings import Findings
from milter.message import Message
from milter.policy.verdict import Verdict

if TYPE_CHECKING:
    from milter.app.pipeline import Outcome

_OUTCOME_WORDS = {
    "delivered": "dikirim / delivered",
    "quarantined": "ditahan di karantina / held in quarantine",
    "rejected": "ditolak / rejected",
    "refused": "ditolak tujuan / refused by the next hop",
    "deferred": "tertunda / deferred",
}


def _addresses(targets: Iterable[str]) -> list[str]:
    return sorted({t for t in targets if t not in ("sender", "officers") and "@" in t})


class GatewayNotifier:
    """Sends the notices a message's outcome calls for."""

    def __init__(self, config: GatewayConfig, policy: Any, deliverer: Deliverer) -> None:
        self.config = config
        self.policy = policy
        self.deliverer = deliverer
        self.templates = Templates.load(config.notices.templates)
        self.limiter = RateLimiter(config.notices.rate_limit)

    def is_internal(self, address: str) -> bool:
        try:
            return bool(self.policy.in_set("internal", address))
        except KeyError:
            return False

    async def after(
        self,
        env: Envelope,
        message: Message,
        findings: Findings | None,
        verdict: Verdict,
        outcome: Outcome,
    ) -> None:
        cfg = self.config.notices
        if not cfg.enabled:
            return
        subject = findings.subject if findings is not None else ""
        sender_internal = should_notify_sender(env.mail_from, self.is_internal)

        def to_sender() -> bool:
            return sender_internal and self.limiter.allow(env.mail_from.lower())

        modes = {r.name: r.mode for r in verdict.rules}
        asks = {n.rule: n.targets for n in verdict.notify}
        notices: list[tuple[str, Sequence[str], bytes | None]] = []
        held_rules = {rule for record in outcome.records for rule in record.rules}
        t = self.templates

        for record in outcome.records:
            if to_sender():
                notice = quarantine_notice(cfg, record, verdict=verdict, templates=t)
                notices.append(("quarantine-notice", [env.mail_from], notice))
            notices.append(
                (
                    "officer-alert",
                    cfg.officers,
                    officer_alert(cfg, record, verdict=verdict, templates=t),
                )
            )
            extra = _addresses(x for rule in record.rules for x in asks.get(rule, ()))
            if extra:
                alert = officer_alert(
                    replace(cfg, officers=tuple(extra)), record, verdict=verdict, templates=t
                )
                notices.append(("officer-alert", extra, alert))

        audited = [n for n in verdict.audit if modes.get(n) == "audit"]
        if audited:
            alert = audit_alert(
                cfg,
                verdict,
                queue_id=env.queue_id,
                sender=env.mail_from,
                subject=subject,
                rules=audited,
                templates=t,
            )
            notices.append(("audit-alert", cfg.officers, alert))

        enforced = [r for r in asks if modes.get(r) == "enforce" and r not in held_rules]
        if enforced:
            wanted = {x for rule in enforced for x in asks[rule]}
            to = [*(cfg.officers if "officers" in wanted else ()), *_addresses(wanted)]
            if "sender" in wanted and to_sender():
                to.append(env.mail_from)
            outcomes = [
                (o.address, _OUTCOME_WORDS.get(o.action, o.action)) for o in outcome.recipients
            ]
            notices.append(
                (
                    "rule-alert",
                    to,
                    rule_alert(
                        cfg,
                        verdict,
                        to=list(dict.fromkeys(to)),
                        rules=enforced,
                        queue_id=env.queue_id,
                        sender=env.mail_from,
                        subject=subject,
                        outcomes=outcomes,
                        templates=t,
                    ),
                )
            )

        refused = [o for o in outcome.recipients if o.action in ("rejected", "refused")]
        if refused and outcome.reply.code < 300 and to_sender():
            delivered = [o.address for o in outcome.recipients if o.action == "delivered"]
            failed = [
                FailedRecipient(o.address, o.reply.status or "5.0.0", o.reply.line())
                for o in refused
            ]
            notices.append(
                (
                    "dsn",
                    [env.mail_from],
                    dsn(
                        cfg,
                        original=message.head(),
                        sender=env.mail_from,
                        failed=failed,
                        reporting_mta=self.config.hostname,
                        queue_id=env.queue_id,
                        arrival=env.received_at,
                        delivered=delivered,
                        templates=t,
                    ),
                )
            )

        for kind, rcpts, data in notices:
            if data and rcpts:
                await self._send(env, kind, list(dict.fromkeys(rcpts)), data)

    async def _send(self, env: Envelope, kind: str, rcpts: list[str], data: bytes) -> None:
        utf8 = any(not a.isascii() for a in rcpts)
        result = await self.deliverer.send(
            "upstream", "", rcpts, Message.from_content(data), smtputf8=utf8
        )
        log.event(
            "notice",
            logging.INFO if result.ok else logging.WARNING,
            id=env.queue_id,
            kind=kind,
            to=rcpts,
            ok=result.ok,
            reply=f"{result.code} {result.message}",
        )
