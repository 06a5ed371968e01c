"""Verdict: the policy's decision for one message, per recipient, with its trail.

The contract between ``milter.policy`` (which produces it) and the pipeline and
actions (which carry it out). Like Mailman's rule chain, it records every rule
that was evaluated, whether it matched and why, so logs, notices, the quarantine
record and ``milter check`` all tell the same story.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

Action = Literal["deliver", "quarantine", "reject"]

# Most restrictive first: reject > quarantine > route > deliver.
SEVERITY: dict[str, int] = {"deliver": 0, "route": 1, "quarantine": 2, "reject": 3}


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """The JSON shape of a frozen selector value (``size: {min, max}`` as a mapping)."""
    if (
        isinstance(value, tuple)
        and value
        and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in value)
    ):
        return {k: _thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class AttachmentSelector:
    """Which attachments a ``strip_attachments`` rewrite removes: the policy's own
    attachment selector, as ``milter.policy.schema`` normalises it, frozen so that
    verdicts can be grouped by their rewrites and stored with a hold."""

    items: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> AttachmentSelector:
        return cls(tuple(sorted((str(k), _freeze(v)) for k, v in spec.items())))

    def spec(self) -> dict[str, Any]:
        """The selector as a mapping, for the matcher and for JSON."""
        out: dict[str, Any] = {}
        for key, value in self.items:
            thawed = _thaw(value)
            out[key] = tuple(thawed) if isinstance(thawed, list) else thawed
        return out


@dataclass(frozen=True)
class SubjectPrefix:
    """Prepend ``text`` to the Subject (idempotent)."""

    text: str
    rule: str = ""
    kind: ClassVar[str] = "subject_prefix"


@dataclass(frozen=True)
class AddHeader:
    name: str
    value: str
    rule: str = ""
    kind: ClassVar[str] = "add_header"


@dataclass(frozen=True)
class RemoveHeader:
    name: str
    rule: str = ""
    kind: ClassVar[str] = "remove_header"


@dataclass(frozen=True)
class Disclaimer:
    """``html`` None means: derived from ``text``."""

    text: str
    html: str | None = None
    rule: str = ""
    kind: ClassVar[str] = "disclaimer"


@dataclass(frozen=True)
class StripAttachments:
    selector: AttachmentSelector
    reason: str
    rule: str = ""
    kind: ClassVar[str] = "strip_attachments"


# One change to the message, applied by ``milter.actions.rewrite``; ``rule`` names the
# rule that asked for it. A closed set: the rewriter and the milter front-end (which
# turns some rewrites into header edits) handle every member.
Rewrite = SubjectPrefix | AddHeader | RemoveHeader | Disclaimer | StripAttachments

REWRITE_KINDS: dict[str, type[Rewrite]] = {
    c.kind: c for c in (SubjectPrefix, AddHeader, RemoveHeader, Disclaimer, StripAttachments)
}


class RewriteFormatError(ValueError):
    """A stored rewrite (a hold's release plan) that cannot be read back."""


def rewrite_to_dict(rw: Rewrite) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": rw.kind}
    for f in fields(rw):
        value = getattr(rw, f.name)
        out[f.name] = value.spec() if isinstance(value, AttachmentSelector) else value
    return out


def rewrite_from_dict(data: Mapping[str, Any]) -> Rewrite:
    """The inverse of ``rewrite_to_dict``."""
    cls = REWRITE_KINDS.get(str(data.get("kind")))
    if cls is None:
        raise RewriteFormatError(f"unknown rewrite {data.get('kind')!r}")
    args: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name == "selector":
            if not isinstance(value, Mapping):
                raise RewriteFormatError("a selector is a mapping")
            value = AttachmentSelector.of(value)
        args[f.name] = value
    try:
        return cls(**args)
    except TypeError as exc:
        raise RewriteFormatError(f"{cls.kind}: {exc}") from None


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
            "rewrites": [rewrite_to_dict(rw) for rw in self.rewrites],
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
