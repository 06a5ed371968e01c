"""Who hears about a message after its outcome, and sending them the notices.

The texts live in ``milter.actions.notices``; this module decides who gets what:
the internal sender of held mail (never an external or null sender: no
backscatter; rate-limited per sender), the compliance officers for every hold and
every audit-mode match, extra addresses a rule names, and a delivery status
notification to the internal sender when only some recipients were refused.
Notices go through the upstream with a null envelope sender, after the client has
its reply: a notice that fails is logged, never turned into a failure of the mail.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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
    should_notify_sender,
)
from milter.config import GatewayConfig
from milter.delivery import Deliverer
from milter.envelope import Envelope
from milter.inspect.findings import Findings
from milter.message import Message
from milter.policy.verdict import Verdict

if TYPE_CHECKING:
    from milter.pipeline import Outcome


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
        sender_ok = should_notify_sender(env.mail_from, self.is_internal)
        notices: list[tuple[str, Sequence[str], bytes]] = []
        record = outcome.record
        extra = sorted(
            {
                t
                for n in verdict.notify
                for t in n.targets
                if t not in ("sender", "officers") and "@" in t
            }
        )
        if record is not None:
            if sender_ok and self.limiter.allow(env.mail_from.lower()):
                notices.append(
                    (
                        "quarantine-notice",
                        [env.mail_from],
                        quarantine_notice(cfg, record, verdict=verdict, templates=self.templates),
                    )
                )
            alert = officer_alert(cfg, record, verdict=verdict, templates=self.templates)
            if alert is not None:
                notices.append(("officer-alert", cfg.officers, alert))
            if extra:
                notices.append(
                    (
                        "officer-alert",
                        extra,
                        officer_alert(
                            replace(cfg, officers=tuple(extra)),
                            record,
                            verdict=verdict,
                            templates=self.templates,
                        )
                        or b"",
                    )
                )
        if verdict.audit:
            alert = audit_alert(
                cfg,
                verdict,
                queue_id=env.queue_id,
                sender=env.mail_from,
                subject=subject,
                templates=self.templates,
            )
            if alert is not None:
                notices.append(("audit-alert", cfg.officers, alert))
        refused = [o for o in outcome.recipients if o.action in ("rejected", "refused")]
        if refused and outcome.reply.code < 300 and sender_ok:
            delivered = [o.address for o in outcome.recipients if o.action == "delivered"]
            notices.append(
                (
                    "dsn",
                    [env.mail_from],
                    dsn(
                        cfg,
                        original=message.content(),
                        sender=env.mail_from,
                        failed=[
                            FailedRecipient(o.address, o.reply.status or "5.0.0", o.reply.line())
                            for o in refused
                        ],
                        reporting_mta=self.config.hostname,
                        queue_id=env.queue_id,
                        arrival=env.received_at,
                        delivered=delivered,
                        templates=self.templates,
                    ),
                )
            )
        for kind, rcpts, data in notices:
            if not data or not rcpts:
                continue
            result = await self.deliverer.send(
                "upstream", "", list(rcpts), Message.from_content(data)
            )
            log.event(
                "notice",
                logging.INFO if result.ok else logging.WARNING,
                id=env.queue_id,
                kind=kind,
                to=list(rcpts),
                ok=result.ok,
                reply=f"{result.code} {result.message}",
            )
