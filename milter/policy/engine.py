"""The policy engine: (envelope, findings) -> a per-recipient Verdict, with its trail.

Loading does all the work that can be done once (validation, domain sets, patterns,
the keyword automaton); ``evaluate`` is pure and only compares. Like Mailman's rule
chain, every rule's outcome is recorded with the findings it used, and the decision
is taken once per recipient after all matching rules are known: the most
restrictive enforce-mode terminal action wins (reject > quarantine > route >
deliver), rewrites accumulate in rule order.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

from milter.envelope import Envelope
from milter.inspect.findings import Findings
from milter.inspect.labels import DEFAULT_SCHEME, LabelScheme
from milter.policy.conditions import Context, DomainSet
from milter.policy.schema import Compiled, Rule, Template, compile_sources
from milter.policy.verdict import (
    REWRITE_KINDS,
    SEVERITY,
    Action,
    AttachmentSelector,
    Notify,
    RecipientVerdict,
    Rewrite,
    RuleResult,
    Verdict,
)
from milter.yamlsource import Source, SourceError, load_file, load_text


class PolicyError(SourceError):
    """An invalid policy: every problem found, each as ``file:line:col: message``."""

    def __init__(self, errors: Sequence[SourceError]) -> None:
        if not errors:
            errors = [SourceError("<policy>", 1, 1, "invalid policy")]
        first = errors[0]
        super().__init__(first.file, first.line, first.col, first.message)
        self.errors = list(errors)
        self.args = ("\n".join(str(e) for e in self.errors),)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


def _stopped(name: str) -> tuple[str, ...]:
    return (f"not evaluated: rule {name!r} stopped evaluation for this recipient",)


class Policy:
    """A loaded, validated policy. Immutable; reloading builds a new one."""

    def __init__(self, compiled: Compiled) -> None:
        self._c = compiled
        self._ranks = {level: i for i, level in enumerate(compiled.levels)}
        self._scheme: LabelScheme | None = None

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def load(cls, paths: Sequence[str], *, routes: Collection[str] | None = None) -> Policy:
        """Read the layered policy files; ``routes`` are the gateway's route names
        (``None``: route names are not checked). Raises ``PolicyError``."""
        errors: list[SourceError] = []
        sources: list[Source] = []
        if not paths:
            raise PolicyError([SourceError("<policy>", 1, 1, "no policy file given")])
        for path in paths:
            try:
                sources.append(load_file(path))
            except SourceError as exc:
                errors.append(exc)
        return cls._build(sources, routes, errors)

    @classmethod
    def from_texts(
        cls, texts: Sequence[tuple[str, str]], *, routes: Collection[str] | None = None
    ) -> Policy:
        """Like ``load`` from (file name, YAML text) pairs, for tools and tests."""
        errors: list[SourceError] = []
        sources: list[Source] = []
        for name, text in texts:
            try:
                sources.append(load_text(text, name))
            except SourceError as exc:
                errors.append(exc)
        return cls._build(sources, routes, errors)

    @classmethod
    def _build(
        cls, sources: list[Source], routes: Collection[str] | None, errors: list[SourceError]
    ) -> Policy:
        compiled = compile_sources(sources, routes, errors)
        if errors:
            raise PolicyError(errors)
        return cls(compiled)

    # -- what it holds -------------------------------------------------------------------

    @property
    def files(self) -> tuple[str, ...]:
        return self._c.files

    @property
    def levels(self) -> tuple[str, ...]:
        """Classification levels, lowest first."""
        return self._c.levels

    @property
    def scheme(self) -> LabelScheme:
        """The label scheme the inspector resolves markings with (levels, aliases, GUIDs)."""
        if self._scheme is None:
            if self._c.defaults:
                self._scheme = DEFAULT_SCHEME
            else:
                self._scheme = LabelScheme(
                    self._c.levels, dict(self._c.aliases), dict(self._c.guids)
                )
        return self._scheme

    @property
    def sets(self) -> Mapping[str, DomainSet]:
        return self._c.sets

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._c.rules

    @property
    def dictionaries(self) -> Mapping[str, tuple[str, ...]]:
        return self._c.dictionaries

    def rule(self, name: str) -> Rule:
        for r in self._c.rules:
            if r.name == name:
                return r
        raise KeyError(name)

    def in_set(self, name: str, address: str) -> bool:
        """Whether ``address`` belongs to the named set (KeyError for an unknown set)."""
        return self._c.sets[name].contains(address)

    # -- deciding ------------------------------------------------------------------------

    def evaluate(self, envelope: Envelope, findings: Findings) -> Verdict:
        """The decision for every envelope recipient, with every rule's outcome."""
        rules = self._c.rules
        ctx = Context(envelope, findings, self._ranks, self._c.keywords)
        values = {
            "classification": findings.classification or "",
            "sender": envelope.mail_from or "<>",
            "rule": "",
            "clause": "",
        }
        results: list[list[RuleResult]] = [[] for _ in rules]
        message_level: dict[int, tuple[bool, tuple[str, ...]]] = {}
        rendered: dict[int, tuple[Rewrite, ...]] = {}
        audit: list[str] = []
        notify: dict[str, tuple[list[str], str | None]] = {}
        verdicts: list[RecipientVerdict] = []
        last_stop: str | None = None

        def outcome(i: int, rule: Rule) -> tuple[bool, tuple[str, ...]]:
            if rule.per_recipient:
                return self._match(rule, ctx)
            hit = message_level.get(i)
            if hit is None:
                hit = message_level[i] = self._match(rule, ctx)
                results[i].append(_result(rule, *hit))
            return hit

        def tell(rule: Rule, targets: Sequence[str]) -> None:
            got = notify.setdefault(rule.name, ([], rule.clause))[0]
            got.extend(t for t in targets if t not in got)

        for address in envelope.rcpt_tos:
            ctx.set_recipient(address)
            stopped: str | None = None
            matched: list[Rule] = []
            winner: Rule | None = None
            for i, rule in enumerate(rules):
                if stopped is not None:
                    if rule.per_recipient:
                        results[i].append(_result(rule, False, _stopped(stopped), address))
                    continue
                hit, reasons = outcome(i, rule)
                if rule.per_recipient:
                    results[i].append(_result(rule, hit, reasons, address))
                if not hit:
                    continue
                if rule.mode != "enforce":
                    if rule.name not in audit:
                        audit.append(rule.name)
                    if rule.mode == "audit":
                        tell(rule, ("officers",))
                    continue
                matched.append(rule)
                if rule.terminal is not None and (
                    winner is None or SEVERITY[_kind(rule)] > SEVERITY[_kind(winner)]
                ):
                    winner = rule
                if rule.stop:
                    stopped = last_stop = rule.name
            verdict, decisive = self._decide(address, matched, winner, rendered, values)
            verdicts.append(verdict)
            for rule in decisive:
                if rule.notify:
                    tell(rule, rule.notify)

        for i, rule in enumerate(rules):
            if not results[i] and not rule.per_recipient:
                if envelope.rcpt_tos:
                    results[i].append(_result(rule, False, _stopped(last_stop or "?")))
                else:
                    outcome(i, rule)
        return Verdict(
            classification=findings.classification,
            recipients=tuple(verdicts),
            rules=tuple(r for group in results for r in _collapse(group)),
            notify=tuple(Notify(name, tuple(t), clause) for name, (t, clause) in notify.items()),
            audit=tuple(audit),
        )

    @staticmethod
    def _match(rule: Rule, ctx: Context) -> tuple[bool, tuple[str, ...]]:
        reasons: list[str] = []
        if rule.when is None:
            reasons.append("always (no conditions)")
        elif not rule.when.check(ctx, reasons):
            return False, tuple(reasons)
        if rule.unless is not None:
            own: list[str] = []
            held = rule.unless.check(ctx, own)
            reasons.extend(f"unless: {r}" for r in own)
            if held:
                return False, tuple(reasons)
        return True, tuple(reasons)

    def _decide(
        self,
        address: str,
        matched: list[Rule],
        winner: Rule | None,
        rendered: dict[int, tuple[Rewrite, ...]],
        values: dict[str, str],
    ) -> tuple[RecipientVerdict, list[Rule]]:
        """The recipient's outcome and the rules that decided it. A rule whose terminal
        action was overruled by a more restrictive one contributes nothing else either:
        its rewrites, copies and notices belong to the outcome it asked for."""
        kind = _kind(winner) if winner is not None else "deliver"
        decisive = [
            r
            for r in matched
            if r.terminal is None
            or (
                winner is not None
                and _kind(r) == kind
                and (kind != "route" or r.route == winner.route)
            )
        ]
        if kind == "reject":
            decisive = [r for r in decisive if r.terminal is not None]
        clauses: list[str] = []
        for r in decisive:
            if r.clause and r.clause not in clauses:
                clauses.append(r.clause)
        names = tuple(r.name for r in decisive)
        if kind == "reject":
            text = winner.reject_text if winner is not None else None
            return RecipientVerdict(address, "reject", None, names, tuple(clauses), text), decisive
        rewrites: list[Rewrite] = []
        bcc: list[str] = []
        for r in decisive:
            rewrites.extend(self._rewrites(r, rendered, values))
            bcc.extend(b for b in r.bcc if b not in bcc)
        # A route (to ``upstream`` or elsewhere) delivers; only a delivery has a route.
        action: Action = "quarantine" if kind == "quarantine" else "deliver"
        route = None
        release_route: str | None = None
        release_rewrites: tuple[Rewrite, ...] = ()
        if action == "deliver":
            route = winner.route if winner is not None and winner.route else "upstream"
        else:
            release_route, release_rewrites = self._without_hold(matched, rendered, values)
        verdict = RecipientVerdict(
            address,
            action,
            route,
            names,
            tuple(clauses),
            rewrites=tuple(rewrites),
            bcc=tuple(bcc),
            release_route=release_route,
            release_rewrites=release_rewrites,
        )
        return verdict, decisive

    def _without_hold(
        self,
        matched: list[Rule],
        rendered: dict[int, tuple[Rewrite, ...]],
        values: dict[str, str],
    ) -> tuple[str, tuple[Rewrite, ...]]:
        """The route and rewrites a held recipient would have had with no hold: what
        an officer's release must send (sanapati stays sanapati, with its header)."""
        routed = None
        for r in matched:
            if r.terminal is not None and _kind(r) == "route" and routed is None:
                routed = r
        kind = "route" if routed is not None else "deliver"
        rewrites: list[Rewrite] = []
        for r in matched:
            if r.terminal is None or (
                _kind(r) == kind and (routed is None or r.route == routed.route)
            ):
                rewrites.extend(self._rewrites(r, rendered, values))
        route = routed.route if routed is not None and routed.route else "upstream"
        return route, tuple(rewrites)

    @staticmethod
    def _rewrites(
        rule: Rule, rendered: dict[int, tuple[Rewrite, ...]], values: dict[str, str]
    ) -> tuple[Rewrite, ...]:
        if not rule.rewrites:
            return ()
        done = rendered.get(id(rule))
        if done is None:
            own = {**values, "rule": rule.name, "clause": rule.clause or ""}
            out: list[Rewrite] = []
            for spec in rule.rewrites:
                args: dict[str, Any] = {}
                for key, raw in spec.args:
                    value = raw
                    if isinstance(raw, Template):
                        value = raw.render(own)
                    elif key == "selector":
                        value = AttachmentSelector.of(raw)
                    elif key == "reason" and raw is None:
                        value = f"removed by rule {rule.name}"
                    args[key] = value
                out.append(REWRITE_KINDS[spec.kind](**args, rule=rule.name))
            done = rendered[id(rule)] = tuple(out)
        return done


def _collapse(group: list[RuleResult]) -> list[RuleResult]:
    """One entry instead of one per recipient when the recipient made no difference
    (typically: the rule's message-level conditions already failed)."""
    if len(group) < 2 or group[0].recipient is None:
        return group
    first = group[0]
    if all(r.matched == first.matched and r.reasons == first.reasons for r in group[1:]):
        return [replace(first, recipient=None)]
    return group


def _result(
    rule: Rule, matched: bool, reasons: tuple[str, ...], recipient: str | None = None
) -> RuleResult:
    """One entry of the trail: the outcome, told with the rule's own mode, clause and
    description, for one recipient or (``recipient`` None) for the whole message."""
    return RuleResult(
        rule.name, matched, rule.mode, rule.clause, rule.description, reasons, recipient
    )


def _kind(rule: Rule) -> str:
    """The severity class of a rule's terminal action (a route to ``upstream`` delivers)."""
    if rule.terminal == "route" and rule.route == "upstream":
        return "deliver"
    return rule.terminal or "deliver"
