"""What the message page shows of a held message, computed from its record and bytes.

Everything here is text written by the sender; it leaves as plain ``str`` (escaped by
the templates) or as ``Markup`` built only from escaped pieces (the highlights).
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from markupsafe import Markup, escape

from milter.quarantine.store import QuarantineRecord
from milter.review.htmlsafe import html_text, inert_html
from milter.text import printable

MAX_BODY = 256 * 1024  # characters of body text shown; the download has the rest


@dataclass(frozen=True)
class PartView:
    path: str
    filename: str
    declared_type: str
    true_type: str
    size: int
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class MailView:
    headers: list[tuple[str, str]] = field(default_factory=list)
    parts: list[PartView] = field(default_factory=list)
    text: str = ""
    has_html: bool = False
    truncated: bool = False


def match_terms(record: QuarantineRecord) -> list[str]:
    """The text that made the inspector flag the message: the markings it read."""
    terms: set[str] = set()
    for label in record.findings.get("labels", ()) or ():
        if isinstance(label, Mapping) and label.get("raw"):
            raw = str(label["raw"]).strip()
            if 2 <= len(raw) <= 200:
                terms.add(raw)
    return sorted(terms, key=len, reverse=True)


def highlight(text: str, terms: Sequence[str]) -> Markup:
    """``text`` escaped, with each occurrence of a term in ``<mark>``; line breaks stay
    line breaks (every other control character is shown as its escape)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    shown = "\n".join(printable(line) for line in lines)
    if not terms:
        return Markup(escape(shown))
    pattern = re.compile("|".join(re.escape(printable(t)) for t in terms), re.IGNORECASE)
    out: list[str] = []
    pos = 0
    for m in pattern.finditer(shown):
        out.append(str(escape(shown[pos : m.start()])))
        out.append(f"<mark>{escape(m.group())}</mark>")
        pos = m.end()
    out.append(str(escape(shown[pos:])))
    return Markup("".join(out))


def _parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def _header_text(value: Any) -> str:
    try:
        return str(value)
    except (ValueError, TypeError, IndexError, AttributeError):
        return repr(value)


def _payload_text(part: EmailMessage) -> str:
    try:
        content = part.get_content()
    except (LookupError, ValueError, AssertionError, TypeError):
        raw = part.get_payload(decode=True)
        content = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
    return content if isinstance(content, str) else ""


def _true_types(record: QuarantineRecord) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for a in record.findings.get("attachments", ()) or ():
        if isinstance(a, Mapping):
            for key in (a.get("path"), a.get("filename")):
                if key:
                    out.setdefault(str(key), a)
    return out


def _sections(part: EmailMessage, prefix: str = "") -> Iterator[tuple[str, EmailMessage]]:
    """The leaf parts with their section numbers, numbered as the inspector numbers
    them (``1`` for a single part, ``1.2`` for the second part of the first), so that
    an unnamed body finds its findings too."""
    subs = part.get_payload() if part.is_multipart() else None
    if not isinstance(subs, list):
        yield prefix or "1", part
        return
    for i, sub in enumerate(subs, 1):
        if isinstance(sub, EmailMessage):
            yield from _sections(sub, f"{prefix}.{i}" if prefix else str(i))


def _parts(msg: EmailMessage, record: QuarantineRecord) -> list[PartView]:
    inspected = _true_types(record)
    views = []
    for section, part in _sections(msg):
        name = part.get_filename() or ""
        payload = part.get_payload(decode=True)
        size = len(payload) if isinstance(payload, bytes) else 0
        found = inspected.get(name) if name else inspected.get(section)
        views.append(
            PartView(
                path=name or section,
                filename=name,
                declared_type=part.get_content_type(),
                true_type=str(found.get("true_type", "")) if found else "",
                size=size,
                flags=tuple(str(f) for f in found.get("flags", ())) if found else (),
            )
        )
    # Archive members and embedded files the inspector saw but the MIME tree hides.
    seen = {v.filename for v in views if v.filename}
    for key, a in inspected.items():
        if key == a.get("path") and "/" in key and a.get("filename") not in seen:
            views.append(
                PartView(
                    path=key,
                    filename=str(a.get("filename") or ""),
                    declared_type=str(a.get("declared_type", "")),
                    true_type=str(a.get("true_type", "")),
                    size=int(a.get("size", 0) or 0),
                    flags=tuple(str(f) for f in a.get("flags", ())),
                )
            )
    return views


def _first(msg: EmailMessage, subtype: str) -> EmailMessage | None:
    for part in msg.walk():
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        if part.get_content_type() == f"text/{subtype}":
            return part
    return None


def mail_view(record: QuarantineRecord, data: bytes) -> MailView:
    msg = _parse(data)
    headers = [(str(k), _header_text(v)) for k, v in msg.items()]
    plain = _first(msg, "plain")
    html_part = _first(msg, "html")
    if plain is not None:
        text = _payload_text(plain)
    elif html_part is not None:
        text = html_text(_payload_text(html_part))
    else:
        text = ""
    truncated = len(text) > MAX_BODY
    return MailView(
        headers=headers,
        parts=_parts(msg, record),
        text=text[:MAX_BODY],
        has_html=html_part is not None,
        truncated=truncated,
    )


def frame_html(data: bytes) -> str:
    """The inert HTML body for the sandboxed frame ("" when there is none)."""
    part = _first(_parse(data), "html")
    if part is None:
        return ""
    body = inert_html(_payload_text(part)[: 4 * MAX_BODY])
    return (
        '<!doctype html><html><head><meta charset="utf-8"></head><body>' + body + "</body></html>"
    )


def joined(values: Iterable[str]) -> str:
    return ", ".join(values)
