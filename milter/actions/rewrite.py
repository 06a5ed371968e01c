"""Message rewrites a policy asks for, as a pure function of bytes.

Why not ``email``'s parse-and-generate: it refolds headers, re-encodes bodies and
normalises boundaries, so a signed part, an attachment or a header it merely passed
through would change. Here the message is split into its MIME entities at the byte
level by ``milter.mimetree``, the splitter the inspector uses too, losslessly (joining
the pieces gives back the input byte for byte); a rewrite replaces only the entities
it changes, and everything else keeps its exact bytes.

Rewrite kinds (``milter.policy.verdict.Rewrite``) and their arguments:

``subject_prefix`` (text)
    Prepended to the Subject unless the decoded Subject already contains it (so it is
    idempotent, and replies do not collect prefixes). Non-ASCII prefixes become an
    RFC 2047 encoded-word; the existing value is kept as it was.
``add_header`` (name, value)
    Appended to the top-level header block; non-ASCII values are RFC 2047 encoded.
``remove_header`` (name)
    Every top-level occurrence. The MIME structure headers (Content-Type,
    Content-Transfer-Encoding, MIME-Version) cannot be removed.
``disclaimer`` (text, html)
    Appended to the message body: a lone text/plain or text/html body, the first
    part of multipart/mixed or /related, and every alternative of
    multipart/alternative. Each body keeps its charset and transfer encoding where
    the text can be expressed in them (HTML gets character references; a text/plain
    body is converted to UTF-8 only when it must). Nothing is added inside
    multipart/signed, multipart/encrypted, S/MIME or inline PGP content, nor inside
    attached messages: the policy sees the ``signed`` flag and decides.
``strip_attachments`` (selector, reason)
    Every attachment the selector matches is replaced by a short text/plain part,
    in Bahasa Indonesia and English, naming the file and the reason.

The strip_attachments selector is the policy's attachment selector, as
``milter.policy.schema`` normalises it (``type``, ``declared_type``, ``name``,
``extension``, ``size``, ``depth`` and the flags ``executable``, ``mismatch``,
``archive`` ...), matched by ``milter.policy.conditions.selector_matcher``: one
language for "which attachments" in conditions and in stripping. Each attachment is
described the way the inspector describes a part (true type by libmagic, the
inspector's executable and mismatch rules), so a rule strips what its condition saw.

An attachment is a leaf part with ``Content-Disposition: attachment``, a file name,
or a type that is neither text nor multipart. Archive members are not looked into
here (``depth`` is 1): a policy that cares about what an archive holds quarantines
or rejects on the findings, or strips the archive by its own properties.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.header import Header
from email.message import Message
from typing import Any

from milter import mimetree
from milter.inspect import filetype
from milter.inspect.findings import ARCHIVE, ATTACHMENT, EXECUTABLE, MISMATCH, Part
from milter.mimetree import decode_words
from milter.policy.conditions import selector_matcher
from milter.policy.verdict import (
    AddHeader,
    Disclaimer,
    RemoveHeader,
    Rewrite,
    StripAttachments,
    SubjectPrefix,
)

Sniffer = Callable[[bytes], str]

MAX_DEPTH = 50
PROTECTED_HEADERS = frozenset({"content-type", "content-transfer-encoding", "mime-version"})

_NAME = re.compile(r"^[!-9;-~]+$")


class RewriteError(ValueError):
    """A rewrite's arguments are unusable (the message itself never causes this)."""


# -- a lossless MIME split ---------------------------------------------------------------


@dataclass
class _Entity:
    prefix: bytes  # an mbox "From " line, kept as it was
    fields: list[bytes]  # header fields, each with its continuation lines and line end
    sep: bytes  # the empty line ending the header block (empty when there is none)
    body: bytes  # a leaf's body; unused for a split multipart
    eol: bytes
    default_type: str = "text/plain"
    pieces: list[bytes] = field(default_factory=list)  # preamble, delimiters..., epilogue
    children: list[_Entity] | None = None
    _info: Message | None = None

    @property
    def info(self) -> Message:
        if self._info is None:
            self._info = mimetree.header_info(self.fields, self.default_type)
        return self._info

    def changed(self) -> None:
        self._info = None

    @property
    def ctype(self) -> str:
        return self.info.get_content_type()

    def serialize(self) -> bytes:
        out = [self.prefix, *self.fields, self.sep]
        if self.children is None:
            out.append(self.body)
        else:
            # pieces = [preamble, delimiter0, delimiter1, ..., (close delimiter + epilogue)]
            out.append(self.pieces[0])
            for i, child in enumerate(self.children):
                out.append(self.pieces[i + 1])
                out.append(child.serialize())
            out.extend(self.pieces[len(self.children) + 1 :])
        return b"".join(out)

    # header access -----------------------------------------------------------------

    def find(self, name: str) -> list[int]:
        want = name.lower().encode("ascii")
        return [i for i, f in enumerate(self.fields) if _field_name(f) == want]

    def remove(self, name: str) -> None:
        drop = set(self.find(name))
        self.fields = [f for i, f in enumerate(self.fields) if i not in drop]
        self.changed()

    def set(self, name: str, value: str) -> None:
        """Replace the first ``name`` field (or append one), unfolded."""
        line = f"{name}: {value}".encode("utf-8", "surrogateescape") + self.eol
        where = self.find(name)
        if where:
            self.fields[where[0]] = line
            for i in reversed(where[1:]):
                del self.fields[i]
        else:
            self.append(line)
        self.changed()

    def append(self, line: bytes) -> None:
        if self.fields and not self.fields[-1].endswith((b"\n", b"\r")):
            self.fields[-1] += self.eol
        self.fields.append(line)
        if not self.sep and self.body:
            self.sep = self.eol
        self.changed()


def _field_name(line: bytes) -> bytes:
    return line.split(b":", 1)[0].strip().lower()


def _parse(
    raw: mimetree.Buffer, eol: bytes, default_type: str = "text/plain", depth: int = 0
) -> _Entity:
    """The entity tree of ``raw``; only leaf bodies and header fields are copied."""
    view = memoryview(raw)
    head = mimetree.split_head(view, top=depth == 0)
    body = view[head.body_start :]
    ent = _Entity(head.prefix, head.fields, head.sep, b"", eol, default_type)
    if depth < MAX_DEPTH:
        if ent.info.get_content_maintype() == "multipart" and _split(ent, body, depth):
            return ent
        if ent.ctype == "message/rfc822" and _cte(ent) in ("7bit", "8bit", "binary"):
            # An attached message is an entity too: its attachments can be stripped.
            # Its body stays as well: stripping the whole message reports its size.
            ent.children = [_parse(body, eol, "text/plain", depth + 1)]
            ent.pieces = [b"", b""]
    ent.body = bytes(body)
    return ent


def _split(ent: _Entity, body: memoryview, depth: int) -> bool:
    """Split a multipart's ``body`` into its parts; False leaves it a leaf."""
    boundary = mimetree.boundary_of(ent.info)
    if not boundary:
        return False
    units: list[tuple[int, int, bool]] = []  # start (with the line end before), end, is-close
    prev_end = 0
    for d in mimetree.delimiters(body, boundary):
        start = max(d.start, prev_end)  # back-to-back delimiters share no line end
        units.append((start, d.end, d.close))
        prev_end = d.end
        if d.close:
            break
    if not units or units[0][2]:
        return False
    child_type = "message/rfc822" if ent.ctype == "multipart/digest" else "text/plain"
    pieces = [bytes(body[: units[0][0]])]
    children = []
    for i, (start, end, close) in enumerate(units):
        if close:
            pieces.append(bytes(body[start:]))
            break
        pieces.append(bytes(body[start:end]))
        stop = units[i + 1][0] if i + 1 < len(units) else len(body)
        children.append(_parse(body[end:stop], ent.eol, child_type, depth + 1))
    ent.pieces, ent.children = pieces, children
    return True


def _walk(ent: _Entity) -> list[_Entity]:
    out = [ent]
    for c in ent.children or ():
        out.extend(_walk(c))
    return out


# -- body transfer encodings -------------------------------------------------------------


def _cte(ent: _Entity) -> str:
    return str(ent.info.get("content-transfer-encoding", "7bit")).strip().lower() or "7bit"


def _decode(ent: _Entity) -> bytes | None:
    cte = _cte(ent)
    if cte in ("7bit", "8bit", "binary"):
        return ent.body
    try:
        if cte == "base64":
            return base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", ent.body) + b"==")
        if cte == "quoted-printable":
            return binascii.a2b_qp(ent.body)
    except (binascii.Error, ValueError):
        return None
    return None


def _qp(content: bytes, eol: bytes) -> bytes:
    lines = content.split(b"\n")
    out = []
    for line in lines:
        encoded = binascii.b2a_qp(line.removesuffix(b"\r"), quotetabs=False, istext=False)
        out.append(encoded.replace(b"=\n", b"=" + eol))
    return eol.join(out)


def _b64(content: bytes, eol: bytes) -> bytes:
    return base64.encodebytes(content).replace(b"\n", eol)


def _encode_into(ent: _Entity, content: bytes, cte: str) -> None:
    """Set the body to ``content`` in transfer encoding ``cte``."""
    if cte == "base64":
        ent.body = _b64(content, ent.eol)
    elif cte == "quoted-printable":
        ent.body = _qp(content, ent.eol)
    else:
        ent.body = content
    if cte != _cte(ent):
        ent.set("Content-Transfer-Encoding", cte)


# -- subject, headers --------------------------------------------------------------------


def _decoded(value: bytes) -> str:
    return decode_words(value.decode("utf-8", "replace"))


def _encode_value(value: str, eol: bytes, name: str) -> bytes:
    if value.isascii():
        return value.encode("ascii")
    header = Header(value, "utf-8", header_name=name)
    return header.encode(linesep=eol.decode()).encode("ascii")


def _check_value(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RewriteError(f"{what} must be text")
    if any(c in value for c in "\r\n\x00"):
        raise RewriteError(f"{what} must be a single line")
    return value


def _check_name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise RewriteError(f"not a header name: {value!r}")
    return value


def _subject_prefix(top: _Entity, text: str) -> None:
    text = _check_value(text, "subject prefix").strip()
    if not text:
        return
    where = top.find("subject")
    if not where:
        top.append(b"Subject: " + _encode_value(text, top.eol, "Subject") + top.eol)
        return
    line = top.fields[where[0]]
    name, _, value = line.partition(b":")
    if text.lower() in _decoded(value).lower():
        return
    rest = value.lstrip(b" \t\r\n")
    ending = rest[len(rest.rstrip(b"\r\n")) :] or top.eol
    rest = rest[: len(rest) - len(ending)] if rest.endswith(ending) else rest
    if text.isascii():
        head = text.encode("ascii")
    elif rest.startswith(b"=?"):
        # Whitespace between two encoded-words vanishes when decoded; keep ours inside.
        head = _encode_value(text + " ", top.eol, "Subject")
    else:
        head = _encode_value(text, top.eol, "Subject")
    new = name + b": " + head + (b" " + rest if rest else b"")
    first_line = new.split(b"\n", 1)[0]
    if len(first_line) > 998 and rest:
        new = name + b": " + head + top.eol + b" " + rest
    top.fields[where[0]] = new + ending
    top.changed()


def _add_header(top: _Entity, name: Any, value: Any) -> None:
    name = _check_name(name)
    value = _check_value(value, f"value of {name}")
    encoded = _encode_value(value, top.eol, name)
    if len(name) + 2 + len(encoded.split(b"\n", 1)[0]) > 998:
        raise RewriteError(f"value of {name} is too long for one header line")
    top.append(name.encode("ascii") + b": " + encoded + top.eol)


def _remove_header(top: _Entity, name: Any) -> None:
    name = _check_name(name)
    if name.lower() in PROTECTED_HEADERS:
        raise RewriteError(f"{name} carries the MIME structure and cannot be removed")
    top.remove(name)


# -- disclaimer --------------------------------------------------------------------------


def _is_attachment(ent: _Entity) -> bool:
    disposition = str(ent.info.get("content-disposition", "")).split(";", 1)[0].strip()
    return disposition.lower() == "attachment" or bool(
        ent.info.get_param("filename", header="content-disposition") or ent.info.get_param("name")
    )


def _body_parts(ent: _Entity) -> list[_Entity]:
    ctype = ent.ctype
    if ent.info.get_content_maintype() == "message":
        return []
    if ent.children is not None:
        if ctype in ("multipart/signed", "multipart/encrypted"):
            return []
        if ctype == "multipart/alternative":
            return [t for c in ent.children for t in _body_parts(c)]
        return _body_parts(ent.children[0]) if ent.children else []
    if ctype in ("text/plain", "text/html") and not _is_attachment(ent):
        return [ent]
    return []


def _codec(ent: _Entity) -> str | None:
    """The Python codec of the part's charset; None when Python does not know it."""
    try:
        return codecs.lookup(ent.info.get_content_charset() or "us-ascii").name
    except LookupError:
        return None


def _append_text(content: bytes, addition: bytes, eol: bytes) -> bytes:
    if content and not content.endswith((b"\n", b"\r")):
        content += eol
    return content + eol + addition + eol


def _insert_html(content: bytes, addition: bytes, eol: bytes) -> bytes:
    lower = content.lower()
    for tag in (b"</body", b"</html"):
        at = lower.rfind(tag)
        if at >= 0:
            return content[:at] + addition + eol + content[at:]
    return _append_text(content, addition, eol)


def _add_disclaimer(ent: _Entity, text: str, html_text: str) -> None:
    content = _decode(ent)
    if content is None or b"-----BEGIN PGP " in content:
        return
    codec = _codec(ent)
    is_html = ent.ctype == "text/html"
    addition_text = html_text if is_html else text
    line_end = b"\r\n" if b"\r\n" in content else (b"\n" if b"\n" in content else ent.eol)
    addition_text = addition_text.replace("\r\n", "\n").replace("\n", line_end.decode())
    cte = _cte(ent)
    if codec is not None and codec.startswith(("utf-16", "utf-32", "utf-7")):
        return  # appended bytes would not be text in these
    if codec is None:
        if not addition_text.isascii():
            return
        addition = addition_text.encode("ascii")  # ASCII reads the same in most charsets
    else:
        try:
            addition = addition_text.encode(codec)
        except UnicodeEncodeError:
            if is_html:
                addition = addition_text.encode(codec, "xmlcharrefreplace")
            else:
                try:
                    content = content.decode(codec).encode("utf-8")
                except UnicodeDecodeError:
                    addition = addition_text.encode(codec, "replace")
                else:
                    addition = addition_text.encode("utf-8")
                    ent.info.set_param("charset", "utf-8")
                    ent.set("Content-Type", _ascii_header(ent.info["content-type"]))
    joined = (_insert_html if is_html else _append_text)(content, addition, line_end)
    if cte == "7bit" and not joined.isascii():
        cte = "quoted-printable"
    _encode_into(ent, joined, cte)


def _ascii_header(value: Any) -> str:
    return re.sub(r"\s+", " ", str(value)).strip()


def _default_html(text: str) -> str:
    escaped = html.escape(text).replace("\n", "<br>\n")
    return f'<div class="disclaimer"><hr>\n{escaped}\n</div>'


# -- strip attachments -------------------------------------------------------------------


@dataclass
class _Attachment:
    ent: _Entity
    sniff: Sniffer
    _content: bytes | None = None
    _true_type: str | None = None

    @property
    def filename(self) -> str:
        raw = self.ent.info.get_filename() or ""
        return _decoded(raw.encode("utf-8", "surrogateescape")) if raw else ""

    @property
    def extension(self) -> str:
        name = self.filename
        return name.rsplit(".", 1)[1].lower() if "." in name else ""

    @property
    def content(self) -> bytes:
        if self._content is None:
            decoded = _decode(self.ent)
            self._content = self.ent.body if decoded is None else decoded
        return self._content

    @property
    def true_type(self) -> str:
        if self._true_type is None:
            self._true_type = self.sniff(self.content)
        return self._true_type


def _as_part(att: _Attachment) -> Part:
    """The attachment as the inspector would describe it, for the policy's selector."""
    true_type, ext, declared = att.true_type, att.extension, att.ent.ctype
    flags = {ATTACHMENT}
    if filetype.is_executable(true_type, ext):
        flags.add(EXECUTABLE)
    if filetype.mismatch(true_type, ext, declared):
        flags.add(MISMATCH)
    if filetype.is_archive(true_type):
        flags.add(ARCHIVE)
    name = att.filename or None
    return Part(
        path=name or "",
        filename=name,
        declared_type=declared,
        true_type=true_type,
        extension=ext,
        size=len(att.content),
        depth=1,
        flags=frozenset(flags),
    )


def _notice_text(att: _Attachment, reason: str) -> str:
    name = att.filename or "(tanpa nama / unnamed)"
    size = len(att.content)
    kind = att.true_type
    return (
        f'Lampiran "{name}" ({kind}, {size} bita) telah dihapus oleh gateway surel '
        f"Pemprov DKI Jakarta.\n"
        f"Alasan: {reason}\n"
        f"Hubungi pengirim atau petugas kepatuhan bila Anda memerlukannya.\n"
        f"\n"
        f'The attachment "{name}" ({kind}, {size} bytes) was removed by the Jakarta '
        f"provincial mail gateway.\n"
        f"Reason: {reason}\n"
        f"Ask the sender or the compliance officer if you need it.\n"
    )


_CONTENT_FIELDS = (
    b"content-type",
    b"content-transfer-encoding",
    b"content-disposition",
    b"content-description",
    b"content-id",
    b"content-location",
    b"content-md5",
)


def _replace_with_notice(ent: _Entity, text: str, top_level: bool) -> None:
    eol = ent.eol
    body = _qp(text.replace("\n", "\r\n" if eol == b"\r\n" else "\n").encode("utf-8"), eol)
    new_fields = [
        b'Content-Type: text/plain; charset="utf-8"' + eol,
        b"Content-Transfer-Encoding: quoted-printable" + eol,
        b"Content-Disposition: inline" + eol,
    ]
    kept = [f for f in ent.fields if _field_name(f) not in _CONTENT_FIELDS] if top_level else []
    if kept and not kept[-1].endswith((b"\n", b"\r")):
        kept[-1] += eol
    ent.fields = kept + new_fields
    ent.sep = eol
    ent.body = body + eol
    ent.children, ent.pieces = None, []
    ent.changed()


def _strip(top: _Entity, selector: Mapping[str, Any], reason: Any, sniff: Sniffer) -> None:
    if not selector:
        raise RewriteError("a strip_attachments selector is a non-empty mapping")
    reason_text = _check_value(reason if reason is not None else "", "reason") or (
        "kebijakan / policy"
    )
    matches = selector_matcher(selector)

    def visit(ent: _Entity) -> None:
        maintype = ent.info.get_content_maintype()
        if maintype != "multipart" and (_is_attachment(ent) or maintype != "text"):
            att = _Attachment(ent, sniff)
            if matches(_as_part(att)):
                _replace_with_notice(ent, _notice_text(att, reason_text), ent is top)
                return
        for child in ent.children or ():
            visit(child)

    visit(top)


# -- the entry point ---------------------------------------------------------------------


def apply(data: bytes, rewrites: Sequence[Rewrite], *, sniff: Sniffer | None = None) -> bytes:
    """``data`` with ``rewrites`` applied in order; untouched entities keep their bytes.

    ``sniff`` maps content to a MIME type for the selectors' ``type`` and flags; by
    default the inspector's libmagic wrapper, so both name types alike.
    Raises RewriteError for unusable arguments or an unknown kind, never for a
    malformed message: what cannot be parsed is left as it is.
    """
    if not rewrites:
        return data
    sniffer = sniff or filetype.sniff
    top = _parse(data, mimetree.eol_of(data))
    for rw in rewrites:
        if isinstance(rw, SubjectPrefix):
            _subject_prefix(top, rw.text)
        elif isinstance(rw, AddHeader):
            _add_header(top, rw.name, rw.value)
        elif isinstance(rw, RemoveHeader):
            _remove_header(top, rw.name)
        elif isinstance(rw, Disclaimer):
            text = rw.text
            if not isinstance(text, str) or not text.strip():
                raise RewriteError("a disclaimer needs its text")
            html_text = rw.html or _default_html(text)
            if not isinstance(html_text, str):
                raise RewriteError("the disclaimer's html must be text")
            for part in _body_parts(top):
                try:
                    _add_disclaimer(part, text, html_text)
                except (ValueError, LookupError, UnicodeError):
                    # A body whose encoding cannot be undone keeps its bytes: a missing
                    # disclaimer is better than a mangled message. (Stripping, by
                    # contrast, never skips a part: failing there fails the message.)
                    continue
        elif isinstance(rw, StripAttachments):
            _strip(top, rw.selector.spec(), rw.reason, sniffer)
        else:
            raise RewriteError(f"unknown rewrite {rw!r}")
    return top.serialize()
