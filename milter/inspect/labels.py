"""Classification levels and the markings that name them.

A marking is only worth something if it is read the way people write it: ``[RAHASIA]``
in a subject, ``Confidential`` in a Purview label, ``Sangat_Rahasia`` in a document
property. The scheme maps every spelling to one canonical level; the helpers below
recognise the places markings live, and nothing else, because a level word in ordinary
prose ("resep rahasia keluarga") is not a marking and must not block honest mail.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

from milter.inspect.errors import LabelSchemeError

_SEPARATORS = re.compile(r"[\s_\-]+")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def normalise(name: str) -> str:
    """One key for every spelling: case, underscores, hyphens and spacing do not matter."""
    return " ".join(_SEPARATORS.split(name.strip())).casefold().strip()


@dataclass(frozen=True)
class LabelScheme:
    """Canonical levels (lowest to highest) and the names and Purview GUIDs that map to them.

    ``aliases`` maps a casefolded alias to a level; ``guids`` maps a lower-case label
    GUID to a level. Every level also resolves from its own name, written with ``_``
    or a space. Invalid schemes raise ``LabelSchemeError`` at construction, so a
    policy with a typo fails at load time, not while mail flows.
    """

    levels: tuple[str, ...]
    aliases: dict[str, str] = field(default_factory=dict)
    guids: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.levels:
            raise LabelSchemeError("a label scheme needs at least one level")
        if len(set(self.levels)) != len(self.levels):
            raise LabelSchemeError("label scheme levels must be distinct")
        known = set(self.levels)
        for alias, level in self.aliases.items():
            if level not in known:
                raise LabelSchemeError(f"alias {alias!r} names unknown level {level!r}")
        for guid, level in self.guids.items():
            if level not in known:
                raise LabelSchemeError(f"label GUID {guid!r} names unknown level {level!r}")

    @cached_property
    def _lookup(self) -> dict[str, str]:
        table: dict[str, str] = {}
        for alias, level in self.aliases.items():
            table[normalise(alias)] = level
        for level in self.levels:
            table[normalise(level)] = level
        return table

    @cached_property
    def _guid_lookup(self) -> dict[str, str]:
        return {g.strip("{} ").lower(): level for g, level in self.guids.items()}

    @cached_property
    def _ranks(self) -> dict[str, int]:
        return {level: i for i, level in enumerate(self.levels)}

    @cached_property
    def names(self) -> tuple[str, ...]:
        """Every spelling that resolves, longest first (for building marking patterns)."""
        return tuple(sorted(self._lookup, key=lambda s: (-len(s), s)))

    def resolve(self, name: str) -> str | None:
        """The canonical level a name or GUID denotes, or None when it is not a level."""
        key = normalise(name)
        level = self._lookup.get(key)
        if level is None and _GUID.fullmatch(name.strip("{} ")):
            level = self._guid_lookup.get(name.strip("{} ").lower())
        return level

    def resolve_guid(self, guid: str) -> str | None:
        return self._guid_lookup.get(guid.strip("{} ").lower())

    def rank(self, level: str) -> int:
        """Position of a canonical level, lowest 0; -1 for a name that is not a level."""
        return self._ranks.get(level, -1)

    def highest(self, levels: Iterable[str | None]) -> str | None:
        """The most restrictive known level among ``levels`` (None and unknowns ignored)."""
        best: str | None = None
        for level in levels:
            if level is None or level not in self._ranks:
                continue
            if best is None or self._ranks[level] > self._ranks[best]:
                best = level
        return best

    def resolve_value(self, value: str) -> str | None:
        """A level from a free-form property value (``Confidential - All Employees``).

        The whole value is tried first, then each segment split on the separators
        labelling products put between a level and its qualifiers; the highest wins.
        """
        whole = self.resolve(value)
        if whole is not None:
            return whole
        parts = re.split(r"[\\/|;,:()\[\]]|\s[-–]\s", value)
        return self.highest(self.resolve(p) for p in parts if p.strip())


DEFAULT_SCHEME = LabelScheme(
    levels=("BIASA", "TERBATAS", "RAHASIA", "SANGAT_RAHASIA"),
    aliases={
        "biasa": "BIASA",
        "terbuka": "BIASA",
        "public": "BIASA",
        "internal": "TERBATAS",
        "terbatas": "TERBATAS",
        "restricted": "TERBATAS",
        "confidential": "RAHASIA",
        "rahasia": "RAHASIA",
        "sangat rahasia": "SANGAT_RAHASIA",
        "top secret": "SANGAT_RAHASIA",
        "highly confidential": "SANGAT_RAHASIA",
        "strictly confidential": "SANGAT_RAHASIA",
    },
)


# --- where markings live ------------------------------------------------------------

# Possessive runs of blanks: with two ``\s*`` side by side around an optional ``[n]``,
# a failed match retried every split of a long run of blanks (quadratic in its length).
_REPLY_PREFIX = (
    r"(?:(?:re|fw|fwd|aw|wg|tr|rv|sv|vs|bls|balas|trs|teruskan)\s*+(?:\[\d+\]\s*+)?:\s*+)*"
)


@dataclass(frozen=True)
class _SubjectPatterns:
    head: re.Pattern[str]
    tail: re.Pattern[str]


_SUBJECT_CACHE: dict[tuple[str, ...], _SubjectPatterns] = {}


def _name_alternation(scheme: LabelScheme) -> str:
    words = []
    for name in scheme.names:
        words.append(r"[\s_\-]+".join(re.escape(w) for w in name.split(" ")))
    return "|".join(words)


def _subject_patterns(scheme: LabelScheme) -> _SubjectPatterns:
    key = scheme.names
    found = _SUBJECT_CACHE.get(key)
    if found is None:
        alt = _name_alternation(scheme)
        head = re.compile(
            rf"^\s*+{_REPLY_PREFIX}(?:\[\s*(?P<b>{alt})\s*\]|\(\s*(?P<p>{alt})\s*\)|(?P<c>{alt})\s*:)",
            re.IGNORECASE,
        )
        tail = re.compile(rf"(?:\[\s*(?P<b>{alt})\s*\]|\(\s*(?P<p>{alt})\s*\))\s*$", re.IGNORECASE)
        found = _SubjectPatterns(head, tail)
        if len(_SUBJECT_CACHE) > 64:
            _SUBJECT_CACHE.clear()
        _SUBJECT_CACHE[key] = found
    return found


def subject_markings(subject: str, scheme: LabelScheme) -> list[str]:
    """Raw markings at the start or end of a subject: ``[RAHASIA]``, ``(TERBATAS)``, ``RAHASIA:``.

    Only bracketed or colon-terminated levels count; a level word in the middle of a
    subject is prose.
    """
    pats = _subject_patterns(scheme)
    found: list[str] = []
    for pat in (pats.head, pats.tail):
        m = pat.search(subject)
        if m:
            raw = m.group("b") or m.group("p") or m.group("c") or ""
            if raw and raw not in found:
                found.append(raw)
    return found


_LINE_TRIM = " \t\r*_=-~#.:[]()<>|\u00a0"


def marking_lines(text: str, scheme: LabelScheme, *, window: int = 8) -> list[str]:
    """Lines that consist only of a level in capitals, near the top or bottom of a text.

    This is how documents and letters are marked (a ``RAHASIA`` line above the title
    or in the footer). Lower- or mixed-case lines are prose and do not count.
    """
    lines: list[str] = []
    head = 0
    for line in text.splitlines():
        stripped = line.strip(_LINE_TRIM)
        if not stripped:
            continue
        lines.append(stripped)
        head += 1
        if head > 20000:
            break
    if len(lines) > 2 * window:
        lines = lines[:window] + lines[-window:]
    found: list[str] = []
    for stripped in lines:
        if len(stripped) > 40 or stripped != stripped.upper() or not stripped.isupper():
            continue
        if scheme.resolve(stripped) is not None and stripped not in found:
            found.append(stripped)
    return found


@dataclass(frozen=True)
class Marking:
    """One marking read from a header or property: what was written and its level."""

    raw: str
    level: str | None


_MSIP = re.compile(
    r"MSIP_Label_(?P<guid>[0-9a-fA-F\-]{36})_(?P<key>[A-Za-z]+)\s*=\s*(?P<value>[^;]*)"
)


def msip_markings(items: Iterable[tuple[str, str]], scheme: LabelScheme) -> list[Marking]:
    """Purview sensitivity labels from ``MSIP_Label_<GUID>_<Key>`` name/value pairs.

    The GUID mapping wins (names are localisable, GUIDs are not); otherwise the
    label's display name is matched through the aliases. Labels explicitly disabled
    or removed do not count.
    """
    labels: dict[str, dict[str, str]] = {}
    for name, value in items:
        m = _MSIP.fullmatch(f"{name.strip()}={value.strip()}")
        if m:
            labels.setdefault(m.group("guid").lower(), {})[m.group("key").lower()] = m.group(
                "value"
            ).strip()
    found: list[Marking] = []
    for guid, keys in labels.items():
        if keys.get("enabled", "true").lower() not in ("true", "1"):
            continue
        name = keys.get("name", "")
        level = scheme.resolve_guid(guid)
        if level is None and name:
            level = scheme.resolve_value(name)
        found.append(Marking(name or guid, level))
    return found


def msip_header_markings(value: str, scheme: LabelScheme) -> list[Marking]:
    """The ``msip_labels`` header: ``MSIP_Label_<GUID>_Name=...; _Enabled=true; ...``."""
    flat = " ".join(value.split())
    pairs = []
    for m in _MSIP.finditer(flat):
        pairs.append((f"MSIP_Label_{m.group('guid')}_{m.group('key')}", m.group("value")))
    return msip_markings(pairs, scheme)


def value_marking(value: str, scheme: LabelScheme) -> Marking | None:
    """A plain classification value (``X-Klasifikasi: RAHASIA``); None when empty."""
    raw = " ".join(value.split())
    if not raw:
        return None
    return Marking(raw, scheme.resolve_value(raw))


def protective_marking(value: str, scheme: LabelScheme) -> Marking | None:
    """``X-Protective-Marking: VER=2018.1, NS=gov.au, SEC=OFFICIAL:Sensitive, ...``."""
    m = re.search(r"\bSEC\s*=\s*([^,]+)", value, re.IGNORECASE)
    if m is None:
        return value_marking(value, scheme)
    return value_marking(m.group(1), scheme)


_SENSITIVITY = {"company-confidential": "confidential"}


def sensitivity_marking(value: str, scheme: LabelScheme) -> Marking | None:
    """RFC 2156 ``Sensitivity: Personal | Private | Company-Confidential``."""
    raw = " ".join(value.split())
    if not raw:
        return None
    alias = _SENSITIVITY.get(raw.casefold())
    level = scheme.resolve(alias) if alias else scheme.resolve_value(raw)
    return Marking(raw, level)


_CLASSIFICATION_KEYS = ("classification", "klasifikasi", "sensitivity", "marking", "securitylabel")


def is_classification_property(name: str) -> bool:
    """Document property names that carry a classification (Klasifikasi, Classification...)."""
    key = normalise(name).replace(" ", "")
    return any(k in key for k in _CLASSIFICATION_KEYS)


def titus_markings(value: str, scheme: LabelScheme) -> list[Marking]:
    """Titus ``x-titus-metadata-40``: base64 JSON with ``props: [{n, vals: [{value}]}]``."""
    compact = "".join(value.split())
    try:
        decoded = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=False)
        doc = json.loads(decoded.decode("utf-8", "replace"))
    except (binascii.Error, ValueError, RecursionError):
        return []
    found: list[Marking] = []
    for name, val in _titus_props(doc, 0):
        if is_classification_property(name) or scheme.resolve(val) is not None:
            found.append(Marking(val, scheme.resolve_value(val)))
    return found


def _titus_props(node: object, depth: int) -> Iterator[tuple[str, str]]:
    if depth > 8:
        return
    if isinstance(node, dict):
        name = node.get("n")
        vals = node.get("vals")
        if isinstance(name, str) and isinstance(vals, list):
            for v in vals[:32]:
                if isinstance(v, dict) and isinstance(v.get("value"), str):
                    yield name, v["value"]
        for child in list(node.values())[:64]:
            yield from _titus_props(child, depth + 1)
    elif isinstance(node, list):
        for child in node[:64]:
            yield from _titus_props(child, depth + 1)
