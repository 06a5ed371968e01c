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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property, partial

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

# Why a marking counted: every label finding names the position and form that made a
# level word a marking, so an officer can tell a letter header from a subject tag.
WHY_SUBJECT = "subject tag"
WHY_FORWARDED = "forwarded subject line"
WHY_BODY_LINE = "marking line at the top or bottom of the body"
WHY_DOCUMENT_LINE = "marking line in the document"
WHY_HEADER_LINE = "page header or footer line"
WHY_PAGE_HEADER = "page header line"
WHY_PAGE_FOOTER = "page footer line"
WHY_WATERMARK = "watermark"
WHY_LABEL_HEADER = "label header"
WHY_SENSITIVITY_LABEL = "sensitivity label"


def why_letter_field(field_name: str) -> str:
    return f"letter header field {field_name}"


def why_property(name: str) -> str:
    return f"document property {name}"


@dataclass(frozen=True)
class Marking:
    """One marking: what was written, its level, and the position and form that made it one."""

    raw: str
    level: str | None
    why: str = ""


# Possessive runs of blanks: with two ``\s*`` side by side around an optional ``[n]``,
# a failed match retried every split of a long run of blanks (quadratic in its length).
_REPLY_PREFIX = (
    r"(?:(?:re|fw|fwd|aw|wg|tr|rv|sv|vs|bls|balas|trs|teruskan)\s*+(?:\[\d+\]\s*+)?:\s*+)"
)

# Words of official correspondence: a level word in a tag counts as a marking when it
# is written in capitals, or when the subject around it names official business. A
# title-case "[Terbatas] Voucher" or "Rahasia: 7 Cara Hemat" is advertising.
_OFFICIAL = re.compile(
    r"(?<!\w)(?:nota(?:\s+dinas)?|surat|undangan|laporan|memo(?:randum)?|telaah(?:an)?|"
    r"disposisi|berita\s+acara|keputusan|peraturan|rapat|notulen(?:si)?|risalah|kajian|"
    r"rancangan|konsep|dokumen|anggaran|rencana|permohonan|pemberitahuan|instruksi|edaran|"
    r"perintah|lampiran|paparan|bahan|evaluasi|audit|pemeriksaan|rekap(?:itulasi)?|daftar|"
    r"usulan|tindak\s+lanjut|pengadaan|kontrak|perjanjian|naskah|kebijakan|data|hasil|sk|"
    r"spt|apbd|apbn|dpa|rka|lhp|nomor|report|minutes|meeting|agenda|budget|document|"
    r"contract|draft|briefing|proposal|letter|pegawai|personel|kepegawaian)(?!\w)",
    re.IGNORECASE,
)
# Advertising and click-bait around a level word: shop badges ("stok TERBATAS"),
# vouchers, "7 cara hemat". Such a text is never a marking, whatever its case.
_COMMERCIAL = re.compile(
    r"(?<!\w)(?:voucher|diskon|promo|gratis|cashback|sale|flash|murah|hemat|belanja|"
    r"kupon|potongan|cara|tips|trik|kuota|penawaran|ongkir|checkout|keranjang|stok|"
    r"beli\s+sekarang|shop|toko)(?!\w)",
    re.IGNORECASE,
)


def _is_commercial(text: str) -> bool:
    return _COMMERCIAL.search(text) is not None


@dataclass(frozen=True)
class _SubjectPatterns:
    head: re.Pattern[str]
    tail: re.Pattern[str]
    alone: re.Pattern[str]


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
        # Reply prefixes and other bracketed tags ([EXTERNAL], [EKSTERNAL]) before the
        # marking, in any order; a bracketed level is never taken for one of them.
        lead = rf"^\s*+(?:{_REPLY_PREFIX}|\[(?!\s*(?:{alt})\s*\])[^\[\]]{{1,40}}\]\s*+)*+"
        tag = rf"\[\s*(?P<b>{alt})\s*\]|\(\s*(?P<p>{alt})\s*\)|\*++\s*(?P<s>{alt})\s*\*++"
        head = re.compile(
            rf"{lead}(?:{tag}|(?P<c>{alt})\s*+(?::|[\-–|]\s))",
            re.IGNORECASE,
        )
        tail = re.compile(
            rf"(?:{tag}|\s[\-–|:]\s*+(?P<c>{alt}))\s*$",
            re.IGNORECASE,
        )
        alone = re.compile(rf"{lead}(?P<c>{alt})\s*$", re.IGNORECASE)
        found = _SubjectPatterns(head, tail, alone)
        if len(_SUBJECT_CACHE) > 64:
            _SUBJECT_CACHE.clear()
        _SUBJECT_CACHE[key] = found
    return found


def _tag_counts(raw: str, rest: str) -> bool:
    """A level in a tag position is a marking when written in capitals or beside official
    wording, and never beside advertising."""
    if _is_commercial(rest):
        return False
    if raw.isupper():
        return True
    return _OFFICIAL.search(rest) is not None


def subject_markings(subject: str, scheme: LabelScheme) -> list[str]:
    """Raw markings in the tag positions of a subject.

    ``[RAHASIA] ...``, ``(TERBATAS) ...``, ``*RAHASIA*``, ``RAHASIA: ...``, ``RAHASIA -
    ...`` at the start (after reply prefixes and tags such as ``[EXTERNAL]``), and
    ``... [RAHASIA]``, ``... - RAHASIA`` at the end. A level word in the middle of a
    subject is prose, and so is a tag beside advertising or, unless written in capitals,
    a tag without official wording around it.
    """
    if not subject:
        return []
    pats = _subject_patterns(scheme)
    found: list[str] = []
    m = pats.alone.search(subject)
    if m and m.group("c").isupper():
        found.append(m.group("c"))
        return found
    m = pats.head.search(subject)
    if m:
        raw = m.group("b") or m.group("p") or m.group("s") or m.group("c") or ""
        if raw and _tag_counts(raw, subject[m.end() :]):
            found.append(raw)
    m = pats.tail.search(subject)
    if m:
        raw = m.group("b") or m.group("p") or m.group("s") or m.group("c") or ""
        if raw and raw not in found and _tag_counts(raw, subject[: m.start()]):
            found.append(raw)
    return found


_LINE_TRIM = " \t\r*_=-~#.:[]()<>|\u00a0"


def marking_lines(text: str, scheme: LabelScheme, *, window: int = 8) -> list[str]:
    """Lines that consist only of a level in capitals, near the top or bottom of a text.

    This is how documents and letters are marked (a ``RAHASIA`` line above the title
    or in the footer). Lower- or mixed-case lines are prose and do not count, and a
    level line among advertising (a shop's ``TERBATAS`` badge) is not a marking.
    """
    span = None if window >= 1 << 20 else window
    return [m.raw for m in _lone_lines(text, scheme, window=span, any_case=False, why="")]


_LINE_CLASS = "[" + re.escape(_LINE_TRIM + "\f\v") + "]"
_LINE_CACHE: dict[tuple[str, ...], re.Pattern[str]] = {}


def _line_pattern(scheme: LabelScheme) -> re.Pattern[str]:
    """A line holding a level and nothing else but trimming punctuation, in any case (the
    caller judges the case). It starts with the newline before the line (the text is
    searched with one put in front), so the engine jumps from line to line."""
    key = scheme.names
    found = _LINE_CACHE.get(key)
    if found is None:
        alt = "|".join(
            r"[ \t_\-]+".join(re.escape(w) for w in name.split(" ")) for name in scheme.names
        )
        found = re.compile(rf"\n{_LINE_CLASS}*+(?P<m>{alt}){_LINE_CLASS}*+(?=\n|\Z)", re.IGNORECASE)
        if len(_LINE_CACHE) > 64:
            _LINE_CACHE.clear()
        _LINE_CACHE[key] = found
    return found


def _lone_lines(
    text: str,
    scheme: LabelScheme,
    *,
    window: int | None,
    any_case: bool,
    why: str,
    names_only: bool = False,
    low: str | None = None,
) -> list[Marking]:
    """Lines that are a level alone, judged by case, by position (``window``: only the
    first and last non-empty lines; None: anywhere) and by the advertising around them.
    ``low`` is ``text.lower()`` when the caller has it already."""
    found: list[Marking] = []
    seen: set[str] = set()
    if window is not None:
        # At most twice ``window`` lines are judged, and the case test rejects most of
        # them before any lookup: no need to look for level words in the whole text,
        # nor to split more of it than its two ends.
        lines = _end_lines(text, window + _NEAR_SPAN)
        ends = _ends(lines, window)
        for i in ends:
            raw = lines[i].strip(_LINE_TRIM)
            context = partial(_joined_near, lines, i)  # read only for a candidate line
            _judge(raw, context, scheme, any_case=any_case, why=why, found=found, seen=seen)
        return found
    # Every spelling of a level contains its last word as it is (separators differ,
    # words do not): a text without any of them has no such line, and most texts
    # have none, which is found at C speed. Where only the levels' own names count,
    # only their words are looked for.
    low = text.lower() if low is None else low
    words = _last_words(scheme, names_only=names_only)
    if not any(word in low for word in words):
        return found
    padded = "\n" + text
    for count, m in enumerate(_line_pattern(scheme).finditer(padded)):
        if count >= 256:
            break
        if names_only and normalise(m.group("m")) not in _level_names(scheme):
            continue
        context = partial(_around, padded, m.start(), m.end())
        _judge(m.group("m"), context, scheme, any_case=any_case, why=why, found=found, seen=seen)
    return found


def _last_words(scheme: LabelScheme, *, names_only: bool = False) -> frozenset[str]:
    """The last word of every spelling of a level (of the levels' own names only, with
    ``names_only``), lower-cased."""
    key = (names_only, scheme.names)
    found = _LAST_WORDS.get(key)
    if found is None:
        names = _level_names(scheme) if names_only else scheme.names
        found = frozenset(name.split(" ")[-1].lower() for name in names if name)
        if len(_LAST_WORDS) > 64:
            _LAST_WORDS.clear()
        _LAST_WORDS[key] = found
    return found


_LAST_WORDS: dict[tuple[bool, tuple[str, ...]], frozenset[str]] = {}


def _level_names(scheme: LabelScheme) -> frozenset[str]:
    return frozenset(normalise(level) for level in scheme.levels)


def _judge(
    raw: str,
    context: Callable[[], str],
    scheme: LabelScheme,
    *,
    any_case: bool,
    why: str,
    found: list[Marking],
    seen: set[str],
) -> None:
    """``context`` (the lines around) is gathered only for a line that names a level:
    most lines of a document are not one, and gathering it for each cost more than
    the rest of the judgement."""
    if not raw or len(raw) > 40 or raw in seen:
        return
    if not (raw.isupper() or (any_case and raw.istitle())):
        return
    level = scheme.resolve(raw)
    if level is None or (not any_case and _is_commercial(context())):
        return
    seen.add(raw)
    found.append(Marking(raw, level, why))


def _ends(lines: list[str], window: int) -> list[int]:
    """Indexes of the first and last ``window`` non-empty lines, in order."""
    head: list[int] = []
    for i, line in enumerate(lines):
        if line.strip(_LINE_TRIM):
            head.append(i)
            if len(head) == window:
                break
    tail: list[int] = []
    stop = head[-1] if head else -1
    for i in range(len(lines) - 1, stop, -1):
        if lines[i].strip(_LINE_TRIM):
            tail.append(i)
            if len(tail) == window:
                break
    return head + tail[::-1]


_NEAR_SPAN = 3  # non-empty lines of context on each side of a candidate (``_near``)
_END_CHARS = 32 << 10  # of text taken from each end of a long text, first


def _end_lines(text: str, need: int) -> list[str]:
    """The lines of ``text`` as far as its first and last ``need`` non-empty lines reach.

    For a long text, a slice of each end is split instead of the whole text; the line
    cut by a slice is dropped, and the slices are used only when each still holds
    ``need`` non-empty lines, so the ends (and their context) are what a split of the
    whole text would give. Otherwise, or for a short text, the whole text is split.
    """
    if len(text) > 4 * _END_CHARS:
        head = text[:_END_CHARS].splitlines()[:-1]
        tail = text[-_END_CHARS:].splitlines()[1:]
        if _non_empty(head) >= need and _non_empty(tail) >= need:
            return head + tail
    return text.splitlines()


def _non_empty(lines: list[str]) -> int:
    return sum(1 for line in lines if line.strip(_LINE_TRIM))


def _joined_near(lines: list[str], i: int) -> str:
    return " ".join(_near(lines, i))


def _near(lines: list[str], i: int, span: int = 3) -> list[str]:
    """Up to ``span`` non-empty lines before and after line ``i``, and the line."""
    before: list[str] = []
    for j in range(i - 1, -1, -1):
        if lines[j].strip(_LINE_TRIM):
            before.append(lines[j])
            if len(before) == span:
                break
    after: list[str] = []
    for j in range(i + 1, len(lines)):
        if lines[j].strip(_LINE_TRIM):
            after.append(lines[j])
            if len(after) == span:
                break
    return [*before[::-1], lines[i], *after]


def _around(text: str, start: int, end: int, span: int = 3) -> str:
    """The text from ``span`` lines before a match to ``span`` lines after it."""
    lo = start
    for _ in range(span + 1):
        lo = text.rfind("\n", 0, lo)
        if lo <= 0:
            lo = 0
            break
    hi = end
    for _ in range(span + 1):
        hi = text.find("\n", hi + 1)
        if hi == -1:
            hi = len(text)
            break
    return text[lo:hi]


# ``Sifat : Rahasia``, ``Klasifikasi : RAHASIA`` at the start of a line; the key and
# its value may sit in table cells (one per line, the value's line starting with a tab)
# and the colon anywhere between, with any spacing.
# Each pattern starts with a newline (the text is searched with one put in front), so
# the regular expression engine jumps from line to line instead of trying every position.
_LETTER_FIELD = re.compile(
    r"\n[ \t>*|]*+(?P<key>sifat(?:[ \t]+surat)?|(?:derajat[ \t]+|tingkat[ \t]+)?klasifikasi"
    r"(?:[ \t]+keamanan)?|security[ \t]+classification|classification)"
    r"[ \t]*+(?:\n[ \t]*+)?(?::|\t)[ \t:]*+(?:\n[ \t]*+)?(?P<value>[^\n]{1,80}?)[ \t\r]*(?=\n|\Z)",
    re.IGNORECASE,
)
_FIELD_SPLIT = re.compile(r"\s*(?:[/,;&+]|\s-\s|\s(?:dan|and|atau|or)\s)\s*", re.IGNORECASE)
# Urgency, not classification: in a Tata Naskah Dinas header ``Sifat`` may hold either.
# ``Biasa`` there means "not urgent"; only under a ``Klasifikasi`` key is it the level.
URGENCY = frozenset({"segera", "sangat segera", "amat segera", "kilat", "biasa", "penting"})


def letter_field_markings(text: str, scheme: LabelScheme) -> list[Marking]:
    """Classification values of letter header fields (``Sifat``, ``Klasifikasi``).

    The value must consist of levels and urgency words only (``Segera / Rahasia``);
    anything else after ``Sifat:`` is a sentence, not a header field.
    """
    found: list[Marking] = []
    if ":" not in text and "\t" not in text:
        return found
    for m in _LETTER_FIELD.finditer("\n" + text):
        key = " ".join(m.group("key").split())
        value = m.group("value").strip(_LINE_TRIM)
        if not value:
            continue
        is_sifat = key.casefold().startswith("sifat")
        levels: list[str] = []
        ok = True
        for part in _FIELD_SPLIT.split(value):
            piece = part.strip(_LINE_TRIM)
            if not piece:
                continue
            norm = normalise(piece)
            if is_sifat and norm in URGENCY:
                continue
            level = scheme.resolve(piece)
            if level is None:
                if norm in URGENCY:
                    continue
                ok = False
                break
            levels.append(piece)
        if ok:
            field_name = key[:1].upper() + key[1:].lower()
            for piece in levels:
                found.append(Marking(piece, scheme.resolve(piece), why_letter_field(field_name)))
    return found


_FORWARDED_SUBJECT = re.compile(
    r"\n[ \t>]*+(?:subject|subjek|perihal)[ \t]*+:[ \t]*+(?P<value>[^\n]{1,300})(?=\n|\Z)",
    re.IGNORECASE,
)


def forwarded_subject_markings(text: str, scheme: LabelScheme) -> list[Marking]:
    """Markings of a quoted original's ``Subject:`` line in a forward or a reply."""
    found: list[Marking] = []
    for m in _FORWARDED_SUBJECT.finditer("\n" + text):
        for raw in subject_markings(m.group("value"), scheme):
            found.append(Marking(raw, scheme.resolve(raw), WHY_FORWARDED))
    return found


# Where a text came from decides which forms count in it.
BODY = "body"  # a mail body: top and bottom lines, letter fields, forwarded subjects
DOCUMENT = "document"  # a document's body: a level line anywhere, letter fields
BAND = "band"  # a page header or footer part: level lines in capitals or title case
PAGE = "page"  # one page of a paginated document: its first and last lines are bands
WATERMARK = "watermark"  # watermark text: any level, any case
PLACES = (BODY, DOCUMENT, BAND, PAGE, WATERMARK)


def text_markings(
    text: str, scheme: LabelScheme, place: str = BODY, *, low: str | None = None
) -> list[Marking]:
    """Every marking a text carries by position and form, each saying why it counted.
    ``low`` is ``text.lower()`` when the caller has it already."""
    found: list[Marking] = []
    if not text:
        return found
    if place == WATERMARK:
        for line in text.splitlines():
            raw = line.strip(_LINE_TRIM)
            if raw and len(raw) <= 40:
                level = scheme.resolve(raw)
                if level is not None:
                    found.append(Marking(raw, level, WHY_WATERMARK))
        return found
    if place == BAND:
        found += _lone_lines(text, scheme, window=None, any_case=True, why=WHY_HEADER_LINE, low=low)
    elif place in (PAGE, DOCUMENT):
        if place == PAGE:
            found += _page_bands(text, scheme)
        # Near the top and bottom any spelling of a level counts; further in, only the
        # level names themselves (RAHASIA on page 3, in a stamp box), since an alias
        # such as GENERAL or INTERNAL alone on a line there is a section heading.
        found += _lone_lines(text, scheme, window=8, any_case=False, why=WHY_DOCUMENT_LINE)
        found += _lone_lines(
            text,
            scheme,
            window=None,
            any_case=False,
            why=WHY_DOCUMENT_LINE,
            names_only=True,
            low=low,
        )
    else:
        found += _lone_lines(text, scheme, window=8, any_case=False, why=WHY_BODY_LINE)
        found += forwarded_subject_markings(text, scheme)
    found += letter_field_markings(text, scheme)
    return found


def _page_bands(text: str, scheme: LabelScheme) -> list[Marking]:
    """The first and last two lines of a page: title-case ``Rahasia`` counts there."""
    lines = text.splitlines()
    head: list[str] = []
    for line in lines:
        stripped = line.strip(_LINE_TRIM)
        if stripped:
            head.append(stripped)
            if len(head) == 2:
                break
    tail: list[str] = []
    for line in reversed(lines):
        stripped = line.strip(_LINE_TRIM)
        if stripped:
            tail.append(stripped)
            if len(tail) == 2:
                break
    found: list[Marking] = []
    for line in head:
        _band_line(line, scheme, WHY_PAGE_HEADER, found)
    for line in reversed(tail):
        _band_line(line, scheme, WHY_PAGE_FOOTER, found)
    return found


def _band_line(line: str, scheme: LabelScheme, why: str, found: list[Marking]) -> None:
    if len(line) <= 40 and (line.isupper() or line.istitle()):
        level = scheme.resolve(line)
        if level is not None and not any(m.raw == line for m in found):
            found.append(Marking(line, level, why))


# Properties that name a classification even when their value is not a known level.
CLASSIFICATION_PROPERTY_NAMES = frozenset(
    {
        "klasifikasi",
        "classification",
        "sensitivity",
        "bjdocumentsecuritylabel",
        "security classification",
        "protective marking",
        "classificationlevel",
    }
)
_FREE_TEXT_PROPERTIES = frozenset(
    {"title", "subject", "description", "comments", "category", "dc:title", "dc:subject"}
)
_KEYWORD_PROPERTIES = frozenset({"keywords", "cp:keywords", "pdf:keywords"})


def property_markings(name: str, value: str, scheme: LabelScheme) -> list[Marking]:
    """Markings of a document property: a title or subject read like a mail subject
    (tags only), keywords item by item, any other property by its value."""
    raw = " ".join(value.split())
    key = name.strip().casefold()
    why = why_property(name.strip())
    if not raw:
        return []
    if key in _FREE_TEXT_PROPERTIES:
        whole = scheme.resolve(raw)
        if whole is not None:
            return [Marking(raw, whole, why)]
        return [Marking(r, scheme.resolve(r), why) for r in subject_markings(raw, scheme)]
    if key in _KEYWORD_PROPERTIES:
        out = []
        for part in re.split(r"[,;]", raw):
            item = part.strip()
            level = scheme.resolve(item) if item else None
            if level is not None:
                out.append(Marking(item, level, why))
        return out
    level = scheme.resolve_value(raw)
    if level is not None or normalise(name) in CLASSIFICATION_PROPERTY_NAMES:
        return [Marking(raw, level, why)]
    return []


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
        found.append(Marking(name or guid, level, WHY_SENSITIVITY_LABEL))
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
    return Marking(raw, scheme.resolve_value(raw), WHY_LABEL_HEADER)


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
    return Marking(raw, level, WHY_LABEL_HEADER)


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
            found.append(Marking(val, scheme.resolve_value(val), WHY_LABEL_HEADER))
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
