"""Notices people understand: to the sender, to the compliance officers, and DSNs.

Every builder returns complete RFC 5322 message bytes; the caller sends them with a
null envelope sender (``<>``) through the upstream, so a notice can never cause
another notice. Texts come from template files (``templates/`` here, overridden file
by file by the ``notices.templates`` directory of the gateway configuration), written
Bahasa Indonesia first, English second, and filled with ``string.Template``
placeholders (``$subject``, ``$id``, ...): an administrator can reword them without
touching code, and a placeholder they misspell shows up as written instead of failing.

Every value taken from a message (subject, sender, recipients, file names in the
reasons, the client's HELO and login) goes through ``printable``: an officer reads
alerts in a terminal mail reader as often as not, and an ESC sequence or a bidi
override in a subject must show as ``\x1b`` or ``\u202e``, not act.

No backscatter: ``should_notify_sender`` is False for the null sender and for any
sender outside the internal domains, whose address may well be forged.
"""

from __future__ import annotations

import re
import secrets
import string
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr, formatdate, make_msgid
from pathlib import Path

from milter.config import NoticesConfig
from milter.envelope import domain_of
from milter.mimetree import decode_words
from milter.policy.verdict import RecipientVerdict, RuleResult, Verdict
from milter.quarantine.store import QuarantineRecord
from milter.text import printable

SHIPPED = Path(__file__).with_name("templates")
TEMPLATE_NAMES = ("quarantine_notice", "officer_alert", "audit_alert", "rule_alert", "dsn")
FROM_NAME = "Gateway Surel Pemprov DKI Jakarta"
MAX_SUBJECT = 200

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
class Templates:
    """Notice texts and the SE 79/SE/2019 clauses in plain words, in both languages."""

    texts: Mapping[str, str]
    clauses: Mapping[str, tuple[str, str]]

    @classmethod
    def load(cls, override_dir: str | None = None) -> Templates:
        """The shipped templates, each replaced by a same-named file in ``override_dir``."""
        texts = {}
        for name in TEMPLATE_NAMES:
            texts[name] = _read(name + ".txt", override_dir)
        clauses: dict[str, tuple[str, str]] = {}
        for line in _read("clauses.tsv", override_dir).splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 3:
                raise NoticeError(f"clauses.tsv: expected clause<TAB>id<TAB>en: {line!r}")
            clauses[fields[0].strip()] = (fields[1].strip(), fields[2].strip())
        return cls(texts, clauses)

    def render(self, name: str, values: Mapping[str, str]) -> tuple[str, str]:
        """(subject, body) of template ``name``; its first line is ``Subject: ...``."""
        text = string.Template(self.texts[name]).safe_substitute(values)
        first, _, body = text.partition("\n")
        if not first.lower().startswith("subject:"):
            raise NoticeError(f"template {name}: the first line must be 'Subject: ...'")
        return first.split(":", 1)[1].strip(), body.lstrip("\n")

    def clause_words(self, clause: str) -> tuple[str, str]:
        """One clause ("2.c") in plain words (id, en); an unknown clause as written."""
        return self.clauses.get(clause.strip(), (clause, clause))


def _read(filename: str, override_dir: str | None) -> str:
    for folder in ([Path(override_dir)] if override_dir else []) + [SHIPPED]:
        path = folder / filename
        if path.is_file():
            try:
                return path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise NoticeError(f"{path}: {exc}") from None
    raise NoticeError(f"template {filename} not found")


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
    """At most ``limit_per_hour`` notices per key (sender) in any sliding hour.

    A sender whose mail is held a hundred times in a burst gets a handful of notices,
    not a hundred; the officers' alerts are not limited by it.
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


# -- text pieces -------------------------------------------------------------------------


def _one_line(text: str, limit: int = MAX_SUBJECT) -> str:
    """One line, at most ``limit`` characters, with every other control character
    shown as an escape (``printable``): safe to put in a notice's text or Subject."""
    flat = re.sub(r"[\r\n\t\x00]+", " ", text).strip()
    flat = flat if len(flat) <= limit else flat[: limit - 1] + "…"
    return printable(flat)


def _bullets(items: Iterable[str]) -> str:
    """One ``  - item`` line per item; each item is message text, shown ``printable``."""
    lines = [f"  - {printable(i)}" for i in items]
    return "\n".join(lines) if lines else "  -"


def _split_clauses(clause: str | None) -> list[str]:
    return [c for c in re.split(r"[,;\s]+", clause or "") if c]


def _rule_lines(
    rules: Sequence[str],
    clauses_by_rule: Mapping[str, str | None],
    descriptions: Mapping[str, str | None],
    fallback_clauses: Sequence[str],
    templates: Templates,
) -> tuple[str, str]:
    """The rules in words, once in each language."""
    ids: list[str] = []
    ens: list[str] = []
    for rule in rules or ("(tidak disebutkan / not named)",):
        clause_list = _split_clauses(clauses_by_rule.get(rule)) or list(fallback_clauses)
        desc = descriptions.get(rule)
        head = printable(f"{rule}" + (f": {desc}" if desc else ""))
        ids.append(head)
        ens.append(head)
        for c in clause_list:
            words_id, words_en = templates.clause_words(c)
            ids.append(f"    butir {c}: {words_id}")
            ens.append(f"    clause {c}: {words_en}")
    return "\n".join(f"  - {x}" if not x.startswith("    ") else x for x in ids), "\n".join(
        f"  - {x}" if not x.startswith("    ") else x for x in ens
    )


def _rule_info(
    verdict: Verdict | None, names: Sequence[str]
) -> tuple[dict[str, str | None], dict[str, str | None], list[str]]:
    clauses: dict[str, str | None] = {}
    descriptions: dict[str, str | None] = {}
    reasons: list[str] = []
    if verdict is None:
        return clauses, descriptions, reasons
    for r in verdict.rules:
        if r.matched and r.name in names:
            clauses.setdefault(r.name, r.clause)
            descriptions.setdefault(r.name, r.description)
            for reason in r.reasons:
                line = f"{r.name}: {reason}"
                if line not in reasons:
                    reasons.append(line)
    return clauses, descriptions, reasons


def _reasons_from_findings(findings: Mapping[str, object]) -> list[str]:
    """Reasons as the pipeline's findings summary keeps them (``rules[].reasons``)."""
    out = []
    rules = findings.get("rules")
    for rule in rules if isinstance(rules, list) else []:
        if isinstance(rule, Mapping):
            for reason in rule.get("reasons", []) or []:
                out.append(f"{rule.get('name')}: {reason}")
    return out


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
    config: NoticesConfig, record: QuarantineRecord, verdict: Verdict | None, t: Templates
) -> dict[str, str]:
    clauses, descriptions, reasons = _rule_info(verdict, record.rules)
    reasons = reasons or _reasons_from_findings(record.findings)
    rules_id, rules_en = _rule_lines(record.rules, clauses, descriptions, record.clauses, t)
    return {
        "id": record.id,
        "subject": _one_line(record.subject) or "(tanpa subjek / no subject)",
        "sender": printable(record.sender or "<>"),
        "client": printable(record.client),
        "origin": _origin(record),
        "size": str(record.size),
        "date": _date(record.received_at),
        "classification": printable(record.classification or "-"),
        "recipients": _bullets(record.recipients),
        "rules_id": rules_id,
        "rules_en": rules_en,
        "reasons": _bullets(reasons),
        "officers": ", ".join(config.officers) or config.sender,
    }


def quarantine_notice(
    config: NoticesConfig,
    record: QuarantineRecord,
    *,
    to: str | None = None,
    verdict: Verdict | None = None,
    templates: Templates | None = None,
    now: float | None = None,
) -> bytes:
    """Tell the sender what was held, why, and what to do; ``to`` defaults to the sender.

    Check ``should_notify_sender`` and the rate limit first: this builds, never decides.
    """
    t = _templates(config, templates)
    subject, body = t.render("quarantine_notice", _quarantine_values(config, record, verdict, t))
    return _compose(config, [to or record.sender], subject, body, now)


def officer_alert(
    config: NoticesConfig,
    record: QuarantineRecord,
    *,
    verdict: Verdict | None = None,
    templates: Templates | None = None,
    now: float | None = None,
) -> bytes | None:
    """The compliance officers' alert for a held message; None when none are configured."""
    if not config.officers:
        return None
    t = _templates(config, templates)
    subject, body = t.render("officer_alert", _quarantine_values(config, record, verdict, t))
    return _compose(config, config.officers, subject, body, now)


def _rules_values(verdict: Verdict, names: Sequence[str], t: Templates) -> dict[str, str]:
    """The rules (with their clauses in plain words) and the findings behind them."""
    matched: dict[str, RuleResult] = {}
    for r in verdict.rules:
        if r.matched and r.name in names:
            matched.setdefault(r.name, r)
    clauses = {n: (matched[n].clause if n in matched else None) for n in names}
    descriptions = {n: (matched[n].description if n in matched else None) for n in names}
    reasons = [f"{r.name}: {x}" for r in matched.values() for x in r.reasons]
    rules_id, rules_en = _rule_lines(list(names), clauses, descriptions, (), t)
    return {
        "rule_names": printable(", ".join(names)),
        "classification": printable(verdict.classification or "-"),
        "rules_id": rules_id,
        "rules_en": rules_en,
        "reasons": _bullets(reasons),
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
) -> bytes | None:
    """Tell the officers that audit-mode rules matched a delivered message.

    ``rules`` defaults to every rule in ``verdict.audit``. None when there is no rule
    to tell about or no officer is configured.
    """
    names = list(verdict.audit if rules is None else rules)
    if not names or not config.officers:
        return None
    t = _templates(config, templates)
    values = {
        "queue_id": queue_id,
        "sender": printable(sender or "<>"),
        "subject": _one_line(subject) or "(tanpa subjek / no subject)",
        "recipients": _bullets(recipients or [r.address for r in verdict.recipients]),
        **_rules_values(verdict, names, t),
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
    outcomes: Sequence[tuple[str, str]],
    templates: Templates | None = None,
    now: float | None = None,
) -> bytes | None:
    """The notice a rule's ``notify`` asks for when no quarantine notice covers it:
    which rules matched and what became of each recipient (``(address, outcome)``)."""
    if not to or not rules:
        return None
    t = _templates(config, templates)
    values = {
        "queue_id": queue_id,
        "sender": printable(sender or "<>"),
        "subject": _one_line(subject) or "(tanpa subjek / no subject)",
        "outcomes": _bullets(f"{a}: {o}" for a, o in outcomes),
        **_rules_values(verdict, rules, t),
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
    delivered: Sequence[str] = (),
    subject: str | None = None,
    templates: Templates | None = None,
    now: float | None = None,
) -> bytes:
    """An RFC 3464 delivery status notification for the recipients in ``failed``.

    multipart/report; report-type=delivery-status with a human part (both languages),
    a message/delivery-status part with one block per failed recipient, and the
    original headers as text/rfc822-headers.
    """
    t = _templates(config, templates)
    entries = [_failed_entry(f) for f in failed]
    headers = _header_block(original)
    if subject is None:
        m = re.search(rb"(?im)^subject:[ \t]*(.*(?:\r?\n[ \t].*)*)", headers)
        subject = decode_words(m.group(1).decode("utf-8", "replace")) if m else ""
    human_failed = _bullets(f"{e.address}: {_one_line(e.diagnostic or e.status)}" for e in entries)
    values = {
        "subject": _one_line(subject) or "(tanpa subjek / no subject)",
        "failed": human_failed,
        "delivered_id": (
            "Surel Anda telah dikirim kepada:\n" + _bullets(delivered) if delivered else ""
        ),
        "delivered_en": ("It was delivered to:\n" + _bullets(delivered) if delivered else ""),
        "queue_id": queue_id or "-",
        "officers": ", ".join(config.officers) or config.sender,
    }
    title, body = t.render("dsn", values)
    when = now if now is not None else time.time()

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
                    "Action: failed",
                    f"Status: {e.status}",
                    f"Diagnostic-Code: smtp; {_ascii(e.diagnostic or e.status)}",
                    f"Last-Attempt-Date: {_date(when)}",
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
