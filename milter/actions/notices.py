"""Notices people understand: to the sender, to the compliance officers, and DSNs.

Every builder returns complete RFC 5322 message bytes; the caller sends them with a
null envelope sender (``<>``) through the upstream, so a notice can never cause
another notice.

Texts are Jinja2 templates (``templates/`` here, overridden file by file by the
``notices.templates`` directory of the gateway configuration), Bahasa Indonesia first
in the register of official correspondence, English second. They receive facts, not
sentences: what was held and for whom, where each other recipient went, the rules with
their clauses, the findings in both languages, which advice applies. Conditionals in
the template then say only what is true for that message; a civil servant who is told
to remove an attachment that was never there stops reading notices. ``StrictUndefined``
makes a misspelt name fail (the golden tests, and ``Templates.load`` itself, which
renders every template once on sample data so ``milter config check`` catches it
before the gateway binds).

Every value taken from a message (subject, sender, display name, recipients, file
names in the findings, the client's HELO and login) goes through ``printable``, and
the environment's ``finalize`` applies it once more to everything a template prints:
an officer reads alerts in a terminal mail reader as often as not, and an ESC sequence
or a bidi override in a subject must show as ``\\x1b`` or ``\\u202e``, not act, nor may
a line break in a value forge a line of the notice. Autoescaping stays off: these are
plain-text mails, and HTML entities would only garble them.

No backscatter: ``should_notify_sender`` is False for the null sender and for any
sender outside the internal domains, whose address may well be forged.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import threading
import time
import zoneinfo
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr, formatdate, make_msgid
from pathlib import Path
from typing import Any

import jinja2

from milter.config import NoticesConfig
from milter.envelope import domain_of
from milter.mimetree import decode_words
from milter.policy.verdict import RecipientVerdict, RuleResult, Verdict
from milter.quarantine.store import QuarantineRecord
from milter.text import printable

SHIPPED = Path(__file__).with_name("templates")
TEMPLATE_NAMES = ("quarantine_notice", "officer_alert", "audit_alert", "rule_alert", "dsn")
# Shared macros (route and outcome wording), imported by the templates.
COMMON = "_common.txt"
FROM_NAME = "Gateway Surel Pemprov DKI Jakarta"
MAX_SUBJECT = 200
DEFAULT_TIMEZONE = "Asia/Jakarta"

_NON_SENDERS = ("mailer-daemon", "postmaster", "noreply", "no-reply")


class NoticeError(Exception):
    """A template is missing or unusable."""


@dataclass(frozen=True)
class FailedRecipient:
    """A recipient the message did not reach, for a DSN."""

    address: str
    status: str = "5.7.1"  # RFC 3463 enhanced status code
    diagnostic: str = ""  # the SMTP reply text, e.g. "550 5.7.1 ditolak / rejected"


@dataclass(frozen=True)
class Disposition:
    """What became of one envelope recipient, for "what went where" in a notice.

    ``action`` is the pipeline's word (delivered, quarantined, rejected, refused,
    deferred); ``route`` names the way a delivered copy went (``upstream`` or a route
    such as ``sanapati``); ``quarantine_id`` the hold a quarantined one is in.
    """

    address: str
    action: str
    route: str | None = None
    quarantine_id: str | None = None


@dataclass(frozen=True)
class Clause:
    """One clause or legal basis: how to cite it and what it asks, in both languages."""

    key: str
    cite_id: str
    cite_en: str
    meaning_id: str = ""
    meaning_en: str = ""

    def words(self) -> dict[str, str]:
        return {
            "key": self.key,
            "cite_id": self.cite_id,
            "cite_en": self.cite_en,
            "meaning_id": self.meaning_id,
            "meaning_en": self.meaning_en,
        }


# Clause keys of SE 79/SE/2019 itself ("2.c"); anything else ("UU 27/2022") must be in
# the clause table to be cited in words.
_SE_CLAUSE = re.compile(r"^\d+\.[a-z]$")
SE_ID = "Surat Edaran Sekretaris Daerah Nomor 79/SE/2019"
SE_EN = "Circular Letter of the Regional Secretary No. 79/SE/2019"


# -- templates ---------------------------------------------------------------------------


def _finalize(value: Any) -> Any:
    # Every printed value, once more through printable: a builder that forgot one
    # still cannot let a control character or a line break through.
    return printable(value) if isinstance(value, str) else value


def _environment(override_dir: str | None) -> jinja2.Environment:
    folders = ([override_dir] if override_dir else []) + [str(SHIPPED)]
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folders, encoding="utf-8"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_finalize,
    )


@dataclass(frozen=True)
class Templates:
    """The notice templates and the clause table, loaded and checked."""

    env: jinja2.Environment
    clauses: Mapping[str, Clause]
    texts: Mapping[str, str]  # each template's source, for tools and tests

    @classmethod
    def load(cls, override_dir: str | None = None) -> Templates:
        """The shipped templates, each replaced by a same-named file in ``override_dir``.

        Raises NoticeError, in one line naming the file (and line), when a template is
        missing, does not compile, or fails on sample data (a misspelt name).
        """
        env = _environment(override_dir)
        texts: dict[str, str] = {}
        for name in (*TEMPLATE_NAMES, COMMON.removesuffix(".txt")):
            filename = name + ".txt"
            try:
                source, _path, _ = env.loader.get_source(env, filename)  # type: ignore[union-attr]
                env.get_template(filename)
            except jinja2.TemplateNotFound:
                raise NoticeError(f"template {filename} not found") from None
            except jinja2.TemplateSyntaxError as exc:
                raise NoticeError(
                    f"{exc.filename or filename}:{exc.lineno}: {exc.message}"
                ) from None
            except (OSError, UnicodeDecodeError) as exc:
                raise NoticeError(f"{filename}: {exc}") from None
            texts[name] = source
        templates = cls(env, _load_clauses(override_dir), texts)
        _self_check(templates)
        return templates

    def render(self, name: str, values: Mapping[str, Any]) -> tuple[str, str]:
        """(subject, body) of template ``name``; its first line is ``Subject: ...``."""
        try:
            text = self.env.get_template(name + ".txt").render(values)
        except jinja2.TemplateError as exc:
            raise NoticeError(f"template {name}.txt: {exc}") from None
        first, _, body = text.partition("\n")
        if not first.lower().startswith("subject:"):
            raise NoticeError(f"template {name}.txt: the first line must be 'Subject: ...'")
        return first.split(":", 1)[1].strip(), _tidy(body)

    def clause(self, key: str) -> Clause:
        """A clause or legal basis in words; an unknown one as written."""
        key = key.strip()
        known = self.clauses.get(key)
        if known is not None:
            return known
        if _SE_CLAUSE.match(key):
            return Clause(key, f"butir {key} {SE_ID}", f"clause {key} of the {SE_EN}")
        return Clause(key, key, key)

    def clause_words(self, clause: str) -> tuple[str, str]:
        """What one clause ("2.c") asks, in plain words (id, en); unknown: as written."""
        c = self.clause(clause)
        return (c.meaning_id or c.cite_id, c.meaning_en or c.cite_en)


def _tidy(body: str) -> str:
    """The body without trailing spaces and with at most one blank line in a row, so a
    conditional that printed nothing leaves no hole in the text."""
    # "-- " (with its space) is the signature separator mail readers recognise.
    lines = [x if x == "-- " else x.rstrip() for x in body.strip("\n").split("\n")]
    out: list[str] = []
    for line in lines:
        if not line and out and not out[-1]:
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def _read(filename: str, override_dir: str | None) -> str:
    for folder in ([Path(override_dir)] if override_dir else []) + [SHIPPED]:
        path = folder / filename
        if path.is_file():
            try:
                return path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise NoticeError(f"{path}: {exc}") from None
    raise NoticeError(f"template {filename} not found")


def _load_clauses(override_dir: str | None) -> dict[str, Clause]:
    """``clauses.tsv``: key, citation (id, en), what it asks (id, en), tab-separated."""
    clauses: dict[str, Clause] = {}
    for n, line in enumerate(_read("clauses.tsv", override_dir).splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        fields += [""] * (5 - len(fields))  # what it asks may be left out
        if len(fields) != 5 or not all(fields[:3]):
            raise NoticeError(
                f"clauses.tsv:{n}: expected key<TAB>cite_id<TAB>cite_en<TAB>meaning_id"
                "<TAB>meaning_en"
            )
        clauses[fields[0]] = Clause(*fields)
    return clauses


_DEFAULT_TEMPLATES: Templates | None = None
_LOCK = threading.Lock()


def _templates(config: NoticesConfig, given: Templates | None) -> Templates:
    global _DEFAULT_TEMPLATES
    if given is not None:
        return given
    if config.templates:
        return Templates.load(config.templates)
    with _LOCK:
        if _DEFAULT_TEMPLATES is None:
            _DEFAULT_TEMPLATES = Templates.load()
        return _DEFAULT_TEMPLATES


# -- who gets notices --------------------------------------------------------------------


def should_notify_sender(sender: str, is_internal: Callable[[str], bool]) -> bool:
    """Only internal senders hear about their mail: never the null or an outside sender."""
    address = sender.strip().strip("<>").strip()
    if not address or "@" not in address:
        return False
    local = address.rsplit("@", 1)[0].lower()
    if local in _NON_SENDERS:
        return False
    return bool(is_internal(address))


class RateLimiter:
    """At most ``limit_per_hour`` notices per key (sender) in any sliding hour, in this
    process only.

    The gateway counts in the quarantine database's notice outbox instead, so the limit
    holds across workers and nodes; this one serves when no outbox is available.
    """

    WINDOW = 3600.0

    def __init__(self, limit_per_hour: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit_per_hour
        self.clock = clock
        self._sent: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Whether one more notice for ``key`` may go now (and count it if so)."""
        now = self.clock()
        key = key.lower()
        with self._lock:
            if len(self._sent) > 10000:
                self._prune(now)
            times = self._sent.setdefault(key, deque())
            while times and now - times[0] >= self.WINDOW:
                times.popleft()
            if len(times) >= self.limit:
                return False
            times.append(now)
            return True

    def _prune(self, now: float) -> None:
        for k in [k for k, t in self._sent.items() if not t or now - t[-1] >= self.WINDOW]:
            del self._sent[k]


# -- words: dates, levels, findings ------------------------------------------------------

_DAYS_ID = ("Senin", "Selasa", "Rabu", "Kamis", "Jumat", "Sabtu", "Minggu")
_MONTHS_ID = (
    "Januari",
    "Februari",
    "Maret",
    "April",
    "Mei",
    "Juni",
    "Juli",
    "Agustus",
    "September",
    "Oktober",
    "November",
    "Desember",
)
# Indonesia's own names for its zones; elsewhere the zone's abbreviation.
_ZONE_NAMES = {
    "Asia/Jakarta": "WIB",
    "Asia/Pontianak": "WIB",
    "Asia/Makassar": "WITA",
    "Asia/Ujung_Pandang": "WITA",
    "Asia/Jayapura": "WIT",
}


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo(DEFAULT_TIMEZONE)


def moment(ts: float, timezone: str = DEFAULT_TIMEZONE) -> dict[str, str]:
    """A time as people write it: "Rabu, 2 Desember 2026 pukul 16.11 WIB" (``id``) and
    "Wednesday, 2 December 2026, 16:11 WIB" (``en``), in the configured zone."""
    local = dt.datetime.fromtimestamp(ts, _zone(timezone))
    zone = _ZONE_NAMES.get(timezone) or local.tzname() or timezone
    return {
        "id": (
            f"{_DAYS_ID[local.weekday()]}, {local.day} {_MONTHS_ID[local.month - 1]} "
            f"{local.year} pukul {local:%H.%M} {zone}"
        ),
        "en": f"{local:%A}, {local.day} {local:%B %Y}, {local:%H:%M} {zone}",
    }


def level_words(level: str | None) -> str:
    """A classification as it is written on a document: ``SANGAT RAHASIA``."""
    return printable((level or "").replace("_", " ").strip())


# The policy's named sets, in words; a site's own sets are named as they are.
_SET_WORDS = {
    "internal": ("jakarta.go.id dan subdomainnya", "jakarta.go.id and its subdomains"),
    "secure": ("surel aman sanapati.net (BSSN)", "BSSN's secure sanapati.net mail"),
    "government": ("instansi pemerintah lain (*.go.id)", "other government agencies (*.go.id)"),
    "sanctioned": ("saluran resmi yang diizinkan", "the sanctioned channels"),
}
_ROLE = {"recipient": ("penerima", "recipient"), "sender": ("pengirim", "sender")}
_FLAG_WORDS = {
    "executable": ("berisi program atau skrip", "contains a program or script"),
    "mismatch": (
        "jenis berkasnya tidak sesuai dengan nama atau jenis yang dinyatakan",
        "its true type contradicts its name or declared type",
    ),
    "encrypted": ("terenkripsi atau dilindungi kata sandi", "encrypted or password-protected"),
    "macro": ("mengandung makro", "contains macros"),
    "signed": ("bertanda tangan digital", "digitally signed"),
    "unscannable": ("tidak dapat diperiksa sepenuhnya", "could not be fully inspected"),
    "archive": ("berupa arsip", "is an archive"),
}
_PARTS_WORDS = {
    "encrypted": (
        "bagian yang terenkripsi atau dilindungi kata sandi",
        "encrypted or password-protected parts",
    ),
    "unscannable": (
        "bagian yang tidak dapat diperiksa sepenuhnya",
        "parts that could not be fully inspected",
    ),
    "signed": ("bagian yang bertanda tangan digital", "digitally signed parts"),
}
_SOURCE = (
    (re.compile(r"^subject$"), ("subjek", "the subject")),
    (re.compile(r"^header:(.+)$"), ("kepala surel {0}", "header {0}")),
    (re.compile(r"^attachment:(.+)$"), ("lampiran {0}", "attachment {0}")),
    (re.compile(r"^body$"), ("isi surel", "the body")),
)


def _sets(names: str) -> tuple[str, str]:
    found = re.findall(r"'([^']*)'", names) or [names]
    ids = [_SET_WORDS.get(n, (f"kelompok alamat {n}", f"the address set {n}"))[0] for n in found]
    ens = [_SET_WORDS.get(n, (f"kelompok alamat {n}", f"the address set {n}"))[1] for n in found]
    if len(ids) == 1:
        return ids[0], ens[0]
    return (
        ", ".join(ids[:-1]) + (", serta " if len(ids) > 2 else " serta ") + ids[-1],
        ", ".join(ens[:-1]) + (", and " if len(ens) > 2 else " and ") + ens[-1],
    )


def _source_words(source: str) -> tuple[str, str]:
    for pattern, (wid, wen) in _SOURCE:
        m = pattern.match(source)
        if m:
            return wid.format(*m.groups()), wen.format(*m.groups())
    return source, source


def _flags(desc: str) -> tuple[str, str]:
    """An attachment selector's description (``executable; not macro``) in words."""
    ids, ens = [], []
    for bit in (b.strip() for b in desc.split(";")):
        negated = bit.startswith("not ")
        word = bit[4:] if negated else bit
        if word in _FLAG_WORDS:
            wid, wen = _FLAG_WORDS[word]
            ids.append(("tidak " if negated else "") + wid)
            ens.append(("not: " if negated else "") + wen)
        else:
            ids.append(bit)
            ens.append(bit)
    return ", ".join(ids), ", ".join(ens)


def _detectors(per: str) -> str:
    """``nik 12, nip 0`` -> ``NIK 12``: the kinds that found something, upper case."""
    bits = []
    for item in per.split(","):
        name, _, count = item.strip().rpartition(" ")
        if count != "0":
            bits.append(f"{name.upper()} {count}")
    return ", ".join(bits) or per


# Why the inspector could not read a part, as it writes it (English), in Indonesian.
# Patterns, not a phrase book: a reason may name a file or an archive kind.
_PART_REASONS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), words)
    for pattern, words in (
        (r"^encrypted archive entr(y|ies)$", "entri arsip terenkripsi"),
        (r"^encrypted (\S+) archive$", "arsip {0} terenkripsi"),
        (r"^encrypted PDF$", "PDF terenkripsi"),
        (r"^encrypted (Office|Word) document$", "dokumen {0} terenkripsi"),
        (r"^(PGP/MIME|S/MIME) encrypted$", "terenkripsi {0}"),
        (r"^inline PGP encrypted$", "terenkripsi PGP di dalam teks"),
        (r"^(\S+) archive not opened$", "arsip {0} tidak dibuka"),
        (r"^MIME depth limit reached$", "batas kedalaman struktur MIME tercapai"),
        (r"^MIME part limit reached$", "batas jumlah bagian MIME tercapai"),
        (r"^archive depth limit reached$", "batas kedalaman arsip bersarang tercapai"),
        (r"^archive entry limit reached$", "batas jumlah entri arsip tercapai"),
        (r"^expanded bytes limit reached$", "batas ukuran hasil ekstraksi tercapai"),
        (
            r"^(?:PDF )?expansion (?:ratio )?limit reached(?: in (.+))?$",
            "batas rasio ekstraksi tercapai{at}",
        ),
        (r"^read limit reached(?: in (.+))?$", "batas baca tercapai{at}"),
        (r"^text limit reached$", "batas panjang teks tercapai"),
        (r"^examined bytes limit reached$", "batas ukuran yang diperiksa tercapai"),
        (
            r"^message larger than the examined bytes limit$",
            "surel lebih besar daripada batas ukuran yang diperiksa",
        ),
        (r"^time budget (?:exceeded|reached in PDF)$", "batas waktu pemeriksaan habis"),
        (
            r"^inspection stopped at its time budget \((.+) s\)$",
            "pemeriksaan dihentikan pada batas waktunya ({0} detik)",
        ),
        (r"^base64 data after padding$", "ada data base64 setelah akhir pengodean"),
        (r"^nesting too deep$", "susunan bersarang terlalu dalam"),
        (r"^unreadable (.+?): (.+)$", "{0} tidak dapat dibaca ({1})"),
        (r"^internal error: (.+)$", "kesalahan internal pemeriksa ({0})"),
    )
)


def part_reason_words(reason: str) -> str:
    """An inspector's reason in Indonesian; as written when it is not known."""
    for pattern, words in _PART_REASONS:
        m = pattern.match(reason.strip())
        if m:
            groups = [g or "" for g in m.groups()]
            where = f" di {groups[0]}" if groups and groups[0] else ""
            return words.format(*groups, at=where)
    return reason


def _part_reasons(listing: str) -> str:
    """``a.zip: encrypted archive entries; b.pdf: encrypted PDF`` in Indonesian."""
    out = []
    for item in listing.split("; "):
        where, sep, why = item.rpartition(": ")
        out.append(f"{where}{sep}{part_reason_words(why)}" if sep else part_reason_words(item))
    return "; ".join(out)


def finding_words(reason: str) -> tuple[str, str]:
    """One finding of the policy (``RuleResult.reasons``, written in English by the
    condition that saw it) in both languages: (Bahasa Indonesia, English).

    A reason this does not know (a future condition) is shown as written in both.
    """
    text = reason.strip()
    m = re.match(r"^not: (.*)$", text)
    if m:
        wid, wen = finding_words(m.group(1))
        return f"tidak benar bahwa {wid}", f"not so: {wen}"
    m = re.match(r"^(sender|recipient) (\S+) is not in set (.+)$", text)
    if m:
        role, sets = _ROLE[m.group(1)], _sets(m.group(3))
        return (
            f"alamat {role[0]} {m.group(2)} berada di luar {sets[0]}",
            f"the {role[1]} {m.group(2)} is outside {sets[1]}",
        )
    m = re.match(r"^(sender|recipient) (\S+) is in set (.+)$", text)
    if m:
        role, sets = _ROLE[m.group(1)], _sets(m.group(3))
        return (
            f"alamat {role[0]} {m.group(2)} termasuk {sets[0]}",
            f"the {role[1]} {m.group(2)} is within {sets[1]}",
        )
    m = re.match(r"^(sender|recipient) (\S+) (is not in|is in) domains (.+)$", text)
    if m:
        role, inside = _ROLE[m.group(1)], m.group(3) == "is in"
        return (
            f"alamat {role[0]} {m.group(2)} "
            f"{'termasuk' if inside else 'berada di luar'} domain {m.group(4)}",
            f"the {role[1]} {m.group(2)} is {'within' if inside else 'outside'} "
            f"the domains {m.group(4)}",
        )
    m = re.match(r"^(sender|recipient) (\S+) (does not match|matches) (.+)$", text)
    if m:
        role, hit = _ROLE[m.group(1)], m.group(3) == "matches"
        return (
            f"alamat {role[0]} {m.group(2)} {'cocok' if hit else 'tidak cocok'} "
            f"dengan {m.group(4)}",
            f"the {role[1]} {m.group(2)} {'matches' if hit else 'does not match'} {m.group(4)}",
        )
    m = re.match(r"^classification (none \(unlabelled\)|\S+) (is .+)$", text)
    if m:
        level = m.group(1)
        if level.startswith("none"):
            return "surel tidak bertanda klasifikasi", "the message carries no classification"
        shown = level_words(level)
        negative = re.match(r"is (not|below)", m.group(2))
        if negative:
            return (
                f"klasifikasi surel {shown} tidak memenuhi syarat aturan",
                f"the message's classification {shown} does not meet the rule's condition",
            )
        return f"surel berklasifikasi {shown}", f"the message is classified {shown}"
    m = re.match(r"^label '(.*)' \((.+)\) matches .+$", text)
    if m:
        where = _source_words(m.group(2))
        return (
            f'penanda klasifikasi "{m.group(1)}" pada {where[0]}',
            f'classification marking "{m.group(1)}" in {where[1]}',
        )
    if text.startswith("no label matches"):
        return "tidak ada penanda klasifikasi yang cocok", "no classification marking matches"
    m = re.match(r"^attachment (\S+) \((.+?)\) matches (.+)$", text)
    if m:
        what = _flags(m.group(3))
        return (
            f"lampiran {m.group(1)} (jenis {m.group(2)}): {what[0]}",
            f"attachment {m.group(1)} (type {m.group(2)}): {what[1]}",
        )
    m = re.match(r"^(encrypted|unscannable|signed): (.+)$", text)
    if m:
        wid, wen = _PARTS_WORDS[m.group(1)]
        return f"{wid}: {_part_reasons(m.group(2))}", f"{wen}: {m.group(2)}"
    m = re.match(r"^nothing is (\w+)$", text)
    if m and m.group(1) in _PARTS_WORDS:
        wid, wen = _PARTS_WORDS[m.group(1)]
        return f"tidak ada {wid}", f"no {wen}"
    m = re.match(r"^text contains (\d+) keyword\(s\) \((.+)\)$", text)
    if m:
        return (
            f"teks surel memuat {m.group(1)} kata kunci terlarang ({m.group(2)})",
            f"the text contains {m.group(1)} prohibited keyword(s) ({m.group(2)})",
        )
    m = re.match(
        r"^detectors found (\d+) distinct valid (high-confidence )?values \((.+)\), "
        r"at least (\d+)$",
        text,
    )
    if m:
        per = _detectors(m.group(3))
        return (
            f"ditemukan {m.group(1)} nomor identitas pribadi yang sah ({per}); "
            f"batasnya {m.group(4)}",
            f"{m.group(1)} valid personal identity numbers found ({per}); "
            f"the limit is {m.group(4)}",
        )
    m = re.match(r"^text matches /(.+)/: (.+)$", text)
    if m:
        return (
            f"teks surel cocok dengan pola /{m.group(1)}/: {m.group(2)}",
            f"the text matches /{m.group(1)}/: {m.group(2)}",
        )
    m = re.match(r"^header (\S+) is (present|absent)$", text)
    if m:
        there = m.group(2) == "present"
        return (
            f"kepala surel {m.group(1)} {'ada' if there else 'tidak ada'}",
            f"header {m.group(1)} is {m.group(2)}",
        )
    m = re.match(r"^header (\S+) (.+) matches /(.+)/$", text)
    if m:
        return (
            f"kepala surel {m.group(1)} {m.group(2)} cocok dengan pola /{m.group(3)}/",
            f"header {m.group(1)} {m.group(2)} matches /{m.group(3)}/",
        )
    m = re.match(r"^message size (\S+ \S+) (is|is not) (.+)$", text)
    if m:
        bounds = m.group(3).replace(" and ", " dan ")
        return (
            f"ukuran surel {m.group(1)} {'memenuhi' if m.group(2) == 'is' else 'tidak memenuhi'}"
            f" batas {bounds}",
            f"the message size {m.group(1)} {m.group(2)} {m.group(3)}",
        )
    return text, text


def _is_address_finding(reason: str) -> bool:
    return bool(re.match(r"^(not: )?(sender|recipient) \S+ ", reason.strip()))


# -- facts for the templates -------------------------------------------------------------


def _one_line(text: str, limit: int = MAX_SUBJECT) -> str:
    """One line, at most ``limit`` characters, with every other control character
    shown as an escape (``printable``): safe to put in a notice's text or Subject."""
    flat = re.sub(r"[\r\n\t\x00]+", " ", text).strip()
    flat = flat if len(flat) <= limit else flat[: limit - 1] + "…"
    return printable(flat)


def _split_clauses(clause: str | None) -> list[str]:
    """``"2.c, 3.b"`` and ``"2.c; UU 27/2022"``: items are separated by commas and
    semicolons only, so a legal basis with spaces in its name stays one item."""
    return [c.strip() for c in re.split(r"[,;]", clause or "") if c.strip()]


Descriptions = Mapping[str, Mapping[str, str]]


def _rules_words(
    names: Sequence[str],
    *,
    clauses: Mapping[str, str | None],
    fallback_descriptions: Mapping[str, str | None],
    descriptions: Descriptions | None,
    fallback_clauses: Sequence[str],
    t: Templates,
) -> list[dict[str, Any]]:
    """Each rule by its description in both languages, with its clauses cited."""
    out = []
    for name in names:
        given = dict((descriptions or {}).get(name) or {})
        plain = fallback_descriptions.get(name) or ""
        keys = _split_clauses(clauses.get(name))
        if not keys:
            keys = [k for c in fallback_clauses for k in _split_clauses(c)]
        out.append(
            {
                "name": printable(name),
                "id": printable(given.get("id") or plain),
                "en": printable(given.get("en") or plain),
                "clauses": [t.clause(k).words() for k in dict.fromkeys(keys)],
            }
        )
    return out


def _matched(
    results: Iterable[RuleResult | Mapping[str, Any]],
    names: Sequence[str],
    recipients: Sequence[str] | None,
) -> list[tuple[str, str | None, str | None, tuple[str, ...]]]:
    """(name, clause, description, reasons) of each matched result of the named rules,
    for the given recipients only when given (a per-recipient rule's reasons about
    another recipient do not explain this hold)."""
    out = []
    wanted = set(recipients) if recipients is not None else None
    for r in results:
        if isinstance(r, RuleResult):
            row = (r.name, r.clause, r.description, tuple(r.reasons), r.recipient, r.matched)
        else:
            row = (
                str(r.get("name")),
                r.get("clause"),
                r.get("description"),
                tuple(str(x) for x in r.get("reasons", []) or ()),
                r.get("recipient"),
                bool(r.get("matched", True)),
            )
        name, clause, description, reasons, recipient, matched = row
        if not matched or name not in names:
            continue
        if wanted is not None and recipient is not None and recipient not in wanted:
            continue
        out.append((name, clause, description, reasons))
    return out


def _findings(reasons: Iterable[str], *, addresses: bool = True) -> list[dict[str, str]]:
    seen: dict[str, dict[str, str]] = {}
    for reason in reasons:
        if not addresses and _is_address_finding(reason):
            continue
        wid, wen = finding_words(reason)
        seen.setdefault(wid, {"id": printable(wid), "en": printable(wen)})
    return list(seen.values())


def _advice(reasons: Sequence[str], findings: Mapping[str, Any]) -> dict[str, Any]:
    """Which advice is true for this hold, from what the rules actually saw."""
    text = " | ".join(reasons)
    attachments = findings.get("attachments") if isinstance(findings, Mapping) else None
    names: dict[str, str] = {}
    for part in attachments if isinstance(attachments, list) else []:
        # Top-level attachments only: a file inside an archive goes with its archive.
        path = str(part.get("path")) if isinstance(part, Mapping) else ""
        if isinstance(part, Mapping) and part.get("filename") and "/" not in path:
            names[path] = str(part["filename"])
    implicated = []
    for path, filename in names.items():
        if re.search(rf"(?:attachment |[:;] ){re.escape(path)}(?:[ :/;|]|$)", text):
            implicated.append(printable(_one_line(filename, 120)))
    return {
        "classified": any(re.match(r"^classification \S+ is (?!not|below)", r) for r in reasons),
        "encrypted": any(r.startswith("encrypted: ") for r in reasons),
        "unscannable": any(r.startswith("unscannable: ") for r in reasons),
        "personal_data": any(r.startswith("detectors found ") for r in reasons),
        "keywords": any(r.startswith("text contains ") for r in reasons),
        "attachments": list(dict.fromkeys(implicated)),
    }


def _common(config: NoticesConfig, retention: float | None, received: float) -> dict[str, Any]:
    days = int(retention // 86400) if retention else 0
    return {
        "officers": [printable(o) for o in config.officers] or [printable(config.sender)],
        "retention_days": days,
        "expires": moment(received + retention, config.timezone) if retention else None,
    }


def _dispositions(items: Iterable[Disposition | tuple[str, str]]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        d = item if isinstance(item, Disposition) else Disposition(item[0], item[1])
        out.append(
            {
                "address": _one_line(d.address),
                "action": d.action,
                "route": printable(d.route) if d.route else None,
                "quarantine_id": printable(d.quarantine_id) if d.quarantine_id else None,
            }
        )
    return out


def _origin(record: QuarantineRecord) -> str:
    """Where the message came from, as the MTA in front told it: enough to find the civil
    servant who sent it and to follow it in that MTA's log."""
    o = record.origin
    client = o.get("client_address") or record.client
    name = o.get("client_name", "")
    parts = [f"login {o['login']}"] if o.get("login") else []
    parts.append(f"klien/client {name} [{client}]" if name else f"klien/client [{client}]")
    if o.get("helo"):
        parts.append(f"HELO {o['helo']}")
    if o.get("queue_id"):
        parts.append(f"antrean/queue {o['queue_id']}")
    parts.append(f"via {o.get('frontend', 'smtp')}")
    return _one_line("; ".join(parts))


def _quarantine_values(
    config: NoticesConfig,
    record: QuarantineRecord,
    verdict: Verdict | None,
    t: Templates,
    *,
    others: Sequence[Disposition],
    retention: float | None,
    descriptions: Descriptions | None,
    sender_name: str,
) -> dict[str, Any]:
    results: Iterable[RuleResult | Mapping[str, Any]]
    if verdict is not None:
        results = verdict.rules
    else:
        stored = record.findings.get("rules")
        results = [r for r in stored if isinstance(r, Mapping)] if isinstance(stored, list) else []
    matched = _matched(results, record.rules, record.recipients)
    clauses = {name: clause for name, clause, _, _ in reversed(matched)}
    plain = {name: desc for name, _, desc, _ in reversed(matched)}
    reasons = list(dict.fromkeys(x for *_, rs in matched for x in rs))
    held = set(record.recipients)
    return {
        "id": printable(record.id),
        "queue_id": printable(record.origin.get("queue_id") or record.queue_id or "-"),
        "subject": _one_line(record.subject),
        "sender": _one_line(record.sender or "<>"),
        "sender_name": _one_line(sender_name, 120),
        "client": printable(record.client),
        "origin": _origin(record),
        "size": f"{record.size:,}".replace(",", "."),
        "received": moment(record.received_at, config.timezone),
        "level": level_words(record.classification),
        "held": [_one_line(a) for a in record.recipients],
        "others": _dispositions(o for o in others if o.address not in held),
        "rules": _rules_words(
            record.rules,
            clauses=clauses,
            fallback_descriptions=plain,
            descriptions=descriptions,
            fallback_clauses=record.clauses,
            t=t,
        ),
        "findings": _findings(reasons),
        "sender_findings": _findings(reasons, addresses=False),
        "advice": _advice(reasons, record.findings),
        **_common(config, retention, record.received_at),
    }


def _compose(
    config: NoticesConfig, to: Sequence[str], subject: str, body: str, now: float | None
) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = formataddr((FROM_NAME, config.sender))
    msg["To"] = ", ".join(to)
    msg["Subject"] = _one_line(subject, 900)
    msg["Date"] = formatdate(now if now is not None else time.time(), localtime=False)
    msg["Message-ID"] = make_msgid("notice", domain=_msgid_domain(config))
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(body, charset="utf-8", cte="quoted-printable")
    return msg.as_bytes()


def _msgid_domain(config: NoticesConfig) -> str:
    # Always given: without a domain make_msgid asks DNS for this host's name.
    return domain_of(config.sender) or "localhost"


def _date(ts: float) -> str:
    return formatdate(ts, localtime=False)


# -- the builders ------------------------------------------------------------------------


def quarantine_notice(
    config: NoticesConfig,
    record: QuarantineRecord,
    *,
    to: str | None = None,
    verdict: Verdict | None = None,
    templates: Templates | None = None,
    now: float | None = None,
    others: Sequence[Disposition] = (),
    sender_name: str = "",
    retention: float | None = None,
    descriptions: Descriptions | None = None,
) -> bytes:
    """Tell the sender what was held and why, where the rest went, what to do, how long
    it is kept and who decides; ``to`` defaults to the sender.

    ``others`` are the message's other recipients and what became of them;
    ``sender_name`` the display name to address the sender by; ``descriptions`` the
    rules' descriptions per language (``{rule: {"id": ..., "en": ...}}``).
    Check ``should_notify_sender`` and the rate limit first: this builds, never decides.
    """
    subject, body = _render_hold(
        "quarantine_notice",
        config,
        record,
        verdict=verdict,
        templates=templates,
        others=others,
        retention=retention,
        descriptions=descriptions,
        sender_name=sender_name,
    )
    return _compose(config, [to or record.sender], subject, body, now)


def _render_hold(
    name: str,
    config: NoticesConfig,
    record: QuarantineRecord,
    *,
    verdict: Verdict | None,
    templates: Templates | None,
    others: Sequence[Disposition],
    retention: float | None,
    descriptions: Descriptions | None,
    sender_name: str,
) -> tuple[str, str]:
    """Subject and body of a notice about one hold: the sender's and the officers' say
    the same things, to different readers."""
    t = _templates(config, templates)
    values = _quarantine_values(
        config,
        record,
        verdict,
        t,
        others=others,
        retention=retention,
        descriptions=descriptions,
        sender_name=sender_name,
    )
    return t.render(name, values)


def officer_alert(
    config: NoticesConfig,
    record: QuarantineRecord,
    *,
    verdict: Verdict | None = None,
    templates: Templates | None = None,
    now: float | None = None,
    others: Sequence[Disposition] = (),
    sender_name: str = "",
    retention: float | None = None,
    descriptions: Descriptions | None = None,
    to: Sequence[str] | None = None,
) -> bytes | None:
    """The compliance officers' alert for a held message (or to ``to``, addresses a
    rule's ``notify`` names); None when there is nobody to send it to."""
    rcpts = list(to) if to is not None else list(config.officers)
    if not rcpts:
        return None
    subject, body = _render_hold(
        "officer_alert",
        config,
        record,
        verdict=verdict,
        templates=templates,
        others=others,
        retention=retention,
        descriptions=descriptions,
        sender_name=sender_name,
    )
    return _compose(config, rcpts, subject, body, now)


def _verdict_values(
    config: NoticesConfig,
    verdict: Verdict,
    names: Sequence[str],
    t: Templates,
    descriptions: Descriptions | None,
) -> dict[str, Any]:
    """The rules (with their clauses in words) and the findings behind them."""
    matched = _matched(verdict.rules, names, None)
    clauses = {name: clause for name, clause, _, _ in reversed(matched)}
    plain = {name: desc for name, _, desc, _ in reversed(matched)}
    reasons = list(dict.fromkeys(x for *_, rs in matched for x in rs))
    return {
        "level": level_words(verdict.classification),
        "rules": _rules_words(
            list(names),
            clauses=clauses,
            fallback_descriptions=plain,
            descriptions=descriptions,
            fallback_clauses=(),
            t=t,
        ),
        "findings": _findings(reasons),
    }


def _message_values(
    config: NoticesConfig,
    *,
    queue_id: str,
    sender: str,
    subject: str,
    received_at: float | None,
    now: float | None,
) -> dict[str, Any]:
    when = received_at if received_at is not None else (now if now is not None else time.time())
    return {
        "queue_id": printable(queue_id or "-"),
        "sender": _one_line(sender or "<>"),
        "subject": _one_line(subject),
        "received": moment(when, config.timezone),
        "officers": [printable(o) for o in config.officers] or [printable(config.sender)],
    }


def audit_alert(
    config: NoticesConfig,
    verdict: Verdict,
    *,
    queue_id: str,
    sender: str,
    subject: str,
    recipients: Sequence[str] = (),
    rules: Sequence[str] | None = None,
    templates: Templates | None = None,
    now: float | None = None,
    outcomes: Sequence[Disposition] = (),
    received_at: float | None = None,
    descriptions: Descriptions | None = None,
) -> bytes | None:
    """Tell the officers that audit-mode rules matched a delivered message.

    ``rules`` defaults to every rule in ``verdict.audit``; ``outcomes`` says where each
    recipient went (else ``recipients``, or the verdict's, are listed as delivered).
    None when there is no rule to tell about or no officer is configured.
    """
    names = list(verdict.audit if rules is None else rules)
    if not names or not config.officers:
        return None
    t = _templates(config, templates)
    if not outcomes:
        outcomes = [
            Disposition(a, "delivered")
            for a in (recipients or [r.address for r in verdict.recipients])
        ]
    values = {
        **_message_values(
            config,
            queue_id=queue_id,
            sender=sender,
            subject=subject,
            received_at=received_at,
            now=now,
        ),
        "outcomes": _dispositions(outcomes),
        **_verdict_values(config, verdict, names, t, descriptions),
    }
    title, body = t.render("audit_alert", values)
    return _compose(config, config.officers, title, body, now)


def rule_alert(
    config: NoticesConfig,
    verdict: Verdict,
    *,
    to: Sequence[str],
    rules: Sequence[str],
    queue_id: str,
    sender: str,
    subject: str,
    outcomes: Sequence[Disposition | tuple[str, str]],
    templates: Templates | None = None,
    now: float | None = None,
    received_at: float | None = None,
    descriptions: Descriptions | None = None,
) -> bytes | None:
    """The notice a rule's ``notify`` asks for when no quarantine notice covers it:
    which rules matched and what became of each recipient."""
    if not to or not rules:
        return None
    t = _templates(config, templates)
    values = {
        **_message_values(
            config,
            queue_id=queue_id,
            sender=sender,
            subject=subject,
            received_at=received_at,
            now=now,
        ),
        "outcomes": _dispositions(outcomes),
        **_verdict_values(config, verdict, rules, t, descriptions),
    }
    title, body = t.render("rule_alert", values)
    return _compose(config, to, title, body, now)


def _header_block(original: bytes) -> bytes:
    """The original top-level headers, CRLF-terminated, without the body."""
    end = len(original)
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = original.find(sep)
        if 0 <= i < end:
            end = i
    lines = re.split(rb"\r\n|\n|\r", original[:end])
    return b"".join(line + b"\r\n" for line in lines if line)


def _ascii(text: str) -> str:
    return _one_line(text, 900).encode("ascii", "replace").decode("ascii")


def _failed_entry(item: RecipientVerdict | FailedRecipient) -> FailedRecipient:
    if isinstance(item, FailedRecipient):
        return item
    text = item.reject_text or "rejected by policy"
    m = re.match(r"\s*(?:(\d{3})\s+)?([245]\.\d{1,3}\.\d{1,3})\s", text + " ")
    status = m.group(2) if m else "5.7.1"
    if m and m.group(1):
        diagnostic = text.strip()
    elif m:
        diagnostic = f"550 {text.strip()}"
    else:
        diagnostic = f"550 {status} {text.strip()}"
    return FailedRecipient(item.address, status, diagnostic)


def dsn(
    config: NoticesConfig,
    *,
    original: bytes,
    sender: str,
    failed: Sequence[RecipientVerdict | FailedRecipient],
    reporting_mta: str,
    queue_id: str = "",
    arrival: float | None = None,
    delivered: Sequence[str | Disposition] = (),
    subject: str | None = None,
    templates: Templates | None = None,
    now: float | None = None,
    sender_name: str = "",
    delayed_until: float | None = None,
) -> bytes:
    """An RFC 3464 delivery status notification for the recipients in ``failed``.

    multipart/report; report-type=delivery-status with a human part (both languages),
    a message/delivery-status part with one block per failed recipient, and the
    original headers as text/rfc822-headers. ``delivered`` are the other recipients
    (addresses, or ``Disposition`` to say by which way each went). With
    ``delayed_until`` it is a delay notice instead (``Action: delayed``, RFC 3464
    section 2.3.3): the gateway keeps trying until then.
    """
    t = _templates(config, templates)
    entries = [_failed_entry(f) for f in failed]
    headers = _header_block(original)
    if subject is None:
        m = re.search(rb"(?im)^subject:[ \t]*(.*(?:\r?\n[ \t].*)*)", headers)
        subject = decode_words(m.group(1).decode("utf-8", "replace")) if m else ""
    when = now if now is not None else time.time()
    others = [d if isinstance(d, Disposition) else Disposition(d, "delivered") for d in delivered]
    values = {
        **_message_values(
            config,
            queue_id=queue_id,
            sender=sender,
            subject=subject,
            received_at=arrival,
            now=when,
        ),
        "sender_name": _one_line(sender_name, 120),
        "failed": [
            {"address": _one_line(e.address), "diagnostic": _one_line(e.diagnostic or e.status)}
            for e in entries
        ],
        "others": _dispositions(others),
        "delayed": delayed_until is not None,
        "until": moment(delayed_until, config.timezone) if delayed_until is not None else None,
    }
    title, body = t.render("dsn", values)

    per_message = [f"Reporting-MTA: dns; {_ascii(reporting_mta)}"]
    if queue_id:
        per_message.append(f"X-Milter-Queue-Id: {_ascii(queue_id)}")
    per_message.append(f"Arrival-Date: {_date(arrival if arrival is not None else when)}")
    blocks = ["\r\n".join(per_message)]
    for e in entries:
        blocks.append(
            "\r\n".join(
                [
                    f"Final-Recipient: rfc822; {_ascii(e.address)}",
                    "Action: " + ("delayed" if delayed_until is not None else "failed"),
                    f"Status: {e.status}",
                    f"Diagnostic-Code: smtp; {_ascii(e.diagnostic or e.status)}",
                    f"Last-Attempt-Date: {_date(when)}",
                    *(
                        [f"Will-Retry-Until: {_date(delayed_until)}"]
                        if delayed_until is not None
                        else []
                    ),
                ]
            )
        )
    status_body = ("\r\n\r\n".join(blocks) + "\r\n").encode("ascii")

    report = EmailMessage(policy=SMTP)
    report["From"] = formataddr((FROM_NAME, config.sender))
    report["To"] = sender
    report["Subject"] = _one_line(title, 900)
    report["Date"] = _date(when)
    report["Message-ID"] = make_msgid("dsn", domain=_msgid_domain(config))
    report["Auto-Submitted"] = "auto-generated"
    report["X-Auto-Response-Suppress"] = "All"
    boundary = "=_report_" + secrets.token_hex(12)
    human = EmailMessage(policy=SMTP)
    human.set_content(body, charset="utf-8", cte="quoted-printable")
    del human["MIME-Version"]
    b = boundary.encode("ascii")
    eightbit = not headers.isascii()
    parts = [
        human.as_bytes(),
        b"Content-Type: message/delivery-status\r\n\r\n" + status_body,
        b"Content-Type: text/rfc822-headers\r\n"
        + (b"Content-Transfer-Encoding: 8bit\r\n" if eightbit else b"")
        + b"\r\n"
        + headers,
    ]
    out = (
        report.as_bytes().rstrip(b"\r\n")
        + b"\r\nMIME-Version: 1.0\r\n"
        + b"Content-Type: multipart/report; report-type=delivery-status;\r\n"
        + b' boundary="'
        + b
        + b'"\r\n\r\n'
    )
    for p in parts:
        out += b"--" + b + b"\r\n" + p.rstrip(b"\r\n") + b"\r\n"
    return out + b"--" + b + b"--\r\n"


# -- the load-time check -----------------------------------------------------------------

_SAMPLE_CONFIG = NoticesConfig(officers=("kepatuhan@jakarta.go.id",))
_SAMPLE_RECORD = QuarantineRecord(
    id="SAMPLE000000",
    received_at=1_796_200_318.0,
    client="10.0.0.1",
    sender="contoh@jakarta.go.id",
    recipients=("luar@example.org",),
    subject="Contoh",
    size=1000,
    classification="RAHASIA",
    rules=("contoh",),
    clauses=("2.c; UU 27/2022",),
    findings={
        "attachments": [{"path": "2", "filename": "a.zip"}],
        "rules": [
            {
                "name": "contoh",
                "matched": True,
                "clause": "2.c; UU 27/2022",
                "reasons": [
                    "classification RAHASIA is RAHASIA",
                    "encrypted: 2: zip",
                    "unscannable: 2: zip",
                    "detectors found 10 distinct valid values (nik 10), at least 10",
                    "text contains 1 keyword(s) (hoaks: hoaks)",
                    "recipient luar@example.org is not in set 'internal'",
                ],
                "recipient": "luar@example.org",
            }
        ],
    },
    origin={"login": "contoh", "helo": "pc", "queue_id": "Q1", "frontend": "milter"},
)
_SAMPLE_OTHERS = (
    Disposition("a@jakarta.go.id", "delivered", "upstream"),
    Disposition("b@sanapati.net", "delivered", "sanapati"),
    Disposition("c@example.org", "delivered", "lain"),
    Disposition("d@example.org", "quarantined", None, "SAMPLE000001"),
    Disposition("e@example.org", "rejected"),
    Disposition("f@example.org", "refused"),
    Disposition("g@example.org", "deferred"),
)


def _self_check(t: Templates) -> None:
    """Render every template once on sample data that takes most branches, so a
    misspelt name fails when the templates are loaded, not when a notice is due."""
    cfg, rec = _SAMPLE_CONFIG, _SAMPLE_RECORD
    verdict = Verdict(
        classification="RAHASIA",
        recipients=(RecipientVerdict("luar@example.org", "quarantine", rules=("contoh",)),),
        rules=(
            RuleResult(
                "contoh",
                True,
                "audit",
                clause="2.h",
                reasons=tuple(rec.findings["rules"][0]["reasons"]),
            ),
        ),
        audit=("contoh",),
    )
    for name_given in ("Contoh", ""):
        common = {"templates": t, "others": _SAMPLE_OTHERS, "sender_name": name_given}
        quarantine_notice(cfg, rec, retention=30 * 86400.0, **common)  # type: ignore[arg-type]
        quarantine_notice(cfg, rec, retention=None, **common)  # type: ignore[arg-type]
        officer_alert(cfg, rec, retention=30 * 86400.0, **common)  # type: ignore[arg-type]
        dsn(
            cfg,
            original=b"Subject: Contoh\r\n\r\nisi\r\n",
            sender=rec.sender,
            failed=[FailedRecipient("e@example.org", "5.7.1", "550 5.7.1 ditolak")],
            reporting_mta="gw.example",
            delivered=list(_SAMPLE_OTHERS),
            templates=t,
            sender_name=name_given,
        )
    values = {"queue_id": "Q1", "sender": rec.sender, "subject": "", "templates": t}
    audit_alert(cfg, verdict, outcomes=_SAMPLE_OTHERS, **values)  # type: ignore[arg-type]
    rule_alert(
        cfg,
        verdict,
        to=["a@jakarta.go.id"],
        rules=["contoh"],
        outcomes=_SAMPLE_OTHERS,
        **values,  # type: ignore[arg-type]
    )


def weekly_report(
    config: NoticesConfig,
    to: Sequence[str],
    *,
    period: tuple[float, float],
    agencies: Sequence[Mapping[str, Any]],
    templates: Templates | None = None,
    now: float | None = None,
) -> bytes:
    """The weekly digest of clause 3.b for a head of agency or the officers.

    ``agencies`` holds one mapping per agency: ``agency`` (a domain, or ``*`` for all
    senders), ``held``, ``released``, ``deleted``, ``rejected`` and the
    ``top_rules``/``top_clauses``/``top_destinations`` lists of (name, count). Every
    value printed goes through ``printable`` (destinations come from envelopes).
    """
    t = _templates(config, templates)
    zone = _zone(config.timezone)
    first = dt.datetime.fromtimestamp(period[0], zone)
    last = dt.datetime.fromtimestamp(period[1] - 1, zone)
    rows = []
    for a in agencies:
        name = str(a["agency"])
        everyone = name == "*"
        rows.append(
            {
                **a,
                "title_id": "Semua pengirim" if everyone else f"Dinas {name}",
                "title_en": "All senders" if everyone else f"Agency {name}",
            }
        )
    values = {
        "period": {
            "id": " - ".join(f"{d.day} {_MONTHS_ID[d.month - 1]} {d.year}" for d in (first, last)),
            "en": " - ".join(f"{d.day} {d:%B %Y}" for d in (first, last)),
        },
        "agencies": rows,
    }
    subject, body = t.render("weekly_report", values)
    return _compose(config, to, subject, body, now)
