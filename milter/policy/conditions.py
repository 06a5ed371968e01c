"""Compiled conditions: pure predicates over one message and one recipient.

``milter.policy.schema`` turns the YAML into the objects below once, at load time,
so evaluation only compares precomputed sets, patterns and numbers. Every condition
explains itself: ``check`` appends to ``reasons`` the findings it used, in words, so
``milter check``, logs, notices and the quarantine record tell the same story.

A condition that does not depend on the recipient is evaluated once per message and
remembered (``Context.memo``); a rule naming both a classification and a recipient
set therefore costs one classification test however many recipients there are.
"""

from __future__ import annotations

import fnmatch
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ahocorasick_rs

from milter.envelope import Envelope, domain_of
from milter.inspect.findings import (
    ATTACHMENT,
    ENCRYPTED,
    IMAGE_ONLY,
    SIGNED,
    UNSCANNABLE,
    Findings,
    Part,
)

# Part flags an attachment selector can require (true) or exclude (false).
PART_FLAGS = (
    "encrypted",
    "mismatch",
    "executable",
    "macro",
    "signed",
    "unscannable",
    "archive",
    IMAGE_ONLY,  # an image or a PDF page with no text: only OCR reads it
)
# Flags a message-level condition looks for in every part, bodies included.
MESSAGE_FLAGS = (ENCRYPTED, SIGNED, UNSCANNABLE)


def normalise_address(address: str) -> str:
    """The casefolded bare address: ``<A@B.example>`` and ``a@b.example`` are one."""
    return address.strip().strip("<>").strip().casefold()


def glob_pattern(globs: Iterable[str]) -> re.Pattern[str]:
    """One case-insensitive pattern for shell-style globs (``*.exe``, ``image/*``)."""
    return re.compile("|".join(fnmatch.translate(g.casefold()) for g in globs))


def human_size(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{n} B"


# --- domain sets ----------------------------------------------------------------------


class DomainSet:
    """Domains, ``*.`` wildcards (subdomains only) and exact addresses, matched in O(labels).

    ``jakarta.go.id`` matches that domain; ``*.jakarta.go.id`` matches every subdomain
    but not the apex, as in DNS wildcards; ``user@example.org`` matches one address.
    """

    __slots__ = ("addresses", "domains", "name", "suffixes")

    def __init__(self, name: str, entries: Iterable[str]) -> None:
        self.name = name
        domains: set[str] = set()
        suffixes: set[str] = set()
        addresses: set[str] = set()
        for raw in entries:
            entry = raw.strip().casefold().rstrip(".")
            if "@" in entry:
                addresses.add(normalise_address(entry))
            elif entry.startswith("*."):
                suffixes.add(entry[2:])
            else:
                domains.add(entry)
        self.domains = frozenset(domains)
        self.suffixes = frozenset(suffixes)
        self.addresses = frozenset(addresses)

    def matches(self, address: str, domain: str) -> bool:
        """``address`` normalised, ``domain`` lower-case (see ``normalise_address``)."""
        if address in self.addresses or domain in self.domains:
            return True
        if not self.suffixes:
            return False
        rest = domain
        while True:
            dot = rest.find(".")
            if dot < 0:
                return False
            rest = rest[dot + 1 :]
            if rest in self.suffixes:
                return True

    def contains(self, address: str) -> bool:
        """Whether a raw address (as in an envelope) belongs to the set."""
        norm = normalise_address(address)
        return self.matches(norm, domain_of(norm))

    def entries(self) -> list[str]:
        return (
            sorted(self.domains) + sorted("*." + s for s in self.suffixes) + sorted(self.addresses)
        )


# --- keyword dictionaries -------------------------------------------------------------


def _is_word(c: str) -> bool:
    return c.isalnum() or c == "_"


class KeywordIndex:
    """Every keyword of every dictionary in one Aho-Corasick automaton.

    The text is scanned once per message, whatever the number of dictionaries;
    matches count only on word boundaries, and the words of a phrase may be
    separated by any whitespace (extracted PDF text breaks lines anywhere).
    """

    def __init__(self, dictionaries: Mapping[str, Sequence[str]]) -> None:
        # first word -> [(dictionary, keyword, rest-of-phrase pattern or None)]
        self._entries: dict[str, list[tuple[str, str, re.Pattern[str] | None]]] = {}
        for name, words in dictionaries.items():
            for word in words:
                tokens = word.casefold().split()
                if not tokens:
                    continue
                rest = None
                if len(tokens) > 1:
                    rest = re.compile(
                        "".join(r"\s+" + re.escape(t) for t in tokens[1:]) + r"(?!\w)"
                    )
                self._entries.setdefault(tokens[0], []).append((name, " ".join(tokens), rest))
        self._keys = list(self._entries)
        self._automaton = (
            ahocorasick_rs.AhoCorasick(self._keys, matchkind=ahocorasick_rs.MatchKind.Standard)
            if self._keys
            else None
        )

    def scan(self, text: str) -> dict[str, list[str]]:
        """Dictionary name -> distinct keywords found, in order of first appearance."""
        found: dict[str, list[str]] = {}
        if self._automaton is None or not text:
            return found
        folded = text.casefold()
        end = len(folded)
        for index, start, stop in self._automaton.find_matches_as_indexes(folded, overlapping=True):
            if start > 0 and _is_word(folded[start - 1]):
                continue
            for name, keyword, rest in self._entries[self._keys[index]]:
                if rest is None:
                    if stop < end and _is_word(folded[stop]):
                        continue
                elif rest.match(folded, stop) is None:
                    continue
                words = found.setdefault(name, [])
                if keyword not in words:
                    words.append(keyword)
        return found


# --- evaluation context ---------------------------------------------------------------


class Context:
    """One evaluation: the message, the current recipient and what was already computed."""

    __slots__ = (
        "envelope",
        "findings",
        "keyword_hits",
        "keywords",
        "memo",
        "ranks",
        "rcpt",
        "rcpt_domain",
        "recipient",
        "sender",
        "sender_domain",
    )

    def __init__(
        self,
        envelope: Envelope,
        findings: Findings,
        ranks: Mapping[str, int],
        keywords: KeywordIndex,
    ) -> None:
        self.envelope = envelope
        self.findings = findings
        self.ranks = ranks
        self.keywords = keywords
        self.keyword_hits: dict[str, list[str]] | None = None
        self.memo: dict[int, tuple[bool, tuple[str, ...]]] = {}
        self.sender = normalise_address(envelope.mail_from)
        self.sender_domain = domain_of(self.sender)
        self.recipient = ""
        self.rcpt = ""
        self.rcpt_domain = ""

    def set_recipient(self, address: str) -> None:
        self.recipient = address
        self.rcpt = normalise_address(address)
        self.rcpt_domain = domain_of(self.rcpt)

    def hits(self) -> dict[str, list[str]]:
        if self.keyword_hits is None:
            text = self.findings.subject + "\n" + self.findings.text
            self.keyword_hits = self.keywords.scan(text)
        return self.keyword_hits


class Condition(ABC):
    """A compiled predicate; ``per_recipient`` tells whether it reads the recipient."""

    __slots__ = ()
    per_recipient: bool = False

    def check(self, ctx: Context, reasons: list[str]) -> bool:
        if self.per_recipient:
            return self.test(ctx, reasons)
        key = id(self)
        hit = ctx.memo.get(key)
        if hit is None:
            own: list[str] = []
            hit = (self.test(ctx, own), tuple(own))
            ctx.memo[key] = hit
        reasons.extend(hit[1])
        return hit[0]

    @abstractmethod
    def test(self, ctx: Context, reasons: list[str]) -> bool:
        """Evaluate, appending the findings used to ``reasons``."""


class All(Condition):
    """Every child holds; message-level children are tested first (they are memoised)."""

    __slots__ = ("children", "per_recipient")

    def __init__(self, children: Sequence[Condition]) -> None:
        self.children = tuple(sorted(children, key=lambda c: c.per_recipient))
        self.per_recipient = any(c.per_recipient for c in children)

    def test(self, ctx: Context, reasons: list[str]) -> bool:
        return all(c.check(ctx, reasons) for c in self.children)


class AnyOf(Condition):
    """At least one child holds; on failure every child's reason is kept."""

    __slots__ = ("children", "per_recipient")

    def __init__(self, children: Sequence[Condition]) -> None:
        self.children = tuple(children)
        self.per_recipient = any(c.per_recipient for c in children)

    def test(self, ctx: Context, reasons: list[str]) -> bool:
        failed: list[str] = []
        for c in self.children:
            own: list[str] = []
            if c.check(ctx, own):
                reasons.extend(own)
                return True
            failed.extend(own)
        reasons.extend(failed)
        return False


class Not(Condition):
    __slots__ = ("child", "per_recipient")

    def __init__(self, child: Condition) -> None:
        self.child = child
        self.per_recipient = child.per_recipient

    def test(self, ctx: Context, reasons: list[str]) -> bool:
        own: list[str] = []
        result = self.child.check(ctx, own)
        reasons.extend(f"not: {r}" for r in own)
        return not result


# --- envelope -------------------------------------------------------------------------


class AddressCondition(Condition):
    """``sender`` or ``recipient``: address globs, domains, membership of named sets."""

    __slots__ = (
        "address",
        "address_desc",
        "domain",
        "in_sets",
        "not_in_sets",
        "per_recipient",
        "role",
    )

    def __init__(
        self,
        role: str,
        *,
        address: Sequence[str] = (),
        domain: DomainSet | None = None,
        in_sets: Sequence[DomainSet] = (),
        not_in_sets: Sequence[DomainSet] = (),
    ) -> None:
        self.role = role
        self.per_recipient = role == "recipient"
        self.address = glob_pattern(address) if address else None
        self.address_desc = ", ".join(address)
        self.domain = domain
        self.in_sets = tuple(in_sets)
        self.not_in_sets = tuple(not_in_sets)

    def _subject(self, ctx: Context) -> tuple[str, str, str]:
        if self.per_recipient:
            return ctx.recipient, ctx.rcpt, ctx.rcpt_domain
        return ctx.envelope.mail_from or "<>", ctx.sender, ctx.sender_domain

    def test(self, ctx: Context, reasons: list[str]) -> bool:
        shown, addr, domain = self._subject(ctx)
        who = f"{self.role} {shown}"
        if self.address is not None:
            if self.address.match(addr) is None:
                reasons.append(f"{who} does not match {self.address_desc}")
                return False
            reasons.append(f"{who} matches {self.address_desc}")
        if self.domain is not None:
            entries = ", ".join(self.domain.entries())
            if not self.domain.matches(addr, domain):
                reasons.append(f"{who} is not in domains {entries}")
                return False
            reasons.append(f"{who} is in domains {entries}")
        if self.in_sets:
            hit = next((s for s in self.in_sets if s.matches(addr, domain)), None)
            if hit is None:
                names = " or ".join(repr(s.name) for s in self.in_sets)
                reasons.append(f"{who} is not in set {names}")
                return False
            reasons.append(f"{who} is in set {hit.name!r}")
        if self.not_in_sets:
            hit = next((s for s in self.not_in_sets if s.matches(addr, domain)), None)
            if hit is not None:
                reasons.append(f"{who} is in set {hit.name!r}")
                return False
            names = " nor ".join(repr(s.name) for s in self.not_in_sets)
            reasons.append(f"{who} is not in set {names}")
        return True


# --- classification and labels --------------------------------------------------------


class ClassificationCondition(Condition):
    """The message's classification (the highest level found) against the policy's levels."""

    __slots__ = ("at_least", "at_most", "is_")

    def __init__(
        self,
        *,
        at_least: str | None = None,
        at_most: str | None = None,
        is_: Sequence[str] = (),
    ) -> None:
        self.at_least = at_least
        self.at_most = at_most
        self.is_ = tuple(is_)

    def test(self, ctx: Context, reasons: list[str]) -> bool:
        level = ctx.findings.classification
        shown = level or "none (unlabelled)"
        rank = ctx.ranks.get(level, -1) if level is not None else -1
        if self.is_:
            if level not in self.is_:
                reasons.append(f"classification {shown} is not {' or '.join(self.is_)}")
                return False
            reasons.append(f"classification {shown} is {' or '.join(self.is_)}")
        if self.at_least is not None:
            if rank < ctx.ranks[self.at_least]:
                reasons.append(f"classification {shown} is below {self.at_least}")
                return False
            reasons.append(f"classification {shown} is at least {self.at_least}")
        if self.at_most is not None:
            if rank > ctx.ranks[self.at_most] or level is None:
                reasons.append(f"classification {shown} is not at most {self.at_most}")
                return False
            reasons.append(f"classification {shown} is at most {self.at_most}")
        return True


class LabelCondition(Condition):
    """A raw marking (as written) and optionally where it was found, by glob."""

    __slots__ = ("desc", "raw", "source")

    def __init__(self, raw: Sequence[str], source: Sequence[str] = ()) -> None:
        self.raw = glob_pattern(raw) if raw else None
        self.source = glob_pattern(source) if source else None
        bits = []
        if raw:
            bits.append("raw " + ", ".join(raw))
        if source:
            bits.append("source " + ", ".join(source))
        self.desc = "; ".join(bits) or "any label"

    def test(self, ctx: Context, reasons: list[str]) -> bool:
        for label in ctx.findings.labels:
            if self.raw is not None and self.raw.match(label.raw.casefold()) is None:
                continue
            if self.source is not None and self.source.match(label.source.casefold()) is None:
                continue
            reasons.append(f"label {label.raw!r} ({label.source}) matches {self.desc}")
            return True
        reasons.append(f"no label matches {self.desc}")
        return False


# --- attachments ----------------------------------------------------------------------


def is_file(part: Part) -> bool:
    """A part that is a file: flagged attachment, named, or inside another file."""
    return ATTACHMENT in part.flags or part.filename is not None or part.depth > 1


@dataclass(frozen=True)
class Range:
    """Inclusive bounds; None is open."""

    low: int | None = None
    high: int | None = None

    def holds(self, value: int) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


class PartSelector:
    """Which attachments: every given property must hold for the same part.

    Built from the normalised selector mapping (see ``schema``) so that the rewrite
    step can select exactly the parts a rule's condition saw (``selector_matcher``).
    """

    __slots__ = ("declared", "depth", "desc", "extensions", "flags", "name", "size", "type")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        def globs(key: str) -> re.Pattern[str] | None:
            values = spec.get(key)
            return glob_pattern(values) if values else None

        self.type = globs("type")
        self.declared = globs("declared_type")
        self.name = globs("name")
        ext = spec.get("extension")
        self.extensions = frozenset(ext) if ext else None
        size = spec.get("size")
        self.size = Range(size.get("min"), size.get("max")) if size else None
        depth = spec.get("depth")
        self.depth = Range(depth.get("min"), depth.get("max")) if depth else None
        self.flags = tuple((f, bool(spec[f])) for f in PART_FLAGS if f in spec)
        self.desc = describe_selector(spec)

    def matches(self, part: Part) -> bool:
        if self.type is not None and self.type.match(part.true_type.casefold()) is None:
            return False
        if self.declared is not None and self.declared.match(part.declared_type.casefold()) is None:
            return False
        if self.name is not None and (
            part.filename is None or self.name.match(part.filename.casefold()) is None
        ):
            return False
        if self.extensions is not None and part.extension.casefold().lstrip(".") not in (
            self.extensions
        ):
            return False
        if self.size is not None and not self.size.holds(part.size):
            return False
        if self.depth is not None and not self.depth.holds(part.depth):
            return False
        return all((flag in part.flags) == want for flag, want in self.flags)


def describe_selector(spec: Mapping[str, Any]) -> str:
    bits = []
    for key, value in spec.items():
        if key in ("size", "depth"):
            show = human_size if key == "size" else str
            lo, hi = value.get("min"), value.get("max")
            if lo is not None:
                bits.append(f"{key} >= {show(lo)}")
            if hi is not None:
                bits.append(f"{key} <= {show(hi)}")
        elif key in PART_FLAGS:
            bits.append(key if value else f"not {key}")
        elif isinstance(value, (list, tuple)):
            bits.append(f"{key} {', '.join(map(str, value))}")
    return "; ".join(bits) or "any attachment"


def selector_matcher(spec: Mapping[str, Any]) -> Callable[[Part], bool]:
    """What a ``strip_attachments`` rewrite strips: the parts its selector matches, among
    files only (see ``is_file``), so a message body is never stripped."""
    selector = PartSelector(spec)
    return lambda part: is_file(part) and selector.matches(part)


class AttachmentCondition(Condition):
    """Some attachment, at any depth, has every property of the selector."""

    __slots__ = ("selector",)

    def __init__(self, selector: PartSelector) -> None:
        self.selector = selector

    def test(self, ctx: Context, reasons: list[str]) -> bool:
        for part in ctx.findings.parts:
            if is_file(part) and self.selector.matches(part):
                reasons.append(
                    f"attachment {part.path} ({part.true_type}) matches {self.selector.desc}"
                )
                return True
        reasons.append(f"no attachment matches {self.selector.desc}")
        return False


class PartFlagCondition(Condition):
    """``encrypted`` / ``signed`` / ``unscannable`` anywhere in the message, bodies included."""

    __slots__ = ("flag", "want")

    def __init__(self, flag: str, want: bool) -> None:
        self.flag = flag
        self.want = want

    def test(self, ctx: Context, reasons: list[str]) -> bool:
        found: list[str] = []
        if self.flag == UNSCANNABLE:
            found.extend(f"message: {r}" for r in ctx.findings.unscannable)
        for part in ctx.findings.parts:
            if self.flag in part.flags:
                found.append(f"{part.path}: {part.reason}" if part.reason else part.path)
        if found:
            reasons.append(f"{self.flag}: {'; '.join(found[:5])}")
        else:
            reasons.append(f"nothing is {self.flag}")
        return bool(found) == self.want


class DraftCondition(Condition):
    """Some document in the message is visibly not final (clause 2.f), with its evidence."""

    __slots__ = ("want",)

    def __init__(self, want: bool) -> None:
        self.want = want

    def test(self, ctx: Context, reasons: list[str]) -> bool:
        drafts = ctx.findings.drafts
        if drafts:
            shown = "; ".join(f"{d.source}: {d.evidence}" for d in drafts[:5])
            reasons.append(f"draft: {shown}")
        else:
            reasons.append("no document is a draft")
        return bool(drafts) == self.want


# --- content --------------------------------------------------------------------------


class KeywordCondition(Condition):
    """Distinct keywords of the named dictionaries found in the subject and text."""

    __slots__ = ("dictionaries", "min_count")

    def __init__(self, dictionaries: Sequence[str], min_count: int = 1) -> None:
        self.dictionaries = tuple(dictionaries)
        self.min_count = min_count

    def test(self, ctx: Context, reasons: list[str]) -> bool:
        hits = ctx.hits()
        found: list[str] = []
        per: list[str] = []
        for name in self.dictionaries:
            words = hits.get(name, ())
            if words:
                found.extend(words)
                per.append(f"{name}: {', '.join(words[:8])}")
        names = ", ".join(self.dictionaries)
        if len(found) >= self.min_count:
            reasons.append(f"text contains {len(found)} keyword(s) ({'; '.join(per)})")
            return True
        if found:
            reasons.append(
                f"text contains {len(found)} keyword(s) of {names}, fewer than "
                f"{self.min_count} ({'; '.join(per)})"
            )
        else:
            reasons.append(f"text contains no keyword of {names}")
        return False


class RegexCondition(Condition):
    __slots__ = ("pattern",)

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern

    def test(self, ctx: Context, reasons: list[str]) -> bool:
        f = ctx.findings
        m = self.pattern.search(f.subject) or self.pattern.search(f.text)
        if m is None:
            reasons.append(f"text does not match /{self.pattern.pattern}/")
            return False
        reasons.append(f"text matches /{self.pattern.pattern}/: {m.group(0)[:60]!r}")
        return True


class DetectorCondition(Condition):
    """Distinct valid values found by the named detectors, summed, against a minimum."""

    __slots__ = ("confidence", "min_count", "names")

    def __init__(self, names: Sequence[str], min_count: int, confidence: str | None) -> None:
        self.names = tuple(names)
        self.min_count = min_count
        self.confidence = confidence

    def test(self, ctx: Context, reasons: list[str]) -> bool:
        total = 0
        per = []
        for name in self.names:
            d = ctx.findings.detectors.get(name)
            n = 0 if d is None else (d.high_count if self.confidence == "high" else d.count)
            total += n
            per.append(f"{name} {n}")
        kind = "high-confidence " if self.confidence == "high" else ""
        what = f"{total} distinct valid {kind}values ({', '.join(per)})"
        if total >= self.min_count:
            reasons.append(f"detectors found {what}, at least {self.min_count}")
            return True
        reasons.append(f"detectors found {what}, fewer than {self.min_count}")
        return False


# --- headers, size --------------------------------------------------------------------


class HeaderCondition(Condition):
    """A top-level header by name; with a pattern, some value must match it."""

    __slots__ = ("name", "pattern", "present")

    def __init__(self, name: str, pattern: re.Pattern[str] | None, present: bool = True) -> None:
        self.name = name
        self.pattern = pattern
        self.present = present

    def test(self, ctx: Context, reasons: list[str]) -> bool:
        key = self.name.casefold()
        values = [v for k, v in ctx.findings.headers if k.casefold() == key]
        if self.pattern is None:
            reasons.append(f"header {self.name} is {'present' if values else 'absent'}")
            return bool(values) == self.present
        for v in values:
            if self.pattern.search(v):
                reasons.append(f"header {self.name} {v[:80]!r} matches /{self.pattern.pattern}/")
                return True
        reasons.append(f"no {self.name} header matches /{self.pattern.pattern}/")
        return False


class SizeCondition(Condition):
    __slots__ = ("range",)

    def __init__(self, bounds: Range) -> None:
        self.range = bounds

    def test(self, ctx: Context, reasons: list[str]) -> bool:
        size = ctx.findings.size
        ok = self.range.holds(size)
        bits = []
        if self.range.low is not None:
            bits.append(f">= {human_size(self.range.low)}")
        if self.range.high is not None:
            bits.append(f"<= {human_size(self.range.high)}")
        verb = "is" if ok else "is not"
        reasons.append(f"message size {human_size(size)} {verb} {' and '.join(bits)}")
        return ok
