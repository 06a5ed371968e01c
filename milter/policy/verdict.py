"""Verdict: the policy's decision for one message, per recipient, with its trail.

The contract between ``milter.policy`` (which produces it) and the pipeline and
actions (which carry it out). Like Mailman's rule chain, it records every rule
that was evaluated, whether it matched and why, so logs, notices, the quarantine
record and ``milter check`` all tell the same story.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal["deliver", "quarantine", "reject"]

# Most restrictive first: reject > quarantine > route > deliver.
SEVERITY: dict[str, int] = {"deliver": 0, "route": 1, "quarantine": 2, "reject": 3}


@dataclass(frozen=True)
class Rewrite:
    """One change to the message, applied by ``milter.actions.rewrite``.

    ``kind`` is one of ``subject_prefix`` (args: text), ``add_header`` (name, value),
    ``remove_header`` (name), ``disclaimer`` (text, html), ``strip_attachments``
    (selector: a dict of attachment conditions, reason). ``rule`` names the rule
    that asked for it.
    """

    kind: str
    args: tuple[tuple[str, Any], ...]
    rule: str

    def arg(self, key: str, default: Any = None) -> Any:
        return dict(self.args).get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rule": self.rule, **dict(self.args)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rewrite:
        """The inverse of ``to_dict`` (a quarantine record keeps its rewrites as JSON)."""
        args = {k: v for k, v in data.items() if k not in ("kind", "rule")}
        return cls(str(data["kind"]), tuple(args.items()), str(data.get("rule", "")))


@dataclass(frozen=True)
class RuleResult:
    """One rule's evaluation for one recipient (or for the message, when not per recipient)."""

    name: str
    matched: bool
    mode: str  # enforce | audit | test
    clause: str | None = None
    description: str | None = None
    reasons: tuple[str, ...] = ()  # the findings each condition used, in words
    recipient: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "matched": self.matched,
            "mode": self.mode,
            "clause": self.clause,
            "reasons": list(self.reasons),
            "recipient": self.recipient,
        }


@dataclass(frozen=True)
class Notify:
    """Who to tell and about which rule: ``targets`` holds ``sender``, ``officers`` or addresses."""

    rule: str
    targets: tuple[str, ...]
    clause: str | None = None


@dataclass(frozen=True)
class RecipientVerdict:
    """The decision for one envelope recipient."""

    address: str
    action: Action
    route: str | None = None  # "upstream" or a route name when delivered
    rules: tuple[str, ...] = ()  # rules whose enforce-mode actions decided this
    clauses: tuple[str, ...] = ()  # their SE 79/SE/2019 clauses
    reject_text: str | None = None
    rewrites: tuple[Rewrite, ...] = ()
    bcc: tuple[str, ...] = ()
    # For a held recipient: where, and changed how, it would have gone without the
    # hold; the quarantine keeps both so that a release sends it that way.
    release_route: str | None = None
    release_rewrites: tuple[Rewrite, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "action": self.action,
            "route": self.route if self.action == "deliver" else None,
            "rules": list(self.rules),
        }


@dataclass(frozen=True)
class Verdict:
    """The whole decision for one message."""

    classification: str | None
    recipients: tuple[RecipientVerdict, ...]
    rules: tuple[RuleResult, ...] = ()
    notify: tuple[Notify, ...] = ()
    audit: tuple[str, ...] = field(default=())  # audit/test-mode rules that matched

    @property
    def rewrites(self) -> tuple[Rewrite, ...]:
        seen: list[Rewrite] = []
        for r in self.recipients:
            for rw in r.rewrites:
                if rw not in seen:
                    seen.append(rw)
        return tuple(seen)

    def to_dict(self, findings: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "classification": self.classification,
            "recipients": [r.to_dict() for r in self.recipients],
            "rewrites": [rw.to_dict() for rw in self.rewrites],
            "rules": [r.to_dict() for r in self.rules],
        }
        if findings is not None:
            out["findings"] = findings
        return out


def deliver_all(recipients: tuple[str, ...], classification: str | None = None) -> Verdict:
    """The verdict when no policy applies: every recipient goes to the upstream."""
    return Verdict(
        classification=classification,
        recipients=tuple(RecipientVerdict(a, "deliver", "upstream") for a in recipients),
    )
