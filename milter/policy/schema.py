"""The policy language: YAML in, compiled rules out, every mistake reported with its place.

A policy is one or more YAML files, read in order; a site keeps the shipped
``policies/se-79-2019.yaml`` and adds its own file after it. Top-level keys:

``version: 1``
    Optional; the only version.

``domains: {NAME: [ENTRY, ...]}``
    Named sets. An entry is a domain (``jakarta.go.id``: that domain only), a
    wildcard (``*.jakarta.go.id``: every subdomain, not the apex), an address
    (``humas@example.org``) or a reference to another set (``"@internal"``). A later
    file naming an existing set extends it.

``classifications: {LEVEL: {aliases: [NAME, ...], guids: [GUID, ...]}}``
    Levels from lowest to highest. Aliases are the spellings markings are matched
    against (case, spaces, ``_`` and ``-`` do not matter); ``guids`` are Microsoft
    Purview sensitivity label ids. The first file that lists classifications sets
    the levels and their order; later files may add aliases and GUIDs to them.
    Without any, the inspector's default scheme (BIASA < TERBATAS < RAHASIA <
    SANGAT_RAHASIA) applies.

``keywords: {NAME: [WORD OR PHRASE, ...]}``
    Keyword dictionaries for ``content`` conditions. Matching ignores case, counts
    whole words only, and lets any whitespace separate the words of a phrase. A
    later file naming an existing dictionary extends it.

``rules: [RULE, ...]``
    In priority order. A rule is a mapping:

    - ``name`` (required, unique in a file): a later file's rule with the same name
      replaces the earlier one in place; a new name is appended, or inserted before
      the rule named by ``before``.
    - ``description``, ``clause``: free text; ``clause`` names the SE 79/SE/2019
      clause(s) the rule enforces and travels with every verdict it decides, separated
      by commas or semicolons (``"2.c; UU 27/2022"``). ``description`` may instead give
      one text per language, ``{id: TEXT, en: TEXT}``: notices then speak Bahasa
      Indonesia and English each in its own words (a plain text serves both).
    - ``when``: conditions that must all hold (absent: always); ``unless``:
      conditions that, when they all hold, make the rule not apply.
    - ``then`` (required): a list of actions.
    - ``mode``: ``enforce`` (default), ``audit`` (matched rules are recorded and the
      officers notified, the mail is delivered as if the rule did not exist) or
      ``test`` (recorded only).
    - ``stop: true``: when the rule matches in enforce mode, no later rule is
      evaluated for that recipient.
    - ``enabled: false``: drop the rule (useful to switch off a shipped rule by name;
      such an entry needs nothing but its name).

Conditions. A condition block is a mapping whose keys must all hold, or a list of
blocks that must all hold. Within a condition, a list of values means "any of".

- ``sender: {...}`` / ``recipient: {...}``: ``address: [GLOB, ...]``
  (``*@example.org``), ``domain: [ENTRY, ...]`` (as in ``domains``), ``in: SET`` or
  ``[SET, ...]`` (member of any), ``not_in: SET`` or ``[SET, ...]`` (member of none).
  Rules with a ``recipient`` condition are decided per envelope recipient.
- ``classification: {at_least: LEVEL, at_most: LEVEL, is: LEVEL or [LEVEL, ...]}``:
  the message's classification, the highest level found anywhere in it.
- ``label: GLOB or [GLOB, ...]`` or ``{raw: [GLOB, ...], source: [GLOB, ...]}``: a
  marking as written (``*rahasia*``), optionally where it was found (``subject``,
  ``header:*``, ``attachment:*``).
- ``attachment: {...}``: some file at any depth (a part flagged as an attachment,
  with a file name, or inside another file) has all of: ``type`` (true type from
  the content, globs: ``application/x-dosexec``, ``image/*``), ``declared_type``,
  ``extension`` (``exe`` or ``.exe``), ``name`` (file-name globs), ``size`` and
  ``depth`` (``{min: N, max: N}``, sizes as ``10MB``), and the flags ``encrypted``,
  ``mismatch`` (true type contradicts name or declared type), ``executable``,
  ``macro``, ``signed``, ``unscannable``, ``archive``, ``image_only`` (an image or
  a PDF with pages that are only pictures, which only OCR reads) (``true``: has it,
  ``false``: has not).
- ``content: {...}``: ``keywords: DICTIONARY or [DICTIONARY, ...]``, ``words:
  [WORD, ...]`` (an inline dictionary), ``min_count: N`` (distinct keywords needed,
  default 1), ``regex: PATTERN or [PATTERN, ...]`` (case-insensitive, searched in the
  subject and extracted text), ``detector: {name: nik or [nik, nip], min_count: N
  (or min: N), confidence: high | low}`` (distinct valid values found by the named
  detectors, summed; ``high`` counts only values with a supporting keyword nearby or
  under a column headed by one (NIK, KTP, No. Identitas ...); ``low``, the default,
  counts every valid value; ``medium`` is an older name for ``low``).
- ``header: {name: NAME, regex: PATTERN, present: BOOL}`` or a list of such: a
  top-level header; with ``regex``, some value must match (case-insensitive).
- ``size: {min: SIZE, max: SIZE}``: the whole message.
- ``unscannable: BOOL``, ``encrypted: BOOL``, ``signed: BOOL``: anywhere in the
  message, bodies included (an S/MIME-encrypted body counts as encrypted).
- ``draft: BOOL``: some document is visibly not final (clause 2.f): tracked changes or
  comments left in, a ``KONSEP``/``DRAFT``/``RANCANGAN`` marking or watermark, PDF
  review annotations.
- ``any: [BLOCK, ...]``, ``all: [BLOCK, ...]``, ``not: BLOCK``.

Actions (items of ``then``). Terminal actions decide a recipient's fate, at most one per
rule: ``deliver``, ``quarantine``, ``reject`` or ``{reject: TEXT}``, ``{route: NAME}``
(a route of the gateway configuration, or ``upstream``). Per recipient the most
restrictive wins: reject > quarantine > route > deliver; a rule whose terminal action is
overruled contributes nothing else, and a rejection carries no rewrites. Other actions
accumulate in rule order: ``{subject_prefix: TEXT}``, ``{add_header: {name: NAME, value:
TEXT}}``, ``{remove_header: NAME}``, ``{disclaimer: TEXT}`` or ``{disclaimer: {text:
TEXT, html: HTML}}``, ``{strip_attachments: {SELECTOR..., reason: TEXT}}`` (selector
keys as in ``attachment``), ``{bcc: ADDRESS or [ADDRESS, ...]}``, ``{notify: [sender |
officers | ADDRESS, ...]}``. Texts may contain ``{classification}``, ``{rule}``,
``{clause}`` and ``{sender}``; write ``{{`` for a brace.
"""

from __future__ import annotations

import re
import string
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from milter.config import parse_size
from milter.policy.conditions import (
    PART_FLAGS,
    AddressCondition,
    All,
    AnyOf,
    AttachmentCondition,
    ClassificationCondition,
    Condition,
    DetectorCondition,
    DomainSet,
    DraftCondition,
    HeaderCondition,
    KeywordCondition,
    KeywordIndex,
    LabelCondition,
    Not,
    PartFlagCondition,
    PartSelector,
    Range,
    RegexCondition,
    SizeCondition,
)
from milter.yamlsource import KeyPath, Source, SourceError

MODES = ("enforce", "audit", "test")
DESCRIPTION_LANGUAGES = ("id", "en")
TERMINALS = ("deliver", "reject", "quarantine", "route")
DETECTORS = ("nik", "nip", "npwp", "card")
# ``high``: only values with a supporting keyword or column header; ``low`` (or its
# older name ``medium``): every valid value, as when no confidence is given.
CONFIDENCES = ("high", "low", "medium")
PLACEHOLDERS = frozenset({"classification", "rule", "clause", "sender"})
DEFAULT_LEVELS = ("BIASA", "TERBATAS", "RAHASIA", "SANGAT_RAHASIA")
DEFAULT_REJECT = "Pesan ditolak oleh kebijakan pengiriman surel / Message rejected by mail policy"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_LEVEL = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_LABEL = r"[a-z0-9_](?:[a-z0-9_\-]*[a-z0-9_])?"
_DOMAIN = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*\.?$")
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")
_GUID = re.compile(r"^\{?[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\}?$")
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")

_TOP_KEYS = ("version", "domains", "classifications", "keywords", "rules")
_RULE_KEYS = (
    "name",
    "description",
    "clause",
    "when",
    "unless",
    "then",
    "mode",
    "stop",
    "enabled",
    "before",
)
_ADDRESS_KEYS = ("address", "domain", "in", "not_in")
_SELECTOR_KEYS = ("type", "declared_type", "extension", "name", "size", "depth", *PART_FLAGS)
_CONDITION_KEYS = (
    "sender",
    "recipient",
    "classification",
    "label",
    "attachment",
    "content",
    "header",
    "size",
    "unscannable",
    "encrypted",
    "signed",
    "draft",
    "any",
    "all",
    "not",
)


@dataclass(frozen=True)
class Template:
    """A text with ``{classification}``-style placeholders, checked at load time."""

    text: str
    dynamic: bool

    def render(self, values: Mapping[str, str]) -> str:
        return self.text.format_map(values) if self.dynamic else self.text


@dataclass(frozen=True)
class RewriteSpec:
    """A rewrite action as written; texts are rendered per message."""

    kind: str
    args: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Rule:
    """One compiled rule. ``per_recipient`` when its conditions read the recipient."""

    name: str
    file: str
    line: int
    mode: str = "enforce"
    description: str | None = None
    clause: str | None = None
    # The description per language, (("id", TEXT), ("en", TEXT)); empty when the policy
    # gives one plain text (``description``) for every language.
    descriptions: tuple[tuple[str, str], ...] = ()
    when: Condition | None = None
    unless: Condition | None = None
    stop: bool = False
    terminal: str | None = None  # deliver | reject | quarantine | route
    route: str | None = None
    reject_text: str | None = None
    rewrites: tuple[RewriteSpec, ...] = ()
    bcc: tuple[str, ...] = ()
    notify: tuple[str, ...] = ()

    @cached_property
    def per_recipient(self) -> bool:
        """Asked for every rule and recipient of every message: found once."""
        return any(c is not None and c.per_recipient for c in (self.when, self.unless))

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Compiled:
    """Everything a policy is after loading: the engine wraps this."""

    files: tuple[str, ...]
    levels: tuple[str, ...]
    aliases: dict[str, str]
    guids: dict[str, str]
    sets: dict[str, DomainSet]
    dictionaries: dict[str, tuple[str, ...]]
    keywords: KeywordIndex
    rules: tuple[Rule, ...]
    defaults: bool = False  # no file listed classifications


@dataclass
class _Defs:
    """Definitions gathered from every file before any rule is compiled."""

    sets: dict[str, list[tuple[Source, KeyPath, str]]] = field(default_factory=dict)
    levels: list[str] = field(default_factory=list)
    level_source: str | None = None
    aliases: dict[str, tuple[str, Source, KeyPath]] = field(default_factory=dict)
    guids: dict[str, str] = field(default_factory=dict)
    dictionaries: dict[str, list[str]] = field(default_factory=dict)


class Compiler:
    """Validates and compiles policy sources, collecting every error instead of stopping."""

    def __init__(self, routes: Collection[str] | None = None) -> None:
        self.routes = None if routes is None else {*routes, "upstream"}
        self.errors: list[SourceError] = []
        self.defs = _Defs()
        self.sets: dict[str, DomainSet] = {}
        self.inline: dict[str, list[str]] = {}
        self._set_members: dict[str, set[str]] = {}
        self._src: Source | None = None

    # -- error helpers -----------------------------------------------------------------

    def fail(
        self, path: KeyPath, message: str, src: Source | None = None, *, at_key: bool = False
    ) -> None:
        source = src or self._src
        if source is None:
            raise RuntimeError("no source to report against")
        self.errors.append(source.error(path, message, at_key))

    def mapping(self, value: Any, path: KeyPath, known: Sequence[str]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.fail(path, "expected a mapping")
            return None
        ok = True
        for key in value:
            if key not in known:
                self.fail(
                    (*path, key), f"unknown key (known keys: {', '.join(known)})", at_key=True
                )
                ok = False
        return value if ok else {k: v for k, v in value.items() if k in known}

    def filled_mapping(
        self, value: Any, path: KeyPath, known: Sequence[str], expected: str
    ) -> dict[str, Any] | None:
        """A ``mapping`` that must not be empty: ``{}`` is reported as ``expected``. One
        holding only unknown keys is already reported by ``mapping`` and comes back empty."""
        spec = self.mapping(value, path, known)
        if spec is not None and not spec and not value:
            self.fail(path, expected)
            return None
        return spec

    def text(self, value: Any, path: KeyPath) -> str | None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str) or not value.strip():
            self.fail(path, "expected a non-empty string")
            return None
        return value.strip()

    def _description(
        self, value: Any, path: KeyPath
    ) -> tuple[str | None, tuple[tuple[str, str], ...]]:
        """A plain text, or ``{id: TEXT, en: TEXT}``: (the text shown where one language
        is enough, English when given, and the texts per language)."""
        if not isinstance(value, dict):
            return self.text(value, path), ()
        out: list[tuple[str, str]] = []
        for lang, text in value.items():
            if lang not in DESCRIPTION_LANGUAGES:
                self.fail((*path, lang), "expected id or en", at_key=True)
                continue
            shown = self.text(text, (*path, lang))
            if shown is not None:
                out.append((str(lang), shown))
        if not out:
            self.fail(path, "expected a text, or {id: TEXT, en: TEXT}")
            return None, ()
        by_lang = dict(out)
        return by_lang.get("en") or out[0][1], tuple(out)

    def texts(self, value: Any, path: KeyPath) -> list[str] | None:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not value:
            self.fail(path, "expected a string or a non-empty list of strings")
            return None
        out = [self.text(v, (*path, i)) for i, v in enumerate(value)]
        return [v for v in out if v is not None] if all(v is not None for v in out) else None

    def boolean(self, value: Any, path: KeyPath) -> bool | None:
        if not isinstance(value, bool):
            self.fail(path, "expected true or false")
            return None
        return value

    def integer(self, value: Any, path: KeyPath, minimum: int = 0) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(path, f"expected an integer >= {minimum}")
            return None
        return value

    def regex(self, value: Any, path: KeyPath) -> re.Pattern[str] | None:
        pattern = self.text(value, path) if not isinstance(value, str) else value
        if pattern is None or pattern == "":
            if pattern == "":
                self.fail(path, "expected a non-empty regular expression")
            return None
        try:
            return re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            self.fail(path, f"bad regular expression: {exc}")
            return None

    def template(self, value: Any, path: KeyPath, *, strip: bool = True) -> Template | None:
        if not isinstance(value, str) or not value.strip():
            self.fail(path, "expected a non-empty string")
            return None
        text = value.strip() if strip else value
        dynamic = False
        try:
            for _, name, spec, conv in string.Formatter().parse(text):
                if name is None:
                    continue
                if name not in PLACEHOLDERS or spec or conv:
                    allowed = ", ".join("{" + p + "}" for p in sorted(PLACEHOLDERS))
                    self.fail(
                        path,
                        f"unknown placeholder {{{name}}} (known: {allowed}; "
                        "write {{ for a brace)",
                    )
                    return None
                dynamic = True
        except ValueError as exc:
            self.fail(path, f"bad placeholder: {exc} (write {{{{ for a brace)")
            return None
        if "{" in text and not dynamic:
            dynamic = True  # only escaped braces: formatting unescapes them
        return Template(text, dynamic)

    def size_range(self, value: Any, path: KeyPath, *, sizes: bool) -> Range | None:
        spec = self.filled_mapping(value, path, ("min", "max"), "expected min and/or max")
        if spec is None:
            return None
        bounds: dict[str, int] = {}
        for key in ("min", "max"):
            if key not in spec:
                continue
            if sizes:
                try:
                    bounds[key] = parse_size(spec[key])
                except ValueError as exc:
                    self.fail((*path, key), str(exc))
            else:
                n = self.integer(spec[key], (*path, key))
                if n is not None:
                    bounds[key] = n
        if len(bounds) != len(spec):
            return None
        return Range(bounds.get("min"), bounds.get("max"))

    # -- phase 1: definitions ----------------------------------------------------------

    def gather(self, src: Source) -> dict[str, Any] | None:
        """Check the top level and collect sets, levels and dictionaries of one file."""
        self._src = src
        if src.data is None:
            return {}
        top = self.mapping(src.data, (), _TOP_KEYS)
        if top is None:
            return None
        if "version" in top and top["version"] != 1:
            self.fail(("version",), "unsupported version (expected 1)")
        if "domains" in top:
            self._gather_sets(src, top["domains"])
        if "classifications" in top:
            self._gather_levels(src, top["classifications"])
        if "keywords" in top:
            self._gather_keywords(top["keywords"])
        return top

    def _named(self, value: Any, section: str, what: str) -> Iterator[tuple[str, Any, KeyPath]]:
        """(name, value, path) of each entry of a top-level mapping of named lists
        (``domains``, ``keywords``); a section that is no mapping, and each badly named
        entry, is reported and skipped."""
        if not isinstance(value, dict):
            self.fail((section,), f"expected a mapping of {what} names to lists")
            return
        for name, item in value.items():
            path: KeyPath = (section, name)
            if not _NAME.match(name):
                self.fail(path, f"bad {what} name {name!r}", at_key=True)
                continue
            yield name, item, path

    def _gather_sets(self, src: Source, value: Any) -> None:
        for name, listed, path in self._named(value, "domains", "set"):
            entries = [] if listed is None else listed
            if not isinstance(entries, list):
                self.fail(path, "expected a list of domains, wildcards, addresses or @sets")
                continue
            bucket = self.defs.sets.setdefault(name, [])
            for i, entry in enumerate(entries):
                epath = (*path, i)
                if not isinstance(entry, str) or not entry.strip():
                    self.fail(epath, "expected a domain, *.domain, address or @set")
                    continue
                e = entry.strip()
                if e.startswith("@"):
                    bucket.append((src, epath, e))
                elif "@" in e:
                    if not _ADDRESS.match(e):
                        self.fail(epath, f"not a mail address: {e!r}")
                    else:
                        bucket.append((src, epath, e))
                elif not _DOMAIN.match(e.casefold()):
                    self.fail(epath, f"not a domain or *.domain: {e!r}")
                else:
                    bucket.append((src, epath, e))

    def _gather_levels(self, src: Source, value: Any) -> None:
        path: KeyPath = ("classifications",)
        if not isinstance(value, dict) or not value:
            self.fail(path, "expected a mapping of levels, lowest first")
            return
        first = not self.defs.levels
        if first:
            self.defs.level_source = src.file
        for level, spec in value.items():
            lpath = (*path, level)
            if not _LEVEL.match(level):
                self.fail(lpath, f"bad level name {level!r} (letters, digits and _)", at_key=True)
                continue
            if first:
                self.defs.levels.append(level)
            elif level not in self.defs.levels:
                self.fail(
                    lpath,
                    f"unknown level {level!r}: levels are set by "
                    f"{self.defs.level_source}; a later file may only add aliases "
                    "and guids",
                    at_key=True,
                )
                continue
            if spec is None:
                continue
            s = self.mapping(spec, lpath, ("aliases", "guids"))
            if s is None:
                continue
            aliases = (
                (self.texts(s["aliases"], (*lpath, "aliases")) or []) if "aliases" in s else []
            )
            for alias in aliases:
                key = " ".join(re.split(r"[\s_\-]+", alias)).casefold().strip()
                prior = self.defs.aliases.get(key)
                if prior is not None and prior[0] != level:
                    self.fail((*lpath, "aliases"), f"alias {alias!r} already names {prior[0]}")
                    continue
                self.defs.aliases[key] = (level, src, (*lpath, "aliases"))
            if "guids" in s:
                raw = s["guids"]
                guids = [] if raw == [] else self.texts(raw, (*lpath, "guids")) or []
                for i, guid in enumerate(guids):
                    if not _GUID.match(guid):
                        self.fail((*lpath, "guids", i), f"not a label GUID: {guid!r}")
                        continue
                    g = guid.strip("{}").lower()
                    if self.defs.guids.get(g, level) != level:
                        self.fail((*lpath, "guids", i), f"GUID already names {self.defs.guids[g]}")
                        continue
                    self.defs.guids[g] = level

    def _gather_keywords(self, value: Any) -> None:
        for name, words, path in self._named(value, "keywords", "dictionary"):
            got = self.texts(words, path)
            if got is not None:
                bucket = self.defs.dictionaries.setdefault(name, [])
                bucket.extend(w for w in got if w not in bucket)

    # -- phase 2: sets -----------------------------------------------------------------

    def resolve_sets(self) -> None:
        """Flatten ``@set`` references; unknown references and cycles are errors."""
        for name in self.defs.sets:
            members = self._members(name, ())
            self.sets[name] = DomainSet(name, members)

    def _members(self, name: str, stack: tuple[str, ...]) -> set[str]:
        done = self._set_members.get(name)
        if done is not None:
            return done
        out: set[str] = set()
        for src, path, entry in self.defs.sets.get(name, []):
            if not entry.startswith("@"):
                out.add(entry)
                continue
            ref = entry[1:]
            if ref not in self.defs.sets:
                self.fail(path, f"unknown set {ref!r}", src)
            elif ref in stack or ref == name:
                self.fail(path, f"set {name!r} refers to itself through {entry}", src)
            else:
                out |= self._members(ref, (*stack, name))
        self._set_members[name] = out
        return out

    # -- phase 3: rules ----------------------------------------------------------------

    def rules(
        self, src: Source, top: dict[str, Any]
    ) -> list[tuple[Rule | None, str | None, KeyPath]]:
        """Compile one file's rules: (rule or None when disabled/broken, before, path)."""
        self._src = src
        value = top.get("rules")
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(("rules",), "expected a list of rules")
            return []
        out: list[tuple[Rule | None, str | None, KeyPath]] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(value):
            path: KeyPath = ("rules", i)
            spec = self.mapping(item, path, _RULE_KEYS)
            if spec is None:
                continue
            name = self.text(spec.get("name"), (*path, "name")) if "name" in spec else None
            if "name" not in spec:
                self.fail(path, "a rule needs a name")
            if name is None:
                continue
            if not _NAME.match(name):
                self.fail((*path, "name"), f"bad rule name {name!r} (letters, digits, _ . -)")
                continue
            duplicate = name in seen
            if duplicate:
                self.fail(
                    (*path, "name"), f"duplicate rule name {name!r} (also rules[{seen[name]}])"
                )
            else:
                seen[name] = i
            before = self.text(spec["before"], (*path, "before")) if "before" in spec else None
            enabled = (
                self.boolean(spec["enabled"], (*path, "enabled")) if "enabled" in spec else True
            )
            if enabled is False:
                out.append((None, before, (*path, "name")))
                continue
            rule = self._rule(name, spec, path, src)
            if duplicate:
                continue
            if rule is not None:
                out.append((rule, before, (*path, "name")))
            else:
                out.append((None, before, (*path, "name")))
        return out

    def _rule(self, name: str, spec: dict[str, Any], path: KeyPath, src: Source) -> Rule | None:
        before = len(self.errors)
        mode = spec.get("mode", "enforce")
        if mode not in MODES:
            self.fail((*path, "mode"), f"expected one of {', '.join(MODES)}")
        stop = self.boolean(spec["stop"], (*path, "stop")) if "stop" in spec else False
        description, descriptions = (
            self._description(spec["description"], (*path, "description"))
            if "description" in spec
            else (None, ())
        )
        clause = self.text(spec["clause"], (*path, "clause")) if "clause" in spec else None
        when = self.block(spec["when"], (*path, "when")) if "when" in spec else None
        unless = self.block(spec["unless"], (*path, "unless")) if "unless" in spec else None
        kw: dict[str, Any] = {}
        if "then" not in spec:
            self.fail(path, "a rule needs then: a list of actions")
        else:
            kw = self._actions(spec["then"], (*path, "then"))
        if len(self.errors) != before:
            return None
        line = src.where((*path, "name"))[0]
        return Rule(
            name=name,
            file=src.file,
            line=line,
            mode=mode,
            description=description,
            clause=clause,
            descriptions=descriptions,
            when=when,
            unless=unless,
            stop=bool(stop),
            **kw,
        )

    # -- conditions ----------------------------------------------------------------------

    def block(self, value: Any, path: KeyPath) -> Condition | None:
        """A mapping (every key holds) or a list of mappings (every item holds)."""
        if isinstance(value, list):
            if not value:
                self.fail(path, "expected at least one condition")
                return None
            items = [self.block(v, (*path, i)) for i, v in enumerate(value)]
            good = [c for c in items if c is not None]
            return All(good) if len(good) == len(items) else None
        spec = self.filled_mapping(value, path, _CONDITION_KEYS, "expected at least one condition")
        if spec is None:
            return None
        out: list[Condition] = []
        ok = True
        for key, v in spec.items():
            c = self.condition(key, v, (*path, key))
            if c is None:
                ok = False
            else:
                out.append(c)
        if not ok:
            return None
        return out[0] if len(out) == 1 else All(out)

    def condition(self, key: str, value: Any, path: KeyPath) -> Condition | None:
        if key in ("any", "all"):
            if not isinstance(value, list) or not value:
                self.fail(path, "expected a non-empty list of condition blocks")
                return None
            items = [self.block(v, (*path, i)) for i, v in enumerate(value)]
            if any(c is None for c in items):
                return None
            good = [c for c in items if c is not None]
            return AnyOf(good) if key == "any" else All(good)
        if key == "not":
            inner = self.block(value, path)
            return Not(inner) if inner is not None else None
        if key in ("sender", "recipient"):
            return self._address(key, value, path)
        if key == "classification":
            return self._classification(value, path)
        if key == "label":
            return self._label(value, path)
        if key == "attachment":
            selector = self.selector(value, path)
            return AttachmentCondition(PartSelector(selector)) if selector is not None else None
        if key == "content":
            return self._content(value, path)
        if key == "header":
            return self._headers(value, path)
        if key == "size":
            bounds = self.size_range(value, path, sizes=True)
            return SizeCondition(bounds) if bounds is not None else None
        want = self.boolean(value, path)
        if want is None:
            return None
        return DraftCondition(want) if key == "draft" else PartFlagCondition(key, want)

    def _set_refs(self, value: Any, path: KeyPath) -> list[DomainSet] | None:
        names = self.texts(value, path)
        if names is None:
            return None
        out = []
        for i, n in enumerate(names):
            ref = n[1:] if n.startswith("@") else n
            if ref not in self.sets:
                known = ", ".join(sorted(self.sets)) or "none defined"
                self.fail(_item(path, value, i), f"unknown set {ref!r} (known: {known})")
                return None
            out.append(self.sets[ref])
        return out

    def _address(self, role: str, value: Any, path: KeyPath) -> Condition | None:
        spec = self.filled_mapping(
            value, path, _ADDRESS_KEYS, f"expected one of {', '.join(_ADDRESS_KEYS)}"
        )
        if spec is None:
            return None
        before = len(self.errors)
        address = self.texts(spec["address"], (*path, "address")) if "address" in spec else []
        domain = None
        if "domain" in spec:
            entries = self.texts(spec["domain"], (*path, "domain")) or []
            flat: set[str] = set()
            for i, e in enumerate(entries):
                p = _item((*path, "domain"), spec["domain"], i)
                if e.startswith("@"):
                    if e[1:] not in self.sets:
                        self.fail(p, f"unknown set {e[1:]!r}")
                    else:
                        flat |= self._members(e[1:], ())
                elif not _DOMAIN.match(e.casefold()):
                    self.fail(p, f"not a domain or *.domain: {e!r}")
                else:
                    flat.add(e)
            domain = DomainSet("domain", flat)
        in_sets = self._set_refs(spec["in"], (*path, "in")) if "in" in spec else []
        not_in = self._set_refs(spec["not_in"], (*path, "not_in")) if "not_in" in spec else []
        if len(self.errors) != before or address is None or in_sets is None or not_in is None:
            return None
        return AddressCondition(
            role, address=address, domain=domain, in_sets=in_sets, not_in_sets=not_in
        )

    def levels(self) -> tuple[str, ...]:
        return tuple(self.defs.levels) or DEFAULT_LEVELS

    def _level(self, value: Any, path: KeyPath) -> str | None:
        name = self.text(value, path)
        if name is None:
            return None
        if name not in self.levels():
            self.fail(path, f"unknown level {name!r} (levels: {', '.join(self.levels())})")
            return None
        return name

    def _classification(self, value: Any, path: KeyPath) -> Condition | None:
        spec = self.filled_mapping(
            value, path, ("at_least", "at_most", "is"), "expected at_least, at_most or is"
        )
        if spec is None:
            return None
        before = len(self.errors)
        at_least = (
            self._level(spec["at_least"], (*path, "at_least")) if "at_least" in spec else None
        )
        at_most = self._level(spec["at_most"], (*path, "at_most")) if "at_most" in spec else None
        is_: list[str] = []
        if "is" in spec:
            names = self.texts(spec["is"], (*path, "is")) or []
            for i, n in enumerate(names):
                level = self._level(n, _item((*path, "is"), spec["is"], i))
                if level is not None:
                    is_.append(level)
        if len(self.errors) != before:
            return None
        return ClassificationCondition(at_least=at_least, at_most=at_most, is_=is_)

    def _label(self, value: Any, path: KeyPath) -> Condition | None:
        if not isinstance(value, dict):
            raw = self.texts(value, path)
            return LabelCondition(raw) if raw is not None else None
        spec = self.filled_mapping(value, path, ("raw", "source"), "expected raw and/or source")
        if spec is None:
            return None
        raw = self.texts(spec["raw"], (*path, "raw")) if "raw" in spec else []
        source = self.texts(spec["source"], (*path, "source")) if "source" in spec else []
        if raw is None or source is None:
            return None
        return LabelCondition(raw, source)

    def selector(
        self, value: Any, path: KeyPath, extra: Sequence[str] = ()
    ) -> dict[str, Any] | None:
        """A normalised attachment selector: lists as tuples, sizes in bytes, flags as bools."""
        spec = self.mapping(value, path, (*_SELECTOR_KEYS, *extra))
        if spec is None:
            return None
        if not [k for k in value if k not in extra]:
            self.fail(path, f"expected some of {', '.join(_SELECTOR_KEYS)}")
            return None
        before = len(self.errors)
        out: dict[str, Any] = {}
        for key, v in spec.items():
            p = (*path, key)
            if key in extra:
                continue
            if key in ("type", "declared_type", "name"):
                got = self.texts(v, p)
                if got is not None:
                    out[key] = tuple(g.casefold() for g in got)
            elif key == "extension":
                got = self.texts(v, p)
                if got is not None:
                    out[key] = tuple(g.casefold().lstrip(".") for g in got)
            elif key in ("size", "depth"):
                bounds = self.size_range(v, p, sizes=key == "size")
                if bounds is not None:
                    out[key] = {
                        k: b
                        for k, b in (("min", bounds.low), ("max", bounds.high))
                        if b is not None
                    }
            else:
                flag = self.boolean(v, p)
                if flag is not None:
                    out[key] = flag
        return out if len(self.errors) == before else None

    def _content(self, value: Any, path: KeyPath) -> Condition | None:
        spec = self.mapping(value, path, ("keywords", "words", "min_count", "regex", "detector"))
        if spec is None:
            return None
        if not ({"keywords", "words", "regex", "detector"} & set(value)):
            self.fail(path, "expected keywords, words, regex or detector")
            return None
        before = len(self.errors)
        out: list[Condition] = []
        dictionaries: list[str] = []
        if "keywords" in spec:
            names = self.texts(spec["keywords"], (*path, "keywords")) or []
            for i, n in enumerate(names):
                p = _item((*path, "keywords"), spec["keywords"], i)
                if n not in self.defs.dictionaries:
                    known = ", ".join(sorted(self.defs.dictionaries)) or "none defined"
                    self.fail(p, f"unknown dictionary {n!r} (known: {known})")
                else:
                    dictionaries.append(n)
        if "words" in spec:
            words = self.texts(spec["words"], (*path, "words"))
            if words is not None:
                src = self._src
                line, col = src.where((*path, "words")) if src else (0, 0)
                key = f"words@{line}:{col}"
                self.inline[key] = words
                dictionaries.append(key)
        min_count = (
            self.integer(spec["min_count"], (*path, "min_count"), 1) if "min_count" in spec else 1
        )
        if "min_count" in spec and not ({"keywords", "words"} & set(spec)):
            self.fail((*path, "min_count"), "min_count counts keywords: give keywords or words")
        if dictionaries and min_count is not None:
            out.append(KeywordCondition(dictionaries, min_count))
        if "regex" in spec:
            pats = spec["regex"] if isinstance(spec["regex"], list) else [spec["regex"]]
            if not pats:
                self.fail((*path, "regex"), "expected a pattern or a list of patterns")
            compiled = [
                self.regex(v, _item((*path, "regex"), spec["regex"], i)) for i, v in enumerate(pats)
            ]
            conds: list[Condition] = [RegexCondition(c) for c in compiled if c is not None]
            if conds:
                out.append(conds[0] if len(conds) == 1 else AnyOf(conds))
        if "detector" in spec:
            det = self._detector(spec["detector"], (*path, "detector"))
            if det is not None:
                out.append(det)
        if len(self.errors) != before:
            return None
        return out[0] if len(out) == 1 else All(out)

    def _detector(self, value: Any, path: KeyPath) -> Condition | None:
        spec = self.mapping(value, path, ("name", "min_count", "min", "confidence"))
        if spec is None:
            return None
        if "min" in spec and "min_count" in spec:
            self.fail((*path, "min"), "give min or min_count, not both")
            return None
        if "name" not in spec:
            self.fail(path, "a detector condition needs a name")
            return None
        before = len(self.errors)
        names = self.texts(spec["name"], (*path, "name")) or []
        for n in names:
            if n not in DETECTORS:
                self.fail(
                    (*path, "name"), f"unknown detector {n!r} (known: {', '.join(DETECTORS)})"
                )
        key = "min" if "min" in spec else "min_count"
        min_count = self.integer(spec.get(key, 1), (*path, key), 1)
        confidence = spec.get("confidence")
        if confidence is not None and confidence not in CONFIDENCES:
            self.fail((*path, "confidence"), f"expected one of {', '.join(CONFIDENCES)}")
        if len(self.errors) != before or min_count is None:
            return None
        return DetectorCondition(names, min_count, confidence)

    def _headers(self, value: Any, path: KeyPath) -> Condition | None:
        items = value if isinstance(value, list) else [value]
        if not items:
            self.fail(path, "expected a header condition or a list of them")
            return None
        out: list[Condition] = []
        ok = True
        for i, item in enumerate(items):
            p = _item(path, value, i)
            spec = self.mapping(item, p, ("name", "regex", "present"))
            if spec is None:
                ok = False
                continue
            if "name" not in spec:
                self.fail(p, "a header condition needs a name")
                ok = False
                continue
            name = self.text(spec["name"], (*p, "name"))
            if name is not None and not _HEADER_NAME.match(name):
                self.fail((*p, "name"), f"not a header name: {name!r}")
                name = None
            pattern = self.regex(spec["regex"], (*p, "regex")) if "regex" in spec else None
            present = self.boolean(spec["present"], (*p, "present")) if "present" in spec else True
            if "present" in spec and "regex" in spec:
                self.fail((*p, "present"), "give either regex or present, not both")
                ok = False
            if name is None or present is None or ("regex" in spec and pattern is None):
                ok = False
                continue
            out.append(HeaderCondition(name, pattern, present))
        if not ok:
            return None
        return out[0] if len(out) == 1 else All(out)

    # -- actions -------------------------------------------------------------------------

    def _actions(self, value: Any, path: KeyPath) -> dict[str, Any]:
        if not isinstance(value, list) or not value:
            self.fail(path, "expected a non-empty list of actions")
            return {}
        terminal: str | None = None
        out: dict[str, Any] = {"rewrites": [], "bcc": [], "notify": []}
        for i, item in enumerate(value):
            p = (*path, i)
            if isinstance(item, str):
                kind, arg, ap = item, None, p
            elif isinstance(item, dict) and len(item) == 1:
                kind, arg = next(iter(item.items()))
                ap = (*p, kind)
            else:
                self.fail(p, "expected an action name or a mapping with one action")
                continue
            if kind in TERMINALS:
                if terminal is not None:
                    self.fail(
                        ap, f"a rule takes one of {', '.join(TERMINALS)}; it already has {terminal}"
                    )
                    continue
                terminal = kind
                self._terminal(kind, arg, ap, out, isinstance(item, str))
            else:
                self._effect(kind, arg, ap, out, isinstance(item, str))
        out["terminal"] = terminal
        out["rewrites"] = tuple(out["rewrites"])
        out["bcc"] = tuple(out["bcc"])
        out["notify"] = tuple(out["notify"])
        return out

    def _terminal(
        self, kind: str, arg: Any, path: KeyPath, out: dict[str, Any], bare: bool
    ) -> None:
        if kind == "reject":
            if bare or arg is None:
                out["reject_text"] = DEFAULT_REJECT
            else:
                text = self.text(arg, path)
                if text is not None and ("\r" in text or "\n" in text):
                    self.fail(path, "a reply text is one line")
                out["reject_text"] = text
        elif kind == "route":
            if bare:
                self.fail(path, "route needs a route name: {route: NAME}")
                return
            name = self.text(arg, path)
            if name is not None and self.routes is not None and name not in self.routes:
                known = ", ".join(sorted(self.routes))
                self.fail(
                    path, f"unknown route {name!r} (routes in the gateway configuration: {known})"
                )
            out["route"] = name
        elif not bare and arg is not None:
            self.fail(path, f"{kind} takes no value")

    def _effect(self, kind: str, arg: Any, path: KeyPath, out: dict[str, Any], bare: bool) -> None:
        known = (
            "subject_prefix",
            "add_header",
            "remove_header",
            "disclaimer",
            "strip_attachments",
            "bcc",
            "notify",
        )
        if kind not in known:
            names = ", ".join((*TERMINALS, *known))
            self.fail(path, f"unknown action {kind!r} (known: {names})", at_key=True)
            return
        if bare:
            self.fail(path, f"{kind} needs a value: {{{kind}: ...}}")
            return
        rewrites: list[RewriteSpec] = out["rewrites"]
        if kind == "subject_prefix":
            t = self.template(arg, path, strip=False)
            if t is not None:
                rewrites.append(RewriteSpec(kind, (("text", t),)))
        elif kind == "add_header":
            spec = self.mapping(arg, path, ("name", "value"))
            if spec is None:
                return
            if "name" not in spec or "value" not in spec:
                self.fail(path, "add_header needs name and value")
                return
            name = self._header_name(spec["name"], (*path, "name"))
            t = self.template(spec["value"], (*path, "value"))
            if t is not None and ("\r" in t.text or "\n" in t.text):
                self.fail((*path, "value"), "a header value is one line")
                t = None
            if name is not None and t is not None:
                rewrites.append(RewriteSpec(kind, (("name", name), ("value", t))))
        elif kind == "remove_header":
            name = self._header_name(arg, path)
            if name is not None:
                rewrites.append(RewriteSpec(kind, (("name", name),)))
        elif kind == "disclaimer":
            spec = (
                {"text": arg} if isinstance(arg, str) else self.mapping(arg, path, ("text", "html"))
            )
            if spec is None:
                return
            if "text" not in spec:
                self.fail(path, "a disclaimer needs text")
                return
            text = self.template(
                spec["text"], (*path, "text") if not isinstance(arg, str) else path
            )
            html = self.template(spec["html"], (*path, "html")) if "html" in spec else None
            if text is not None and ("html" not in spec or html is not None):
                rewrites.append(RewriteSpec(kind, (("text", text), ("html", html))))
        elif kind == "strip_attachments":
            selector = self.selector(arg, path, extra=("reason",))
            reason = None
            if isinstance(arg, dict) and "reason" in arg:
                reason = self.template(arg["reason"], (*path, "reason"))
                if reason is None:
                    return
            if selector is not None:
                rewrites.append(RewriteSpec(kind, (("selector", selector), ("reason", reason))))
        elif kind == "bcc":
            for i, a in enumerate(self.texts(arg, path) or []):
                if not _ADDRESS.match(a):
                    self.fail(_item(path, arg, i), f"not a mail address: {a!r}")
                else:
                    out["bcc"].append(a)
        else:
            for i, target in enumerate(self.texts(arg, path) or []):
                if target not in ("sender", "officers") and not _ADDRESS.match(target):
                    self.fail(
                        _item(path, arg, i),
                        f"expected sender, officers or a mail address, got {target!r}",
                    )
                else:
                    out["notify"].append(target)

    def _header_name(self, value: Any, path: KeyPath) -> str | None:
        name = self.text(value, path)
        if name is not None and not _HEADER_NAME.match(name):
            self.fail(path, f"not a header name: {name!r}")
            return None
        return name


def compile_sources(
    sources: Sequence[Source], routes: Collection[str] | None, errors: list[SourceError]
) -> Compiled:
    """Compile layered policy sources; problems are appended to ``errors``.

    The result is meaningful only when no error was added.
    """
    c = Compiler(routes)
    tops: list[tuple[Source, dict[str, Any]]] = []
    for src in sources:
        top = c.gather(src)
        if top is not None:
            tops.append((src, top))
    c.resolve_sets()
    order: list[Rule] = []
    index: dict[str, int] = {}
    dropped: set[str] = set()
    for src, top in tops:
        for rule, before, path in c.rules(src, top):
            name = rule.name if rule is not None else _name_at(src, path)
            if name is None:
                continue
            if name in index:
                if rule is None:
                    dropped.add(name)
                else:
                    order[index[name]] = rule
                    dropped.discard(name)
                continue
            if rule is None:
                continue
            at = len(order)
            if before is not None:
                if before not in index:
                    c.fail((*path[:-1], "before"), f"unknown rule {before!r}", src)
                else:
                    at = index[before]
            order.insert(at, rule)
            index = {r.name: i for i, r in enumerate(order)}
    rules = tuple(r for r in order if r.name not in dropped)
    dictionaries = {k: tuple(v) for k, v in c.defs.dictionaries.items()}
    scan = {**dictionaries, **{k: tuple(v) for k, v in c.inline.items()}}
    rank = {s.file: i for i, s in reversed(list(enumerate(sources)))}
    errors.extend(sorted(c.errors, key=lambda e: (rank.get(e.file, len(rank)), e.line, e.col)))
    return Compiled(
        files=tuple(s.file for s in sources),
        levels=c.levels(),
        aliases={k: v[0] for k, v in c.defs.aliases.items()},
        guids=dict(c.defs.guids),
        sets=dict(c.sets),
        dictionaries=dictionaries,
        keywords=KeywordIndex(scan),
        rules=rules,
        defaults=not c.defs.levels,
    )


def _item(path: KeyPath, value: Any, i: int) -> KeyPath:
    """Where a problem with item ``i`` of a value written either alone or as a list is
    reported: at the item when it is a list, at the value itself when it stands alone."""
    return (*path, i) if isinstance(value, list) else path


def _name_at(src: Source, path: KeyPath) -> str | None:
    data: Any = src.data
    for key in path:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data if isinstance(data, str) else None
