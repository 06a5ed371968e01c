"""MIME helpers: headers, names, payloads and charsets, decoded defensively.

Messages are parsed with the ``compat32`` policy: on a 5 KB message it costs a tenth
of ``policy.default`` and never decodes a part nobody looks at. The price is that
decoding is ours to do, so every helper here accepts any garbage (unknown charsets,
broken RFC 2047 words, 8-bit bytes smuggled as surrogates) and returns text.
"""

from __future__ import annotations

import binascii
import contextlib
import email.header
import html
import quopri
import re
from email.errors import HeaderParseError
from email.message import Message

_WS = re.compile(r"\s+")
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


def clean(text: str) -> str:
    """Text safe to print and serialise: 8-bit bytes smuggled as surrogates re-decoded."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("cp1252", "replace").encode("utf-8", "replace").decode("utf-8")
    return text


def decode_header_value(value: object) -> str:
    """An RFC 2047 header value as one unfolded line of text; never raises."""
    if isinstance(value, email.header.Header):
        try:
            text = str(value)
        except (LookupError, UnicodeError):
            text = value.encode()
        return _WS.sub(" ", clean(text)).strip()
    text = value if isinstance(value, str) else str(value)
    text = clean(text)
    if "=?" in text and _ENCODED_WORD.search(text):
        with contextlib.suppress(LookupError, UnicodeError, ValueError, HeaderParseError):
            text = str(email.header.make_header(email.header.decode_header(text)))
    return _WS.sub(" ", clean(text)).strip()


def filename(part: Message) -> str | None:
    """The declared file name: RFC 2231 ``filename*``, RFC 2047 words, or ``name=``."""
    try:
        raw = part.get_filename() or part.get_param("name")
    except (LookupError, UnicodeError, ValueError, IndexError):
        return None
    if raw is None:
        return None
    if isinstance(raw, tuple):
        charset, _lang, value = raw
        try:
            raw = value.encode("latin-1", "surrogateescape").decode(
                charset or "us-ascii", "replace"
            )
        except LookupError:
            raw = value
    name = decode_header_value(raw)
    name = name.replace("\x00", "").strip().strip('"')
    return name or None


def content_type(part: Message) -> str:
    """The declared type, lower-case; RFC 2045's default when missing or unparsable."""
    try:
        return part.get_content_type()
    except (ValueError, IndexError, AttributeError):
        return "text/plain"


def disposition(part: Message) -> str:
    value = part.get("Content-Disposition")
    if value is None:
        return ""
    return str(value).split(";", 1)[0].strip().lower()


def payload_bytes(part: Message) -> tuple[bytes, str | None]:
    """The decoded body of a leaf part, and a defect description when decoding was lossy."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return b"", None
    if not isinstance(payload, str):
        payload = str(payload)
    try:
        raw = payload.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        raw = payload.encode("utf-8", "surrogateescape")
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte == "base64":
        # a2b_base64 skips characters outside the alphabet, so a large attachment is
        # decoded without another full-size cleaned copy; only damaged input pays more.
        try:
            return binascii.a2b_base64(raw), None
        except binascii.Error:
            pass
        compact = re.sub(rb"[^A-Za-z0-9+/]", b"", raw.split(b"=", 1)[0])
        compact = compact[: len(compact) - len(compact) % 4 if len(compact) % 4 == 1 else None]
        try:
            return binascii.a2b_base64(compact + b"=" * (-len(compact) % 4)), "invalid base64"
        except binascii.Error:
            return raw, "invalid base64"
    if cte == "quoted-printable":
        return quopri.decodestring(raw), None
    if cte in ("x-uuencode", "uuencode", "x-uue", "uue"):
        try:
            uu: object = part.get_payload(decode=True)
        except (ValueError, binascii.Error):
            return raw, "invalid uuencode"
        return (uu if isinstance(uu, bytes) else raw), None
    return raw, None


def decode_text(data: bytes, charset: str | None) -> str:
    """Bytes of a text part as str: declared charset, then UTF-8, then Windows-1252."""
    if charset:
        try:
            return data.decode(charset.strip().strip('"').lower(), "replace")
        except (LookupError, ValueError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def part_charset(part: Message) -> str | None:
    try:
        charset = part.get_param("charset")
    except (ValueError, IndexError):
        return None
    if isinstance(charset, tuple):
        charset = charset[2]
    return str(charset) if charset else None


_HTML_DROP = re.compile(r"<(script|style|head|title)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_HTML_BREAK = re.compile(
    r"<(?:br|/p|/div|/tr|/li|/h\d|p|div|tr|li|h\d|hr|table|/table)\b[^>]*>", re.IGNORECASE
)
_HTML_TAG = re.compile(r"<[^>]*>")
_HTML_CELL = re.compile(r"</t[dh]\s*>", re.IGNORECASE)


def html_to_text(markup: str) -> str:
    """Visible text of an HTML body, a line per block element (markings are lines)."""
    markup = _HTML_COMMENT.sub("", markup)
    markup = _HTML_DROP.sub("", markup)
    markup = _HTML_CELL.sub("\t", markup)
    markup = _HTML_BREAK.sub("\n", markup)
    text = html.unescape(_HTML_TAG.sub("", markup))
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())
