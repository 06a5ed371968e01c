"""Sensitive-data detectors: Indonesian identity and tax numbers, payment cards, policy terms.

Each detector is shaped like a Purview sensitive information type: a pattern finds
candidates, a validator throws away numbers that cannot be real (a NIK whose date does
not exist, a card failing Luhn), and supporting keywords within 300 characters raise
the confidence. The count is of *distinct* valid values, so a NIK quoted five times in
a reply chain is one person, not five.
"""

from __future__ import annotations

import bisect
import datetime
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from milter.inspect.errors import DetectorError
from milter.inspect.findings import Detection

PROXIMITY = 300


@dataclass(frozen=True)
class Detector:
    """A policy-supplied detector: a keyword dictionary and/or a regular expression.

    ``keywords`` are matched as whole words, case-insensitively; each distinct keyword
    found counts once. ``regex`` matches count by distinct matched text (group 0).
    ``supporting`` keywords within 300 characters of a match make it high confidence.
    Plain data (no callables), so a detector list pickles into a worker process.
    """

    name: str
    keywords: tuple[str, ...] = ()
    regex: str | None = None
    supporting: tuple[str, ...] = ()
    case_sensitive: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise DetectorError("a detector needs a name")
        if not self.keywords and not self.regex:
            raise DetectorError(f"detector {self.name!r} needs keywords or a regex")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise DetectorError(f"detector {self.name!r}: invalid regex: {exc}") from None


# --- validators ---------------------------------------------------------------------

NIK_PROVINCES = frozenset(
    [
        *range(11, 20),
        21,
        *range(31, 37),
        *range(51, 54),
        *range(61, 66),
        *range(71, 77),
        81,
        82,
        *range(91, 97),
    ]
)


def _real_date(year: int, month: int, day: int) -> bool:
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    return True


_UP = "0123456789" * 4
_DOWN = "9876543210" * 4


def _degenerate(digits: str) -> bool:
    """All one digit, or a run up or down (1234567890...): typed by hand, not issued."""
    return digits == digits[0] * len(digits) or digits in _UP or digits in _DOWN


def valid_nik(digits: str) -> bool:
    """A 16-digit NIK, checked field by field (Permendagri on the NIK structure).

    Province from the list of province codes; regency a kabupaten (01-40: no province has
    more) or a kota (71-79); district non-zero; date of birth DDMMYY forming a real date,
    with 40 added to the day for women; serial not 0000. About 1% of random 16-digit
    numbers still pass, which is why each value also gets a confidence.
    """
    if len(digits) != 16 or not digits.isdigit() or _degenerate(digits):
        return False
    if int(digits[0:2]) not in NIK_PROVINCES:
        return False
    regency, district = int(digits[2:4]), int(digits[4:6])
    if not (1 <= regency <= 40 or 71 <= regency <= 79) or district == 0:
        return False
    day, month, year = int(digits[6:8]), int(digits[8:10]), int(digits[10:12])
    if day > 40:
        day -= 40
    # Two-digit years: 00 stands for 2000, a leap year, so Feb 29 is judged by year % 4.
    if not _real_date(2000 + year, month, day):
        return False
    return digits[12:16] != "0000"


def valid_nip(digits: str) -> bool:
    """An 18-digit NIP: birth date, appointment year/month after it, sex digit, sequence.

    PPPK numbers carry a non-month in the appointment month position; they are accepted
    as long as the appointment year is plausible.
    """
    if len(digits) != 18 or not digits.isdigit() or _degenerate(digits):
        return False
    by, bm, bd = int(digits[0:4]), int(digits[4:6]), int(digits[6:8])
    if not 1930 <= by <= 2015 or not _real_date(by, bm, bd):
        return False
    ay, am = int(digits[8:12]), int(digits[12:14])
    if not by + 14 <= ay <= 2099:
        return False
    if 1 <= am <= 12:
        if (ay, am) <= (by, bm):
            return False
    elif am == 0:
        return False
    if digits[14] not in "12":
        return False
    return digits[15:18] != "000"


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def valid_npwp(digits: str) -> bool:
    """A 15-digit NPWP (Luhn check digit as the 9th digit) or its 16-digit ``0`` form."""
    if len(digits) == 16 and digits[0] == "0":
        digits = digits[1:]
    if len(digits) != 15 or not digits.isdigit() or _degenerate(digits):
        return False
    if digits[:9] == "000000000":
        return False
    return luhn(digits[:9])


_CARD_PREFIXES = (
    ("4", (13, 16, 19)),
    *((str(p), (16,)) for p in range(51, 56)),
    *((str(p), (16,)) for p in range(2221, 2721)),
    ("34", (15,)),
    ("37", (15,)),
    ("6011", (16, 19)),
    ("65", (16, 19)),
    *((str(p), (16, 19)) for p in range(644, 650)),
    *((str(p), (16, 19)) for p in range(3528, 3590)),
    ("62", (16, 17, 18, 19)),
    ("36", (14,)),
    *((str(p), (14,)) for p in range(300, 306)),
    ("38", (14,)),
)


def valid_card(digits: str) -> bool:
    """A payment card number: a known issuer prefix with its length, and Luhn."""
    if not 13 <= len(digits) <= 19 or not digits.isdigit() or _degenerate(digits):
        return False
    if not any(len(digits) in _CARD_TABLE.get(digits[:k], ()) for k in (1, 2, 3, 4)):
        return False
    return luhn(digits)


# Issuer prefixes by their digits, for one lookup per prefix length instead of a scan
# of the ~600 prefixes for every candidate.
_CARD_TABLE: dict[str, tuple[int, ...]] = {}
for _prefix, _lengths in _CARD_PREFIXES:
    _CARD_TABLE[_prefix] = tuple(sorted({*_CARD_TABLE.get(_prefix, ()), *_lengths}))


# --- candidates -----------------------------------------------------------------------

# Written whole, in the 2.4.6.4 dotted form of printed cards, or in groups of four
# (``3171 0112 3456 0001``, ``3171.0112.3456.0001``) or 6.6.4 with one separator.
_NIK = re.compile(
    r"(?<![\d.])(?:(?:\d{16}|\d{2}\.\d{4}\.\d{6}\.\d{4})(?![\d]|\.\d)"
    r"|(?<!\d )\d{4}(?P<a>[ .])\d{4}(?P=a)\d{4}(?P=a)\d{4}(?![ .]?\d)"
    r"|(?<!\d )\d{6}(?P<b>[ .])\d{6}(?P=b)\d{4}(?![ .]?\d))",
    re.ASCII,
)
_NIP = re.compile(r"(?<![\d.])\d{8}[ .]?\d{6}[ .]?\d[ .]?\d{3}(?![\d]|\.\d)", re.ASCII)
_NPWP = re.compile(
    r"(?<![\d.])(?:\d{2}\.\d{3}\.\d{3}\.\d[-.]\d{3}\.\d{3}|0?\d{15})(?![\d]|[.-]\d)", re.ASCII
)
_CARD = re.compile(
    r"(?<![\d.])(?:\d{4}[ -]){2,3}\d{1,7}(?![\d]|[ -]\d)|(?<![\d.])\d{13,19}(?!\d)", re.ASCII
)
# Every candidate above is a run of 13+ ASCII digits with single separators between them;
# finding those runs first keeps the detailed patterns off ordinary prose.
_RUN = re.compile(r"[0-9](?:[ .\-]?[0-9]){12,}")
_NON_DIGIT = re.compile(r"[^0-9]")


@dataclass(frozen=True)
class _Builtin:
    name: str
    pattern: re.Pattern[str]
    validate: Callable[[str], bool]
    keywords: tuple[str, ...]


_BUILTINS = (
    _Builtin(
        "nik",
        _NIK,
        valid_nik,
        (
            "nik",
            "ktp",
            "e-ktp",
            "ektp",
            "nomor induk kependudukan",
            "kartu tanda penduduk",
            "no. identitas",
            "no identitas",
            "nomor identitas",
            "no. ktp",
        ),
    ),
    _Builtin("nip", _NIP, valid_nip, ("nip", "nomor induk pegawai")),
    _Builtin("npwp", _NPWP, valid_npwp, ("npwp", "nomor pokok wajib pajak")),
    _Builtin(
        "card",
        _CARD,
        valid_card,
        (
            "kartu kredit",
            "credit card",
            "card number",
            "nomor kartu",
            "visa",
            "mastercard",
            "amex",
            "american express",
            "jcb",
            "cvv",
            "cvc",
            "expiry",
            "kedaluwarsa",
            "debit",
        ),
    ),
)

_NPWP_KEYWORDS = _BUILTINS[2].keywords


@lru_cache(maxsize=256)
def _keyword_pattern(words: tuple[str, ...], case_sensitive: bool) -> re.Pattern[str]:
    alt = "|".join(
        r"\s+".join(re.escape(p) for p in w.split()) for w in sorted(words, key=len, reverse=True)
    )
    flags = 0 if case_sensitive else re.IGNORECASE
    return re.compile(rf"(?<!\w)(?:{alt})(?!\w)", flags)


@lru_cache(maxsize=256)
def _compiled(regex: str, case_sensitive: bool) -> re.Pattern[str]:
    return re.compile(regex, 0 if case_sensitive else re.IGNORECASE)


class _Proximity:
    """Positions of supporting keywords, for 'is one within 300 characters' in log time."""

    def __init__(self, text: str, words: tuple[str, ...], case_sensitive: bool = False) -> None:
        self.starts: list[int] = []
        if words:
            self.starts = [
                m.start() for m in _keyword_pattern(words, case_sensitive).finditer(text)
            ]

    def near(self, start: int, end: int) -> bool:
        i = bisect.bisect_left(self.starts, start - PROXIMITY)
        return i < len(self.starts) and self.starts[i] <= end + PROXIMITY


class _Columns:
    """Columns of a table (CSV, TSV, a worksheet rendered as tab-separated rows) whose
    header cell is a supporting keyword: every value below such a header is supported,
    however far down the table it sits."""

    _DELIMITERS = ("\t", ";", ",", "|")

    def __init__(self, text: str, keyword_starts: list[int]) -> None:
        self.text = text
        self.line_starts = [0]
        self.line_starts.extend(m.end() for m in _NEWLINE.finditer(text))
        # per delimiter: sorted header line numbers and the keyword columns of each
        self.headers: dict[str, tuple[list[int], list[frozenset[int]]]] = {}
        found: dict[tuple[str, int], set[int]] = {}
        cells: dict[int, tuple[int, str, list[str]] | None] = {}
        for pos in keyword_starts:
            line = self._line_of(pos)
            if line not in cells:
                start, content = self._line(line)
                d = self._delimiter(content)
                cells[line] = None if d is None else (start, d, content.split(d, 4096))
            row = cells[line]
            if row is None:
                continue
            start, delim, values = row
            col = self.text.count(delim, start, pos)
            if col >= len(values):
                continue
            cell = values[col].strip(" \"'")
            # A header cell names the column and nothing else: short, no digits.
            if len(cell) <= 40 and not any(ch.isdigit() for ch in cell):
                found.setdefault((delim, line), set()).add(col)
        for (delim, line), cols in sorted(found.items(), key=lambda kv: kv[0][1]):
            lines, columns = self.headers.setdefault(delim, ([], []))
            lines.append(line)
            columns.append(frozenset(cols))

    def _line_of(self, pos: int) -> int:
        return bisect.bisect_right(self.line_starts, pos) - 1

    def _line(self, index: int) -> tuple[int, str]:
        start = self.line_starts[index]
        end = self.line_starts[index + 1] - 1 if index + 1 < len(self.line_starts) else None
        return start, self.text[start:end]

    def _delimiter(self, content: str) -> str | None:
        for delim in self._DELIMITERS:
            if delim in content:
                return delim
        return None

    def supported(self, pos: int) -> bool:
        if not self.headers:
            return False
        line = self._line_of(pos)
        start, content = self._line(line)
        delim = self._delimiter(content)
        if delim is None or delim not in self.headers:
            return False
        lines, columns = self.headers[delim]
        i = bisect.bisect_left(lines, line) - 1
        if i < 0:
            return False
        return content.count(delim, 0, pos - start) in columns[i]


_NEWLINE = re.compile(r"\n")
_NOT_DIGIT_BYTES = bytes(b for b in range(256) if not 0x30 <= b <= 0x39)


def _digits(text: str, step: int = 64 << 10) -> int:
    """How many ASCII digits ``text`` holds. A run (``_RUN``) needs 13, and most mail
    text has far fewer: counted at memcpy speed, where the pattern, whose first item is
    a class, tests every character. In UTF-8 only an ASCII digit is a byte 0x30-0x39.
    Slice by slice, so a long text is never copied whole."""
    count = 0
    for start in range(0, len(text), step):
        piece = text[start : start + step]
        raw = piece.encode("ascii") if piece.isascii() else piece.encode("utf-8", "surrogatepass")
        count += len(raw.translate(None, _NOT_DIGIT_BYTES))
    return count


def _result(name: str, values: dict[str, bool]) -> Detection:
    high = sum(1 for v in values.values() if v)
    return Detection(name, len(values), "high" if high else "low", high)


def run_detectors(text: str, extra: Sequence[Detector] = ()) -> dict[str, Detection]:
    """Every built-in detector plus ``extra`` over ``text``; detectors with no hit are omitted."""
    results: dict[str, Detection] = {}
    runs = [(m.start(), m.group()) for m in _RUN.finditer(text)] if _digits(text) >= 13 else []
    nik_values: dict[str, tuple[int, int]] = {}
    for det in _BUILTINS if runs else ():
        prox: _Proximity | None = None
        columns: _Columns | None = None
        values: dict[str, bool] = {}
        for offset, run in runs:
            for m in det.pattern.finditer(run):
                digits = _NON_DIGIT.sub("", m.group())
                if not det.validate(digits):
                    continue
                start, end = offset + m.start(), offset + m.end()
                if det.name == "nik":
                    nik_values.setdefault(digits, (start, end))
                if prox is None:
                    prox = _Proximity(text, det.keywords)
                if values.get(digits):
                    continue
                supported = prox.near(start, end)
                if not supported and prox.starts:
                    if columns is None:
                        columns = _Columns(text, prox.starts)
                    supported = columns.supported(start)
                values[digits] = supported
        if det.name == "npwp" and nik_values:
            # An individual's 16-digit NPWP is their NIK: count it when NPWP is named nearby.
            npwp_prox = _Proximity(text, _NPWP_KEYWORDS)
            for digits, (start, end) in nik_values.items():
                if npwp_prox.near(start, end):
                    values[digits] = True
        if values:
            results[det.name] = _result(det.name, values)
    for detector in extra:
        found = _custom(text, detector)
        if found:
            results[detector.name] = _result(detector.name, found)
    return results


def _custom(text: str, det: Detector) -> dict[str, bool]:
    prox = _Proximity(text, det.supporting, det.case_sensitive)
    values: dict[str, bool] = {}
    matchers: list[re.Pattern[str]] = []
    if det.keywords:
        matchers.append(_keyword_pattern(det.keywords, det.case_sensitive))
    if det.regex:
        matchers.append(_compiled(det.regex, det.case_sensitive))
    for pattern in matchers:
        for m in pattern.finditer(text):
            if not m.group():
                continue
            key = m.group() if det.case_sensitive else m.group().casefold()
            key = " ".join(key.split())
            values[key] = values.get(key, False) or prox.near(m.start(), m.end())
    return values


def detector_names(extra: Iterable[Detector] = ()) -> list[str]:
    """Names of every detector that runs: the built-ins, then the policy's own."""
    return [d.name for d in _BUILTINS] + [d.name for d in extra]
