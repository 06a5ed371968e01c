"""The walk: message -> MIME leaves -> files -> archive members and documents, recursively.

One ``Context`` per message carries the limits and everything found so far, so a limit
reached five archives deep is charged against the same message-wide budget. Limits
local to one file (an encrypted entry, a zip bomb, an unreadable PDF) mark that part
unscannable and the walk goes on; message-wide limits (bytes, time) unwind to
``inspect_message`` through ``LimitReached``.
"""

from __future__ import annotations

import bz2
import dataclasses
import email.parser
import email.policy
import io
import lzma
import struct
import tarfile
import time
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from email.message import Message

from milter.config import InspectLimits
from milter.inspect import (
    archives,
    bounded,
    documents,
    drafts,
    filetype,
    labels,
    legacy,
    mime,
    ocr,
    smime,
    tnef,
)
from milter.inspect.errors import BudgetExceeded, DocumentError, LimitReached
from milter.inspect.findings import (
    ARCHIVE,
    ATTACHMENT,
    ENCRYPTED,
    EXECUTABLE,
    IMAGE_ONLY,
    MACRO,
    MISMATCH,
    SIGNED,
    UNSCANNABLE,
    Draft,
    Label,
    OcrSpot,
    Part,
)
from milter.inspect.labels import LabelScheme, Marking
from milter.inspect.pdf import inspect_pdf

_BODY_TYPES = frozenset(
    {"text/plain", "text/html", "text/enriched", "text/richtext", "text/calendar"}
)
_SIGNATURE_TYPES = frozenset(
    {
        "application/pkcs7-signature",
        "application/x-pkcs7-signature",
        "application/pgp-signature",
    }
)
_PKCS7_MIME = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
_TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})
_CLASSIFICATION_HEADERS = frozenset(
    {
        "x-klasifikasi",
        "x-classification",
        "classification",
        "x-security-classification",
        "x-label",
        "x-sensitivity-label",
    }
)
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    RuntimeError,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    struct.error,
    KeyError,
    IndexError,
    DocumentError,
)
_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, struct.error)
_MAX_DEFECTS = 200
_MAX_HEADERS = 500


class Context:
    """Everything found in one message so far, and the budgets left to find more."""

    def __init__(
        self, scheme: LabelScheme, limits: InspectLimits, ocr_lane: ocr.Deferred | None = None
    ) -> None:
        self.scheme = scheme
        self.limits = limits
        self.deadline = time.monotonic() + limits.time_budget
        self.labels: list[Label] = []
        self._label_keys: set[tuple[str, str, str | None]] = set()
        self.drafts: list[Draft] = []
        self.parts: list[Part | None] = []
        self.text: list[str] = []
        self.text_len = 0
        self.defects: list[str] = []
        self.unscannable: list[str] = []
        self.headers: tuple[tuple[str, str], ...] = ()
        self.subject = ""
        self.examined = 0
        self.expanded = 0
        self.entries = 0
        self.mime_parts = 0
        self.nesting = 0  # multipart and message levels open, across inner messages
        self.ocr = ocr.Budget(limits.ocr)  # pages and seconds of OCR left to this message
        self.ocr_lane = ocr_lane  # OCR read by other processes (``ocr.Deferred``), or here

    # budgets --------------------------------------------------------------------
    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise BudgetExceeded("time budget exceeded")

    def charge(self, size: int) -> None:
        self.examined += size
        if self.examined > self.limits.max_bytes:
            raise LimitReached("examined bytes limit reached")

    def expand_budget(self) -> int:
        return max(
            0,
            min(self.limits.expanded_bytes - self.expanded, self.limits.max_bytes - self.examined),
        )

    # results --------------------------------------------------------------------
    def note_unscannable(self, reason: str) -> None:
        if reason not in self.unscannable:
            self.unscannable.append(reason)

    def defect(self, where: str, what: str) -> None:
        entry = f"{where}: {what}"
        if len(self.defects) < _MAX_DEFECTS and entry not in self.defects:
            self.defects.append(entry)

    def add_label(self, raw: str, source: str, level: str | None, why: str = "") -> None:
        key = (raw, source, level)
        if key not in self._label_keys:
            self._label_keys.add(key)
            self.labels.append(Label(raw=raw, source=source, level=level, why=why))

    def add_marking(self, marking: Marking | None, source: str) -> None:
        if marking is not None:
            self.add_label(marking.raw, source, marking.level, marking.why)

    def add_draft(self, source: str, evidence: str) -> None:
        draft = Draft(source=source, evidence=evidence)
        if draft not in self.drafts and len(self.drafts) < _MAX_DEFECTS:
            self.drafts.append(draft)

    def add_subject(self, subject: str, source: str) -> None:
        """Label the markings a subject carries: a message's, an attached one's, a TNEF one's."""
        for raw in labels.subject_markings(subject, self.scheme):
            self.add_label(raw, source, self.scheme.resolve(raw), labels.WHY_SUBJECT)

    def add_text(self, text: str, source: str, *, marks_all: bool = False, place: str = "") -> None:
        """Keep text for detectors and content rules, and read the markings it carries by
        position and form (``place``: see ``labels.PLACES``; ``marks_all`` is a page
        header/footer band)."""
        if not text:
            return
        place = place or (labels.BAND if marks_all else labels.BODY)
        # Both readers look for their words in the lower-cased text: made once here.
        low = None if place == labels.BODY else text.lower()
        for marking in labels.text_markings(text, self.scheme, place, low=low):
            self.add_marking(marking, source)
        for evidence in drafts.text_evidence(text, place, low=low):
            self.add_draft(source, evidence)
        room = self.limits.text_bytes - self.text_len
        if room <= 0:
            self.note_unscannable("text limit reached")
            return
        if len(text) > room:
            text = text[:room]
            self.note_unscannable("text limit reached")
        self.text.append(text)
        self.text_len += len(text) + 2

    def reserve(self) -> int:
        self.parts.append(None)
        return len(self.parts) - 1


# --- headers -----------------------------------------------------------------------


def scan_headers(ctx: Context, msg: Message, prefix: str) -> str:
    """Label headers and subject markings of one message; returns its decoded subject."""
    scheme = ctx.scheme
    subject = ""
    for index, (name, value) in enumerate(msg.items()):
        if index >= _MAX_HEADERS:
            break
        key = name.strip().lower()
        if key == "subject" and not subject:
            subject = mime.decode_header_value(value)
            continue
        if (
            key not in _CLASSIFICATION_HEADERS
            and key not in ("msip_labels", "x-protective-marking", "sensitivity")
            and not key.startswith("x-titus-metadata")
        ):
            continue
        text = mime.decode_header_value(value)
        source = f"{prefix}header:{key}"
        if key == "msip_labels":
            for m in labels.msip_header_markings(text, scheme):
                ctx.add_marking(m, source)
        elif key == "x-protective-marking":
            ctx.add_marking(labels.protective_marking(text, scheme), source)
        elif key == "sensitivity":
            ctx.add_marking(labels.sensitivity_marking(text, scheme), source)
        elif key.startswith("x-titus-metadata"):
            for m in labels.titus_markings(text, scheme):
                ctx.add_marking(m, source)
        else:
            ctx.add_marking(labels.value_marking(text, scheme), source)
    ctx.add_subject(subject, f"{prefix}subject")
    return subject


def decoded_headers(msg: Message) -> tuple[tuple[str, str], ...]:
    return tuple(
        (mime.clean(name), mime.decode_header_value(value))
        for name, value in msg.items()[:_MAX_HEADERS]
    )


# --- messages ----------------------------------------------------------------------


def scan_message(ctx: Context, data: bytes) -> None:
    """The top-level message: headers, then every part within the limits."""
    if len(data) > ctx.limits.max_bytes:
        end = data.find(b"\r\n\r\n")
        end = data.find(b"\n\n") if end == -1 else end
        head = data[: end if end != -1 else min(len(data), 1 << 20)]
        msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
        ctx.headers = decoded_headers(msg)
        ctx.subject = scan_headers(ctx, msg, "")
        raise LimitReached("message larger than the examined bytes limit")
    top = mime.Node.parse(data, max_lines=ctx.limits.mime_parts)
    ctx.headers = decoded_headers(top.info)
    ctx.subject = scan_headers(ctx, top.info, "")
    walk(ctx, top, section="", container="", depth=1, arch_depth=0, prefix="")


def walk(
    ctx: Context,
    part: mime.Node,
    *,
    section: str,
    container: str,
    depth: int,
    arch_depth: int,
    prefix: str,
    parent: str = "",
) -> None:
    """One MIME entity: recurse into multiparts and messages, hand leaves to ``leaf``."""
    ctx.check_time()
    ctx.mime_parts += 1
    where = section or "message"
    if ctx.mime_parts > ctx.limits.mime_parts:
        raise LimitReached("MIME part limit reached")
    for defect in part.defects:
        ctx.defect(f"{container + '/' if container else ''}{where}", defect)
    ctype = part.ctype
    if part.kind != "leaf":
        # Sections restart in every attached message; the nesting does not, or a
        # multipart/message/multipart chain 200,000 deep is walked until time runs out.
        if section.count(".") + 1 > ctx.limits.mime_depth or ctx.nesting > ctx.limits.mime_depth:
            ctx.note_unscannable("MIME depth limit reached")
            return
        if ctx.mime_parts + part.delimiter_lines > ctx.limits.mime_parts:
            raise LimitReached("MIME part limit reached")
        ctx.nesting += 1
        try:
            _container(
                ctx,
                part,
                section=section,
                container=container,
                depth=depth,
                arch_depth=arch_depth,
                prefix=prefix,
            )
        finally:
            ctx.nesting -= 1
        return
    leaf(
        ctx,
        part,
        ctype,
        section=section or "1",
        container=container,
        depth=depth,
        arch_depth=arch_depth,
        prefix=prefix,
        parent=parent,
    )


def _container(
    ctx: Context,
    part: mime.Node,
    *,
    section: str,
    container: str,
    depth: int,
    arch_depth: int,
    prefix: str,
) -> None:
    """The children of a multipart, or the message a message/* part holds."""
    if part.kind == "message":
        attached(
            ctx,
            part,
            next(part.parts()),
            section=section or "1",
            container=container,
            depth=depth,
            arch_depth=arch_depth,
        )
        return
    ctype = part.ctype
    subtype = ctype.split("/", 1)[1] if ctype.startswith("multipart/") else "mixed"
    for i, child in enumerate(part.parts(), 1):
        walk(
            ctx,
            child,
            section=f"{section}.{i}" if section else str(i),
            container=container,
            depth=depth,
            arch_depth=arch_depth,
            prefix=prefix,
            parent=f"{subtype}:{i}",
        )


def attached(
    ctx: Context,
    part: mime.Node,
    inner: mime.Node,
    *,
    section: str,
    container: str,
    depth: int,
    arch_depth: int,
) -> None:
    """A message/rfc822 part: recorded as an attachment, its headers and parts walked."""
    cte = str(part.info.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte in ("base64", "quoted-printable") and not inner.info.keys() and inner.kind == "leaf":
        # RFC 2046 forbids encoding message/rfc822, but mailers do it: decode, then parse.
        inner.info["Content-Transfer-Encoding"] = cte
        raw, problem = mime.payload_bytes(inner)
        if problem == mime.BASE64_AFTER_PAD:
            ctx.note_unscannable(problem)
        inner = mime.Node.parse(raw, max_lines=ctx.limits.mime_parts)
    name = mime.filename(part.info) or f"{section}.eml"
    path = f"{container}/{name}" if container else name
    ctx.parts.append(
        Part(
            path=path,
            filename=mime.filename(part.info),
            declared_type="message/rfc822",
            true_type="message/rfc822",
            extension=filetype.extension(name),
            size=inner.size(ctx.limits.mime_depth),
            depth=depth,
            flags=frozenset({ATTACHMENT}),
        )
    )
    _inner_message(ctx, inner, path=path, depth=depth, arch_depth=arch_depth)


def leaf(
    ctx: Context,
    part: mime.Node,
    ctype: str,
    *,
    section: str,
    container: str,
    depth: int,
    arch_depth: int,
    prefix: str,
    parent: str,
) -> None:
    """A MIME leaf: a body text part, a signature or encrypted blob, or a file."""
    name = mime.filename(part.info)
    disp = mime.disposition(part.info)
    data, problem = mime.payload_bytes(part)
    where = f"{container}/{section}" if container else section
    if problem:
        ctx.defect(where, problem)
    ctx.charge(len(data))
    in_encrypted = parent.startswith("encrypted:")
    if ctype in _SIGNATURE_TYPES or (parent == "signed:2" and ctype.startswith("application/")):
        ctx.parts.append(_plain_part(where, name, ctype, data, depth=depth, flags={SIGNED}))
        return
    if in_encrypted or ctype == "application/pgp-encrypted":
        flags = {ENCRYPTED}
        reason = None
        if ctype != "application/pgp-encrypted":
            flags.add(UNSCANNABLE)
            reason = "PGP/MIME encrypted"
        ctx.parts.append(
            _plain_part(where, name, ctype, data, depth=depth, flags=flags, reason=reason)
        )
        return
    if ctype in _PKCS7_MIME or filetype.extension(name) in ("p7m",):
        _smime(
            ctx,
            part,
            ctype,
            data,
            name=name,
            where=where,
            section=section,
            container=container,
            depth=depth,
            arch_depth=arch_depth,
            prefix=prefix,
        )
        return
    # A payload decoded only in part was not inspected in full: the part says so.
    cut = problem if problem == mime.BASE64_AFTER_PAD else None
    if ctype in _BODY_TYPES and not name and disp != "attachment":
        body(ctx, part, ctype, data, where=where, depth=depth, prefix=prefix, cut=cut)
        return
    path = f"{container}/{name or section}" if container else (name or section)
    examine(
        ctx,
        data,
        name=name,
        declared=ctype,
        path=path,
        depth=depth,
        arch_depth=arch_depth,
        cut=cut,
    )


def _smime(
    ctx: Context,
    part: mime.Node,
    ctype: str,
    data: bytes,
    *,
    name: str | None,
    where: str,
    section: str,
    container: str,
    depth: int,
    arch_depth: int,
    prefix: str,
) -> None:
    """An S/MIME blob: signed and compressed content is unwrapped and walked like any
    part (``smime``); only encrypted content, or a structure that cannot be read, is
    unscannable."""
    declared = str(part.info.get_param("smime-type") or "").lower()
    res = smime.unwrap(data, limit=ctx.expand_budget(), ratio=ctx.limits.expansion_ratio)
    flags: set[str] = set()
    if smime.SIGNED in res.layers or (not res.layers and "signed" in declared):
        flags.add(SIGNED)
    if res.content is None:
        reason = None
        if res.encrypted or (not res.layers and "signed" not in declared):
            flags |= {ENCRYPTED, UNSCANNABLE}
            reason = "S/MIME encrypted" if res.encrypted else res.reason
        elif not res.detached:
            flags.add(UNSCANNABLE)
            reason = res.reason
        ctx.parts.append(
            _plain_part(where, name, ctype, data, depth=depth, flags=flags, reason=reason)
        )
        return
    ctx.parts.append(_plain_part(where, name, ctype, data, depth=depth, flags=flags))
    content = res.content
    ctx.charge(len(content))
    ctx.expanded += len(content)
    inner = f"{section}.1"
    if inner.count(".") + 1 > ctx.limits.mime_depth or ctx.nesting > ctx.limits.mime_depth:
        ctx.note_unscannable("MIME depth limit reached")
        return
    if smime.is_mime_entity(content):
        node = mime.Node.parse(content, max_lines=ctx.limits.mime_parts)
        scan_headers(ctx, node.info, prefix)
        ctx.nesting += 1
        try:
            walk(
                ctx,
                node,
                section=inner,
                container=container,
                depth=depth,
                arch_depth=arch_depth,
                prefix=prefix,
            )
        finally:
            ctx.nesting -= 1
        return
    # A file signed on its own (``report.pdf.p7m``): the file is what was signed.
    base = name or f"{section}.p7m"
    inner_name = base[:-4] if base.lower().endswith(".p7m") and len(base) > 4 else base + ".out"
    examine(
        ctx,
        content,
        name=inner_name,
        declared="",
        path=f"{container}/{base}/{inner_name}" if container else f"{base}/{inner_name}",
        depth=depth + 1,
        arch_depth=arch_depth,
    )


def _cms_file(
    ctx: Context, state: _FileState, data: bytes, *, path: str, depth: int, arch_depth: int
) -> None:
    """A CMS file that is not a MIME part of its own (a ``.p7m`` in a zip, a signed file
    saved from mail): its content is examined one level down, as an archive member is."""
    res = smime.unwrap(data, limit=ctx.expand_budget(), ratio=ctx.limits.expansion_ratio)
    if smime.SIGNED in res.layers:
        state.flags.add(SIGNED)
    if res.encrypted:
        state.flags.add(ENCRYPTED)
        state.unscannable("S/MIME encrypted")
    elif res.content is None:
        if not res.detached:
            state.unscannable(res.reason or "unreadable S/MIME")
    elif _nested_ok(ctx, state, arch_depth):
        ctx.expanded += len(res.content)
        if smime.is_mime_entity(res.content):
            ctx.charge(len(res.content))
            inner = mime.Node.parse(res.content, max_lines=ctx.limits.mime_parts)
            _inner_message(ctx, inner, path=path, depth=depth, arch_depth=arch_depth + 1)
            return
        base = path.rsplit("/", 1)[-1]
        name = base[:-4] if base.lower().endswith(".p7m") and len(base) > 4 else base + ".out"
        _unpacked(
            ctx, res.content, name=name, path=f"{path}/{name}", depth=depth, arch_depth=arch_depth
        )


def _plain_part(
    path: str,
    name: str | None,
    ctype: str,
    data: bytes,
    *,
    depth: int,
    flags: set[str],
    reason: str | None = None,
) -> Part:
    return Part(
        path=path,
        filename=name,
        declared_type=ctype,
        true_type=filetype.sniff(data),
        extension=filetype.extension(name),
        size=len(data),
        depth=depth,
        flags=frozenset(flags),
        reason=reason,
    )


def body(
    ctx: Context,
    part: mime.Node,
    ctype: str,
    data: bytes,
    *,
    where: str,
    depth: int,
    prefix: str,
    cut: str | None = None,
) -> None:
    """A text or HTML body: its text feeds detectors, its top and bottom lines may be markings."""
    plain = filetype.text_body_type(data, ctype) if depth == 1 else None
    true_type = plain or filetype.sniff(data)
    flags: set[str] = set()
    reason = None
    ext = ""
    if filetype.is_executable(true_type, ext) and not true_type.startswith("text/"):
        flags |= {EXECUTABLE, MISMATCH, ATTACHMENT}
    # Decode no more than the text limit can keep (markup aside): a 25 MB body must not
    # become 25 MB of str and a list of its lines. No charset yields more characters
    # than bytes, so a plain body loses nothing the limit would have kept.
    window = ctx.limits.text_bytes * (4 if ctype == "text/html" else 1)
    if len(data) > window:
        ctx.note_unscannable("text limit reached")
    text = mime.decode_text(data[:window], mime.part_charset(part.info))
    if ctype == "text/html":
        text = mime.html_to_text(text)
    if "-----BEGIN PGP MESSAGE-----" in text:
        flags |= {ENCRYPTED, UNSCANNABLE}
        reason = "inline PGP encrypted"
    if "-----BEGIN PGP SIGNED MESSAGE-----" in text:
        flags.add(SIGNED)
    if cut is not None:
        flags.add(UNSCANNABLE)
        reason = reason or cut
    ctx.parts.append(
        Part(
            path=where,
            filename=None,
            declared_type=ctype,
            true_type=true_type,
            extension=ext,
            size=len(data),
            depth=depth,
            flags=frozenset(flags),
            reason=reason,
        )
    )
    ctx.add_text(text, f"{prefix}body")


# --- files -------------------------------------------------------------------------


class _FileState:
    """Flags and reason collected while one file is examined."""

    def __init__(self) -> None:
        self.flags: set[str] = {ATTACHMENT}
        self.reason: str | None = None

    def unscannable(self, reason: str) -> None:
        self.flags.add(UNSCANNABLE)
        if self.reason is None:
            self.reason = reason


def examine(
    ctx: Context,
    data: bytes,
    *,
    name: str | None,
    declared: str,
    path: str,
    depth: int,
    arch_depth: int,
    preset: Iterable[str] = (),
    cut: str | None = None,
) -> None:
    """A file anywhere (attachment, archive member, embedded object): type, flags, content.

    ``cut`` says why ``data`` is not all of the file (a transfer encoding decoded only in
    part): the file is examined as far as it goes and marked unscannable.
    """
    ctx.check_time()
    true_type = filetype.sniff(data)
    ext = filetype.extension(name)
    state = _FileState()
    state.flags.update(preset)
    if cut is not None:
        state.unscannable(cut)
    if filetype.is_executable(true_type, ext):
        state.flags.add(EXECUTABLE)
    if filetype.mismatch(true_type, ext, declared):
        state.flags.add(MISMATCH)
    if ext in filetype.MACRO_EXTENSIONS:
        state.flags.add(MACRO)
    index = ctx.reserve()
    try:
        _content(
            ctx,
            state,
            data,
            true_type=true_type,
            ext=ext,
            declared=declared,
            path=path,
            depth=depth,
            arch_depth=arch_depth,
        )
    finally:
        ctx.parts[index] = Part(
            path=path,
            filename=name,
            declared_type=declared,
            true_type=true_type,
            extension=ext,
            size=len(data),
            depth=depth,
            flags=frozenset(state.flags),
            reason=state.reason,
        )


def _content(
    ctx: Context,
    state: _FileState,
    data: bytes,
    *,
    true_type: str,
    ext: str,
    declared: str,
    path: str,
    depth: int,
    arch_depth: int,
) -> None:
    kind = filetype.kind(true_type)
    src = f"attachment:{path}"
    if (
        data.startswith(b"PK\x03\x04")
        or data.startswith(b"PK\x05\x06")
        or kind in ("zip", "ooxml", "odf")
    ):
        _zip(ctx, state, data, path=path, depth=depth, arch_depth=arch_depth)
    elif data.startswith(b"%PDF") or kind == "pdf" or (b"%PDF-" in data[:1024] and ext == "pdf"):
        _pdf(ctx, state, data, src=src, path=path, depth=depth, arch_depth=arch_depth)
    elif data.startswith(documents.OLE_MAGIC):
        doc = documents.read_ole(data)
        if doc.macro:
            state.flags.add(MACRO)
        if doc.encrypted:
            state.flags.add(ENCRYPTED)
            state.unscannable(doc.reason or "encrypted document")
        else:
            _legacy(ctx, state, data, src=src, path=path, depth=depth, arch_depth=arch_depth)
    elif kind == "rtf" or legacy.is_rtf(data):
        _legacy(ctx, state, data, src=src, path=path, depth=depth, arch_depth=arch_depth, rtf=True)
    elif data.startswith(documents.TNEF_SIGNATURE) or declared in _TNEF_TYPES:
        _tnef(ctx, state, data, src=src, path=path, depth=depth, arch_depth=arch_depth)
    elif kind in ("gzip", "bzip2", "xz"):
        _compressed(ctx, state, data, kind=kind, path=path, depth=depth, arch_depth=arch_depth)
    elif kind == "tar":
        _tar(ctx, state, data, path=path, depth=depth, arch_depth=arch_depth)
    elif kind in ("7z", "rar") or data.startswith(
        (documents.SEVENZIP_MAGIC, documents.RAR4_MAGIC, documents.RAR5_MAGIC)
    ):
        _opaque_archive(ctx, state, data, path=path, depth=depth, arch_depth=arch_depth)
    elif filetype.is_archive(true_type):
        state.flags.add(ARCHIVE)
        encrypted = documents.opaque_archive_encrypted(data)
        if encrypted:
            state.flags.add(ENCRYPTED)
            state.unscannable(f"encrypted {kind} archive")
        else:
            state.unscannable(f"{kind} archive not opened")
    elif kind == "cms":
        _cms_file(ctx, state, data, path=path, depth=depth, arch_depth=arch_depth)
    elif kind == "message" or declared == "message/rfc822" or ext == "eml":
        _inner_message(
            ctx,
            mime.Node.parse(data, max_lines=ctx.limits.mime_parts),
            path=path,
            depth=depth,
            arch_depth=arch_depth,
        )
    elif true_type in ocr.IMAGE_TYPES:
        _ocr(ctx, state, ocr.IMAGE, data, src=src)
    elif kind == "text" or true_type in ("application/csv", "application/json", "application/xml"):
        if len(data) > ctx.limits.text_bytes:
            ctx.note_unscannable("text limit reached")
        text = mime.decode_text(data[: ctx.limits.text_bytes], None)
        if true_type == "text/html":
            text = mime.html_to_text(text)
        ctx.add_text(text, src, place=labels.DOCUMENT)


def _nested_ok(ctx: Context, state: _FileState, arch_depth: int) -> bool:
    if arch_depth >= ctx.limits.archive_depth:
        state.unscannable("archive depth limit reached")
        return False
    return True


def _next_entry(ctx: Context, state: _FileState) -> bool:
    """Count one more member of a container; False once the message-wide entry limit is
    passed, so members five archives deep count against the same limit as top-level ones."""
    ctx.entries += 1
    if ctx.entries > ctx.limits.archive_entries:
        state.unscannable("archive entry limit reached")
        return False
    return True


def _unpacked(
    ctx: Context, content: bytes, *, name: str, path: str, depth: int, arch_depth: int
) -> None:
    """A file taken out of a container (archive member, compressed stream, embedded
    object): charged to the message, then examined one level deeper than its container.
    It has no declared type: only a MIME part declares one."""
    ctx.charge(len(content))
    examine(
        ctx,
        content,
        name=name,
        declared="",
        path=path,
        depth=depth + 1,
        arch_depth=arch_depth + 1,
    )


def _zip(
    ctx: Context, state: _FileState, data: bytes, *, path: str, depth: int, arch_depth: int
) -> None:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except _ZIP_ERRORS as exc:
        state.unscannable(f"unreadable zip: {type(exc).__name__}")
        return
    with zf:
        start_budget = ctx.expand_budget()
        try:
            bz = documents.BoundedZip(zf, start_budget, ctx.limits.expansion_ratio)
            if documents.is_ooxml(bz.names):
                doc = documents.read_ooxml(bz, ctx.limits.text_bytes)
            elif documents.is_odf(bz.names):
                doc = documents.read_odf(bz, ctx.limits.text_bytes)
            else:
                state.flags.add(ARCHIVE)
                _zip_members(ctx, state, zf, path=path, depth=depth, arch_depth=arch_depth)
                return
        except _ZIP_ERRORS as exc:
            state.unscannable(
                f"unreadable document: {exc}"
                if isinstance(exc, DocumentError)
                else f"unreadable document: {type(exc).__name__}"
            )
            return
        ctx.expanded += start_budget - bz.budget
        _document(ctx, state, doc, path=path, depth=depth, arch_depth=arch_depth)
        _pictures(ctx, state, bz, path=path)


def _pictures(ctx: Context, state: _FileState, bz: documents.BoundedZip, *, path: str) -> None:
    """Pictures in an Office or ODF document (``word/media``, ``Pictures/``): a scanned
    letter pasted into a docx is read by OCR like an attached scan."""
    names = [n for n in bz.names if ocr.DOCUMENT_PICTURE.fullmatch(n)]
    for name in names:
        before = bz.budget
        try:
            content = bz.read(name, ctx.expand_budget())
        except _ZIP_ERRORS as exc:
            state.unscannable(f"picture {name} not read: {exc}")
            return
        finally:
            ctx.expanded += before - bz.budget
        if content is None or filetype.sniff(content) not in ocr.IMAGE_TYPES:
            continue
        _ocr(ctx, state, ocr.IMAGE, content, src=f"attachment:{path}/{name}", image_only=False)


def _zip_members(
    ctx: Context, state: _FileState, zf: zipfile.ZipFile, *, path: str, depth: int, arch_depth: int
) -> None:
    if not _nested_ok(ctx, state, arch_depth):
        return
    limits = ctx.limits
    for info in zf.infolist():
        ctx.check_time()
        if info.is_dir():
            continue
        if not _next_entry(ctx, state):
            return
        member = f"{path}/{info.filename}"
        name = info.filename.rsplit("/", 1)[-1]
        if info.flag_bits & 0x1:
            state.flags.add(ENCRYPTED)
            state.unscannable("encrypted archive entries")
            _skipped(
                ctx,
                state,
                member,
                name,
                size=info.file_size,
                depth=depth + 1,
                reason="encrypted archive entry",
                extra={ENCRYPTED},
            )
            continue
        ratio = info.file_size / max(info.compress_size, 1)
        budget = ctx.expand_budget()
        if ratio > limits.expansion_ratio or info.file_size > budget:
            why = (
                "expansion ratio limit reached"
                if ratio > limits.expansion_ratio
                else "expanded bytes limit reached"
            )
            _skipped(ctx, state, member, name, size=info.file_size, depth=depth + 1, reason=why)
            continue
        try:
            with zf.open(info) as fh:
                # Read in chunks against the compressed size, which the reader cannot
                # exceed: a member lying about its size stops at the ratio, not at the
                # whole expansion budget.
                content = bounded.read_member(
                    fh,
                    limit=budget + 1,
                    compressed=info.compress_size,
                    ratio=limits.expansion_ratio,
                    pad=False,
                ).data
        except _ZIP_ERRORS as exc:
            _skipped(
                ctx,
                state,
                member,
                name,
                size=info.file_size,
                depth=depth + 1,
                reason=f"unreadable archive entry: {type(exc).__name__}",
            )
            continue
        if (
            len(content) > budget
            or len(content) / max(info.compress_size, 1) > limits.expansion_ratio
        ):
            _skipped(
                ctx,
                state,
                member,
                name,
                size=len(content),
                depth=depth + 1,
                reason="expansion limit reached",
            )
            continue
        ctx.expanded += len(content)
        _unpacked(ctx, content, name=name, path=member, depth=depth, arch_depth=arch_depth)


def _opaque_archive(
    ctx: Context, state: _FileState, data: bytes, *, path: str, depth: int, arch_depth: int
) -> None:
    """7z and RAR (``archives``): members read within the budgets zip members get."""
    state.flags.add(ARCHIVE)
    if not _nested_ok(ctx, state, arch_depth):
        return
    room = max(0, ctx.limits.archive_entries - ctx.entries)
    if data.startswith(documents.SEVENZIP_MAGIC):
        listing = archives.read_7z(
            data,
            budget=ctx.expand_budget(),
            ratio=ctx.limits.expansion_ratio,
            max_entries=room + 1,
            check=ctx.check_time,
        )
    else:
        listing = archives.read_rar(
            data,
            budget=ctx.expand_budget(),
            ratio=ctx.limits.expansion_ratio,
            max_entries=room + 1,
            deadline=ctx.deadline,
        )
    if listing.encrypted:
        state.flags.add(ENCRYPTED)
    if listing.reason and listing.reason != "archive entry limit reached":
        state.unscannable(listing.reason)
    for entry in listing.members:
        ctx.check_time()
        if not _next_entry(ctx, state):
            return
        member = f"{path}/{entry.name}"
        name = entry.name.rsplit("/", 1)[-1]
        if entry.content is None:
            _skipped(
                ctx,
                state,
                member,
                name,
                size=entry.size,
                depth=depth + 1,
                reason=entry.reason or "unreadable archive entry",
                extra={ENCRYPTED} if entry.encrypted else (),
            )
            continue
        ctx.expanded += len(entry.content)
        _unpacked(ctx, entry.content, name=name, path=member, depth=depth, arch_depth=arch_depth)
    if listing.reason == "archive entry limit reached":
        state.unscannable(listing.reason)


def _skipped(
    ctx: Context,
    state: _FileState,
    member: str,
    name: str,
    *,
    size: int,
    depth: int,
    reason: str,
    extra: Iterable[str] = (),
) -> None:
    """An archive member left unopened: recorded as a part of its own, typed by its name only,
    so a policy still sees an ``.exe`` it could not read. The container keeps the first
    reason it was given (see ``_FileState.unscannable``)."""
    state.unscannable(reason)
    ext = filetype.extension(name)
    flags = {ATTACHMENT, UNSCANNABLE, *extra}
    if ext in filetype.EXECUTABLE_EXTENSIONS:
        flags.add(EXECUTABLE)
    ctx.parts.append(
        Part(
            path=member,
            filename=name,
            declared_type="",
            true_type="application/octet-stream",
            extension=ext,
            size=size,
            depth=depth,
            flags=frozenset(flags),
            reason=reason,
        )
    )


def _document(
    ctx: Context,
    state: _FileState,
    doc: documents.DocResult,
    *,
    path: str,
    depth: int,
    arch_depth: int,
) -> None:
    src = f"attachment:{path}"
    if doc.macro:
        state.flags.add(MACRO)
    if doc.encrypted:
        state.flags.add(ENCRYPTED)
        state.unscannable(doc.reason or "encrypted document")
    for reason in doc.unread:
        state.unscannable(reason)
    if doc.text_cut:
        ctx.note_unscannable("text limit reached")
    _properties(ctx, doc.properties, src)
    for where, guid in doc.label_ids:
        level = ctx.scheme.resolve_guid(guid)
        why = labels.WHY_SENSITIVITY_LABEL
        ctx.add_label(guid.strip("{}").lower(), f"{src}:{where}", level, why)
    for where, text, place in doc.texts:
        ctx.add_text(text, f"{src}:{where}", place=place)
    for where, evidence in doc.drafts:
        ctx.add_draft(f"{src}:{where}", evidence)
    _embedded(ctx, state, doc.embedded, path=path, depth=depth, arch_depth=arch_depth)


def _properties(ctx: Context, props: list[tuple[str, str, str]], src: str) -> None:
    """Classification properties of a document: Purview label pairs and named fields."""
    by_place: dict[str, list[tuple[str, str]]] = {}
    for where, name, value in props:
        if name.lower().startswith("msip_label_"):
            by_place.setdefault(where, []).append((name, value))
            continue
        if not value:
            continue
        for marking in labels.property_markings(name, value, ctx.scheme):
            ctx.add_marking(marking, f"{src}:{where}")
        evidence = drafts.property_evidence(name, value)
        if evidence is not None:
            ctx.add_draft(f"{src}:{where}", evidence)
    for where, pairs in by_place.items():
        for m in labels.msip_markings(pairs, ctx.scheme):
            ctx.add_marking(m, f"{src}:{where}")


def _embedded(
    ctx: Context,
    state: _FileState,
    files: list[tuple[str, bytes]],
    *,
    path: str,
    depth: int,
    arch_depth: int,
) -> None:
    if not files or not _nested_ok(ctx, state, arch_depth):
        return
    for name, content in files:
        if not _next_entry(ctx, state):
            return
        _unpacked(
            ctx, content, name=name, path=f"{path}/{name}", depth=depth, arch_depth=arch_depth
        )


def _pdf(
    ctx: Context,
    state: _FileState,
    data: bytes,
    *,
    src: str,
    path: str,
    depth: int,
    arch_depth: int,
) -> None:
    room = max(0, ctx.limits.text_bytes - ctx.text_len)
    result = inspect_pdf(
        data,
        max_text=room,
        max_expand=ctx.expand_budget(),
        deadline=ctx.deadline,
        ratio=ctx.limits.expansion_ratio,
    )
    _properties(ctx, result.properties + result.info_fields, src)
    if result.encrypted:
        state.flags.add(ENCRYPTED)
    if result.reason:
        state.unscannable(result.reason)
    if result.text_cut:
        ctx.note_unscannable("text limit reached")
    for page in result.text:
        ctx.add_text(page, f"{src}:text", place=labels.PAGE)
    for evidence in result.review:
        ctx.add_draft(src, evidence)
    if not result.encrypted:
        ctx.add_text(result.watermarks, f"{src}:watermark", place=labels.WATERMARK)
    if result.image_pages:
        _ocr(ctx, state, ocr.PDF, data, src=src, pages=result.image_pages)
    _embedded(ctx, state, result.embedded, path=path, depth=depth, arch_depth=arch_depth)


def _ocr(
    ctx: Context,
    state: _FileState,
    kind: str,
    data: bytes,
    *,
    src: str,
    pages: Sequence[int] = (),
    image_only: bool = True,
) -> None:
    """Image pages of one file (an image, a PDF's scanned pages, a picture in a document)
    read by OCR (``ocr``). Its time comes from the OCR budget, not the message's; what
    it leaves unread makes the file unscannable, with the reason. With ``ctx.ocr_lane``
    the pages are read by the OCR processes and their outcome applied here on a second
    walk (``ocr.Deferred``)."""
    if image_only:
        state.flags.add(IMAGE_ONLY)
    if not ctx.limits.ocr.enabled:
        state.unscannable("image not read: OCR disabled")
        return
    planned = ocr.plan(kind, data, src, ctx.ocr, pages)
    if isinstance(planned, ocr.Outcome):
        outcome = planned
    elif ctx.ocr_lane is not None:
        taken = ctx.ocr_lane.take(planned, ctx.limits.ocr)
        if taken is None:
            return
        outcome = taken
    else:
        started = time.monotonic()
        try:
            outcome = ocr.execute(planned, ctx.ocr)
        finally:
            ctx.deadline += time.monotonic() - started
    for reason in outcome.unread:
        state.unscannable(reason)
    for region in outcome.regions:
        where = f"{src}:ocr:page{region.page}:{region.band}"
        before = len(ctx.labels)
        place = labels.BAND if region.band in ("top", "bottom") else labels.DOCUMENT
        ctx.add_text(region.text, where, place=place)
        for i in range(before, len(ctx.labels)):
            label = ctx.labels[i]
            if label.source == where and label.ocr is None:
                conf = [c for t, c in region.lines if label.raw.casefold() in t.casefold()]
                spot = OcrSpot(region.page, region.band, conf[0] if conf else 0.0)
                ctx.labels[i] = dataclasses.replace(label, ocr=spot)


def _tnef(
    ctx: Context,
    state: _FileState,
    data: bytes,
    *,
    src: str,
    path: str,
    depth: int,
    arch_depth: int,
) -> None:
    try:
        tnef = documents.read_tnef(data, ctx.limits.archive_entries)
    except (DocumentError, struct.error) as exc:
        state.unscannable(f"unreadable TNEF: {exc}")
        return
    ctx.add_subject(tnef.subject, f"{src}:subject")
    ctx.add_text(tnef.body, f"{src}:body")
    _tnef_rtf(ctx, state, data, src=src)
    _embedded(ctx, state, tnef.attachments, path=path, depth=depth, arch_depth=arch_depth)


def _tnef_rtf(ctx: Context, state: _FileState, data: bytes, *, src: str) -> None:
    """The compressed RTF body Outlook puts in TNEF (``PR_RTF_COMPRESSED``)."""
    blob = tnef.compressed_rtf(data)
    if blob is None:
        return
    limit = max(0, min(ctx.expand_budget(), int(len(blob) * ctx.limits.expansion_ratio) + 1))
    try:
        rtf, cut = tnef.decompress_rtf(blob, limit)
    except (DocumentError, struct.error) as exc:
        state.unscannable(f"unreadable TNEF: {exc}")
        return
    if cut:
        state.unscannable("expansion limit reached in compressed RTF")
    ctx.expanded += len(rtf)
    read = legacy.rtf_text(rtf, max_text=max(0, ctx.limits.text_bytes), check=ctx.check_time)
    _legacy_result(ctx, state, read, f"{src}:rtf")


def _legacy(
    ctx: Context,
    state: _FileState,
    data: bytes,
    *,
    src: str,
    path: str,
    depth: int,
    arch_depth: int,
    rtf: bool = False,
) -> None:
    """Text and properties of legacy Office, Outlook items and RTF (``legacy``)."""
    room = max(0, ctx.limits.text_bytes - ctx.text_len)
    if rtf:
        read = legacy.rtf_text(data, max_text=room, check=ctx.check_time)
    else:
        read = legacy.read_ole_text(
            data, max_text=room, budget=ctx.expand_budget(), check=ctx.check_time
        )
    _legacy_result(ctx, state, read, src)
    if read.subject:
        ctx.add_subject(read.subject, f"{src}:subject")
    _embedded(ctx, state, read.embedded, path=path, depth=depth, arch_depth=arch_depth)


def _legacy_result(ctx: Context, state: _FileState, read: legacy.LegacyText, src: str) -> None:
    if read.encrypted:
        state.flags.add(ENCRYPTED)
        state.unscannable("encrypted Office document")
    if read.reason:
        state.unscannable(read.reason)
    if read.cut:
        ctx.note_unscannable("text limit reached")
    _properties(ctx, read.properties, src)
    for where, text, place in read.texts:
        ctx.add_text(text, f"{src}:{where}", place=place)


def _compressed(
    ctx: Context,
    state: _FileState,
    data: bytes,
    *,
    kind: str,
    path: str,
    depth: int,
    arch_depth: int,
) -> None:
    state.flags.add(ARCHIVE)
    if not _nested_ok(ctx, state, arch_depth):
        return
    budget = ctx.expand_budget()
    want = min(budget, int(len(data) * ctx.limits.expansion_ratio)) + 1
    try:
        if kind == "gzip":
            out = zlib.decompressobj(wbits=47).decompress(data, want)
        elif kind == "bzip2":
            out = bz2.BZ2Decompressor().decompress(data, want)
        else:
            out = lzma.LZMADecompressor().decompress(data, want)
    except (zlib.error, OSError, EOFError, ValueError, lzma.LZMAError) as exc:
        state.unscannable(f"unreadable {kind}: {type(exc).__name__}")
        return
    if len(out) >= want:
        state.unscannable("expansion limit reached")
        return
    ctx.expanded += len(out)
    base = path.rsplit("/", 1)[-1]
    inner = base.rsplit(".", 1)[0] if "." in base else base + ".out"
    if base.lower().endswith(".tgz"):
        inner = base[:-4] + ".tar"
    ctx.entries += 1
    _unpacked(ctx, out, name=inner, path=f"{path}/{inner}", depth=depth, arch_depth=arch_depth)


def _tar(
    ctx: Context, state: _FileState, data: bytes, *, path: str, depth: int, arch_depth: int
) -> None:
    state.flags.add(ARCHIVE)
    if not _nested_ok(ctx, state, arch_depth):
        return
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for info in tf:
                ctx.check_time()
                if not info.isfile():
                    continue
                if not _next_entry(ctx, state):
                    return
                member = f"{path}/{info.name}"
                name = info.name.rsplit("/", 1)[-1]
                fh = tf.extractfile(info)
                if fh is None:
                    continue
                content = fh.read(ctx.expand_budget() + 1)
                if len(content) > ctx.expand_budget():
                    _skipped(
                        ctx,
                        state,
                        member,
                        name,
                        size=info.size,
                        depth=depth + 1,
                        reason="expanded bytes limit reached",
                    )
                    continue
                ctx.expanded += len(content)
                _unpacked(ctx, content, name=name, path=member, depth=depth, arch_depth=arch_depth)
    except _TAR_ERRORS as exc:
        state.unscannable(f"unreadable tar: {type(exc).__name__}")


def _inner_message(ctx: Context, msg: mime.Node, *, path: str, depth: int, arch_depth: int) -> None:
    """A message inside the message (a message/rfc822 part, an ``.eml`` attachment, a
    member of a zip): its headers and parts are walked like mail, with every source
    named after the file it sits in."""
    src = f"attachment:{path}:"
    scan_headers(ctx, msg.info, src)
    walk(ctx, msg, section="", container=path, depth=depth + 1, arch_depth=arch_depth, prefix=src)
