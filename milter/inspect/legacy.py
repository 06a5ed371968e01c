"""Legacy Office (.doc, .xls, .ppt) and RTF: their text and document properties.

The binary formats are read with olefile, which parses the compound file (FAT,
directory, streams) and the property sets, and nothing else: it is small, pure Python,
maintained, and has no dependencies. The alternatives extract text by shelling out
(antiword, catdoc: unmaintained C) or bundle many converters (textract), which is more
code to trust than the three record formats needed here:

- Word 97+: the FIB at the start of the ``WordDocument`` stream names the table stream
  and the piece table (CLX), whose pieces are runs of CP1252 or UTF-16 text; headers,
  footers, footnotes and text boxes are pieces too, so a marking there is read.
- Excel 97+ (BIFF8): the shared string table (SST, with its CONTINUE records), LABEL
  cells, HEADER/FOOTER records and formula string results in the ``Workbook`` stream.
- PowerPoint 97+: TextCharsAtom/TextBytesAtom records and header/footer strings in the
  ``PowerPoint Document`` stream.

Every stream is size-checked before it is read (a declared size larger than the budget
is not read at all), every loop is bounded by its input, and ``check`` is called as the
readers go so the message's time budget holds.

RTF is read by a single linear tokenizer (no pattern that can backtrack): control words,
``\\'hh`` escapes, ``\\uN`` with its fallback skipped, ``\\bin`` data skipped, and groups
that are not text (font and colour tables, pictures, objects, field instructions,
``\\*`` destinations) dropped. The document properties in ``\\info`` and
``\\userprops`` are returned as properties. A group stack deeper than ``_MAX_GROUPS``
stops growing (deeper groups share the state of the last one kept), so a million
nested braces cost memory for a few thousand.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from milter.inspect import mime, tnef
from milter.inspect.errors import DocumentError
from milter.inspect.labels import BAND, BODY, DOCUMENT

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f]")


@dataclass
class LegacyText:
    """Text and properties of one legacy document."""

    # (where, text, place): ``labels.DOCUMENT`` for body text, ``labels.BAND`` for page
    # headers and footers, which is how their markings are read
    texts: list[tuple[str, str, str]] = field(default_factory=list)
    properties: list[tuple[str, str, str]] = field(default_factory=list)  # (where, name, value)
    encrypted: bool = False
    reason: str | None = None  # why it was not read in full
    cut: bool = False  # text stopped at the limit
    subject: str = ""  # an Outlook item's subject
    embedded: list[tuple[str, bytes]] = field(default_factory=list)  # an Outlook item's files


def _nothing() -> None:
    return None


# --- OLE ------------------------------------------------------------------------------


def read_ole_text(
    data: bytes, *, max_text: int, budget: int, check: Callable[[], None] = _nothing
) -> LegacyText:
    """Text and properties of a .doc, .xls or .ppt; encrypted ones say so and stop."""
    import olefile

    res = LegacyText()
    try:
        ole = olefile.OleFileIO(io.BytesIO(data))
    except (OSError, ValueError, IndexError, struct.error, RecursionError) as exc:
        res.reason = f"unreadable OLE file: {type(exc).__name__}"
        return res
    errors = (OSError, ValueError, IndexError, KeyError, struct.error, RecursionError, TypeError)
    try:
        with ole:
            if ole.exists("EncryptedPackage") or ole.exists("EncryptedSummary"):
                res.encrypted = True
                return res
            # The mini stream (the root entry's chain) holds every small stream,
            # properties included: olefile reads it whole, at its declared size.
            root = ole.root
            if root.size > len(data):
                raise DocumentError("unreadable OLE file: mini stream larger than the file")
            if root.size:
                _follow(ole, root.isectStart, root.size, len(data))

            def stream(name: str) -> bytes | None:
                nonlocal budget
                if not ole.exists(name):
                    return None
                size = ole.get_size(name)
                if size > budget:
                    raise DocumentError("expanded bytes limit reached")
                check()
                _check_chain(ole, name, size, len(data))
                raw: bytes = ole.openstream(name).read(size)
                if len(raw) != size:
                    raise DocumentError("unreadable OLE file: truncated stream")
                budget -= len(raw)
                return raw

            _properties(ole, res)
            if ole.exists("WordDocument"):
                _word(stream, res, max_text, check)
            elif ole.exists("Workbook") or ole.exists("Book"):
                _excel(stream, res, max_text, check)
            elif ole.exists("PowerPoint Document"):
                _powerpoint(stream, res, max_text, check)
            elif ole.exists("__properties_version1.0"):
                _outlook(ole, stream, res, max_text, check)
    except DocumentError as exc:
        res.reason = str(exc)
    except errors as exc:
        res.reason = f"unreadable OLE file: {type(exc).__name__}"
    return res


def _check_chain(ole: Any, name: str, size: int, file_size: int) -> None:
    """Follow a stream's sector chain in the FAT before reading it: olefile reads a
    chain that loops or runs off the end of the file without complaint (repeating a
    sector, or returning nothing), which would read as a short or garbled document."""
    if size < ole.minisectorcutoff:
        return  # in the mini stream, whose chain was followed when the file was opened
    _follow(ole, ole.direntries[ole._find(name)].isectStart, size, file_size)


def _follow(ole: Any, sect: int, size: int, file_size: int) -> None:
    """Walk ``size`` bytes' worth of a sector chain: every sector in the file, none twice."""
    sectors = (file_size - 1) // ole.sectorsize  # after the header; the last may be short
    need = (size + ole.sectorsize - 1) // ole.sectorsize
    seen: set[int] = set()
    fat = ole.fat
    while len(seen) < need:
        if sect in seen or not 0 <= sect < min(sectors, len(fat)):
            raise DocumentError("unreadable OLE file: bad sector chain")
        seen.add(sect)
        sect = fat[sect]


def _properties(ole: object, res: LegacyText) -> None:
    """Title, subject, keywords, category and the user-defined properties (where Titus
    and Microsoft's labelling write ``Klasifikasi`` or ``MSIP_Label_...`` values)."""
    import olefile

    assert isinstance(ole, olefile.OleFileIO)
    meta = ole.get_metadata()
    for name in ("title", "subject", "keywords", "comments", "category", "company"):
        value = getattr(meta, name, None)
        if isinstance(value, bytes):
            value = value.decode("cp1252", "replace")
        if isinstance(value, str) and value.strip("\x00 "):
            res.properties.append(("SummaryInformation", name, value.strip("\x00 ")))
    if ole.exists("\x05DocumentSummaryInformation"):
        try:
            user = ole.get_userdefined_properties("\x05DocumentSummaryInformation")
        except (OSError, ValueError, IndexError, KeyError, struct.error, TypeError):
            user = []
        for prop in user[:500]:
            name, value = prop.get("property_name"), prop.get("value")
            if isinstance(name, bytes):
                name = name.decode("cp1252", "replace")
            if isinstance(value, bytes):
                value = value.decode("cp1252", "replace")
            if isinstance(name, str) and isinstance(value, str | int):
                res.properties.append(
                    ("DocumentSummaryInformation", name.strip("\x00"), str(value).strip("\x00"))
                )


def _add(
    res: LegacyText, where: str, parts: list[str], max_text: int, *, place: str = DOCUMENT
) -> None:
    text = _CONTROL.sub("\n", "".join(parts))
    if len(text) > max_text:
        text = text[:max_text]
        res.cut = True
    if text.strip():
        res.texts.append((where, text, place))


_Stream = Callable[[str], bytes | None]


def _word(stream: _Stream, res: LegacyText, max_text: int, check: Callable[[], None]) -> None:
    doc = stream("WordDocument")
    if doc is None or len(doc) < 0x1AA or doc[:2] != b"\xec\xa5":
        raise DocumentError("unreadable Word document: no FIB")
    flags = struct.unpack_from("<H", doc, 0x0A)[0]
    if flags & 0x0100:
        res.encrypted = True
        return
    table = stream("1Table" if flags & 0x0200 else "0Table")
    if table is None:
        raise DocumentError("unreadable Word document: no table stream")
    fc, lcb = struct.unpack_from("<II", doc, 0x01A2)
    if fc + lcb > len(table) or lcb == 0:
        raise DocumentError("unreadable Word document: bad piece table")
    clx = table[fc : fc + lcb]
    pos = 0
    while pos < len(clx) and clx[pos] == 0x01:  # Prc: formatting, skipped
        if pos + 3 > len(clx):
            raise DocumentError("unreadable Word document: bad piece table")
        pos += 3 + struct.unpack_from("<H", clx, pos + 1)[0]
    if pos + 5 > len(clx) or clx[pos] != 0x02:
        raise DocumentError("unreadable Word document: bad piece table")
    size = struct.unpack_from("<I", clx, pos + 1)[0]
    plc = clx[pos + 5 : pos + 5 + size]
    count = (len(plc) - 4) // 12
    if count <= 0:
        return
    cps = struct.unpack_from(f"<{count + 1}I", plc, 0)
    parts: list[str] = []
    total = 0
    for i in range(count):
        if i % 64 == 0:
            check()
        start, stop = cps[i], cps[i + 1]
        if stop <= start:
            continue
        chars = min(stop - start, max_text - total + 1)
        raw_fc = struct.unpack_from("<I", plc, 4 * (count + 1) + 8 * i + 2)[0]
        if raw_fc & 0x40000000:
            offset = (raw_fc & 0x3FFFFFFF) // 2
            piece = doc[offset : offset + chars].decode("cp1252", "replace")
        else:
            offset = raw_fc & 0x3FFFFFFF
            piece = doc[offset : offset + 2 * chars].decode("utf-16-le", "replace")
        parts.append(piece)
        total += len(piece)
        if total > max_text:
            break
    # Character positions: the main text, then footnotes, then headers and footers.
    full = "".join(parts)
    main, notes, heads = struct.unpack_from("<iii", doc, 0x4C)
    if main >= 0 and notes >= 0 and heads > 0 and main + notes + heads <= len(full):
        band = full[main + notes : main + notes + heads]
        _add(res, "WordDocument:headers", [_word_fields(band)], max_text, place=BAND)
    _add(res, "WordDocument", [_word_fields(full)], max_text)


def _word_fields(text: str) -> str:
    """Drop field instructions (between 0x13 and 0x14 or 0x15), keep their results."""
    if "\x13" not in text:
        return text
    out: list[str] = []
    fields: list[bool] = []  # per open field: still in its instructions
    hidden = 0  # open fields in their instructions
    for ch in text:
        if ch == "\x13":
            fields.append(True)
            hidden += 1
        elif ch == "\x14" and fields:
            if fields[-1]:
                fields[-1] = False
                hidden -= 1
        elif ch == "\x15" and fields:
            if fields.pop():
                hidden -= 1
        elif hidden == 0:
            out.append(ch)
    return "".join(out)


_MAX_ITEM_FILES = 1000


def _outlook(
    ole: Any, stream: _Stream, res: LegacyText, max_text: int, check: Callable[[], None]
) -> None:
    """An Outlook item (.msg, MS-OXMSG): subject, plain, HTML and compressed RTF bodies
    (MAPI properties 0x0037, 0x1000, 0x1013, 0x1009 as ``__substg1.0_`` streams), and
    attached files, which the caller examines like any attachment."""

    def prop(tag: str, where: str = "") -> str | None:
        prefix = f"{where}/" if where else ""
        raw = stream(f"{prefix}__substg1.0_{tag}001F")
        if raw is not None:
            return raw.decode("utf-16-le", "replace").rstrip("\x00")
        raw = stream(f"{prefix}__substg1.0_{tag}001E")
        return None if raw is None else raw.decode("cp1252", "replace").rstrip("\x00")

    res.subject = prop("0037") or ""
    body = prop("1000")
    if body:
        _add(res, "body", [body], max_text, place=BODY)
    html = stream("__substg1.0_10130102")
    if html:
        _add(res, "html", [mime.html_to_text(mime.decode_text(html, None))], max_text, place=BODY)
    rtf = stream("__substg1.0_10090102")
    if rtf:
        try:
            raw, cut = tnef.decompress_rtf(rtf, max(max_text, 1) * 4)
        except (DocumentError, struct.error):
            raw, cut = b"", False
        if cut:
            res.cut = True
        read = rtf_text(raw, max_text=max_text, check=check)
        for where, text, _place in read.texts:
            res.texts.append((f"rtf:{where}", text, BODY if where == "text" else BAND))
    folders = sorted(
        {e[0] for e in ole.listdir(streams=True, storages=True) if e[0].startswith("__attach")}
    )
    for index, folder in enumerate(folders[:_MAX_ITEM_FILES]):
        check()
        data = stream(f"{folder}/__substg1.0_37010102")
        if data is None:
            continue  # an attached Outlook item or OLE object: not a file
        name = prop("3707", folder) or prop("3704", folder) or f"attachment{index + 1}"
        res.embedded.append((name.replace("/", "_"), data))


_BIFF_SST = 0x00FC
_BIFF_CONTINUE = 0x003C
_BIFF_LABEL = 0x0204
_BIFF_STRING = 0x0207
_BIFF_HEADER = 0x0014
_BIFF_FOOTER = 0x0015
_BIFF_FILEPASS = 0x002F


def _excel(stream: _Stream, res: LegacyText, max_text: int, check: Callable[[], None]) -> None:
    book = stream("Workbook") or stream("Book")
    if book is None:
        return
    parts: list[str] = []
    total = 0
    pos = 0
    records = 0
    while pos + 4 <= len(book) and total <= max_text:
        rtype, size = struct.unpack_from("<HH", book, pos)
        body = book[pos + 4 : pos + 4 + size]
        pos += 4 + size
        records += 1
        if records % 4096 == 0:
            check()
        if rtype == _BIFF_FILEPASS:
            res.encrypted = True
            return
        if rtype == _BIFF_SST:
            segments = [body[8:]]
            while pos + 4 <= len(book):
                ntype, nsize = struct.unpack_from("<HH", book, pos)
                if ntype != _BIFF_CONTINUE:
                    break
                segments.append(book[pos + 4 : pos + 4 + nsize])
                pos += 4 + nsize
            count = struct.unpack_from("<I", body, 4)[0] if len(body) >= 8 else 0
            for text in _sst_strings(segments, count, max_text - total):
                parts.append(text + "\n")
                total += len(text) + 1
        elif rtype in (_BIFF_LABEL, _BIFF_STRING, _BIFF_HEADER, _BIFF_FOOTER):
            start = 6 if rtype == _BIFF_LABEL else 0
            if len(body) >= start + 3:
                text = _xl_string([body[start:]], 0, 0)[0]
                parts.append(text + "\n")
                total += len(text) + 1
    if total > max_text:
        res.cut = True
    _add(res, "Workbook", parts, max_text)


def _sst_strings(segments: list[bytes], count: int, room: int) -> list[str]:
    """The SST's strings, which may continue from one record into the next."""
    out: list[str] = []
    seg, off = 0, 0
    kept = 0
    for _ in range(min(count, 1 << 20)):
        if seg >= len(segments) or kept > room:
            break
        if off >= len(segments[seg]):
            seg, off = seg + 1, 0
            continue
        try:
            text, seg, off = _xl_string(segments, seg, off)
        except (IndexError, struct.error):
            break
        out.append(text)
        kept += len(text)
    return out


def _xl_string(segments: list[bytes], seg: int, off: int) -> tuple[str, int, int]:
    """An XLUnicodeRichExtendedString at ``segments[seg][off]``; its characters may
    cross into the next segment, which then starts with a fresh option byte."""
    data = segments[seg]
    if off + 3 > len(data):
        raise IndexError("short string")
    cch = struct.unpack_from("<H", data, off)[0]
    flags = data[off + 2]
    off += 3
    runs = ext = 0
    if flags & 0x08:
        runs = struct.unpack_from("<H", data, off)[0]
        off += 2
    if flags & 0x04:
        ext = struct.unpack_from("<I", data, off)[0]
        off += 4
    chars: list[str] = []
    left = cch
    wide = bool(flags & 0x01)
    while left > 0:
        data = segments[seg]
        if off >= len(data):
            seg += 1
            if seg >= len(segments):
                break
            data = segments[seg]
            wide = bool(data[0] & 0x01)
            off = 1
        width = 2 if wide else 1
        take = min(left, (len(data) - off) // width)
        if take <= 0:
            off = len(data)
            continue
        raw = data[off : off + take * width]
        chars.append(raw.decode("utf-16-le" if wide else "latin-1", "replace"))
        off += take * width
        left -= take
    skip = 4 * runs + ext
    while skip > 0 and seg < len(segments):
        step = min(skip, len(segments[seg]) - off)
        skip -= step
        off += step
        if skip > 0:
            seg, off = seg + 1, 0
    return "".join(chars), seg, off


_PPT_TEXT_CHARS = 0x0FA0
_PPT_TEXT_BYTES = 0x0FA8
_PPT_CSTRING = 0x0FBA


def _powerpoint(stream: _Stream, res: LegacyText, max_text: int, check: Callable[[], None]) -> None:
    doc = stream("PowerPoint Document")
    if doc is None:
        return
    parts: list[str] = []
    total = 0
    pos = 0
    records = 0
    while pos + 8 <= len(doc) and total <= max_text:
        ver_inst, rtype, size = struct.unpack_from("<HHI", doc, pos)
        records += 1
        if records % 4096 == 0:
            check()
        if ver_inst & 0x000F == 0x000F:  # a container: its records follow
            pos += 8
            continue
        body = doc[pos + 8 : pos + 8 + size]
        pos += 8 + size
        text = None
        if rtype == _PPT_TEXT_CHARS or (rtype == _PPT_CSTRING and ver_inst >> 4 in (0x10, 0x11)):
            text = body.decode("utf-16-le", "replace")
        elif rtype == _PPT_TEXT_BYTES:
            text = body.decode("cp1252", "replace")
        if text:
            text = text.replace("\r", "\n").replace("\x0b", "\n")
            parts.append(text + "\n")
            total += len(text) + 1
    if total > max_text:
        res.cut = True
    _add(res, "PowerPoint Document", parts, max_text)


# --- RTF ------------------------------------------------------------------------------

_MAX_GROUPS = 4096
_RTF_TOKEN = re.compile(
    r"\\([a-zA-Z]{1,32})(-?[0-9]{1,10})? ?"  # control word and parameter
    r"|\\'([0-9a-fA-F]{2})"  # hex escape
    r"|\\([^a-zA-Z'])"  # control symbol
    r"|(\{+|\}+)"  # a run of braces: a million nested groups are one token
    r"|([^\\{}\r\n]+)"  # text
    r"|[\r\n]+"
    r"|\\",
    re.DOTALL,
)
# Groups whose content is not document text.
_SKIP = frozenset(
    {
        "fonttbl",
        "colortbl",
        "stylesheet",
        "listtable",
        "listoverridetable",
        "revtbl",
        "rsidtbl",
        "pict",
        "object",
        "objdata",
        "fldinst",
        "themedata",
        "colorschememapping",
        "datastore",
        "latentstyles",
        "xmlnstbl",
        "filetbl",
        "generator",
        "pgdsctbl",
        "author",
        "operator",
        "creatim",
        "revtim",
        "printim",
        "buptim",
        "nonshppict",
        "bkmkstart",
        "bkmkend",
        "xe",
        "tc",
        "private",
        "mmathPr",
    }
)
_PROPERTY = frozenset({"title", "subject", "keywords", "category", "doccomm", "company"})
_BANDS = frozenset(
    {"header", "footer", "headerl", "headerr", "headerf", "footerl", "footerr", "footerf"}
)
_BREAK = frozenset({"par", "line", "sect", "page", "row", "pard"})
_TAB = frozenset({"tab", "cell"})
_SYMBOLS = {"~": "\u00a0", "_": "-", "-": "", "{": "{", "}": "}", "\\": "\\", "\t": "\t"}


@dataclass
class _Group:
    skip: bool = False
    uc: int = 1
    capture: str | None = None  # property being read: title, propname, staticval ...
    band: bool = False  # in a page header or footer


def rtf_text(data: bytes, *, max_text: int, check: Callable[[], None] = _nothing) -> LegacyText:
    """Visible text and ``\\info``/``\\userprops`` properties of an RTF document."""
    res = LegacyText()
    src = data.decode("latin-1")
    codepage = "cp1252"
    m = re.search(r"\\ansicpg([0-9]{1,5})", src[:4096])
    if m:
        codepage = f"cp{m.group(1)}"
        try:
            b"".decode(codepage)
        except LookupError:
            codepage = "cp1252"
    out: list[str] = []
    bands: list[str] = []
    total = 0
    stack: list[_Group] = [_Group()]
    overflow = 0  # groups opened past _MAX_GROUPS, sharing the top state
    state = stack[-1]
    captured: dict[str, list[str]] = {}
    props: list[tuple[str, str]] = []
    propname = ""
    skip_chars = 0  # \uN fallback characters still to skip
    pending_star = False
    pos = 0
    tokens = 0
    hexbuf = bytearray()

    def emit(text: str) -> None:
        nonlocal total
        if state.capture is not None:
            captured.setdefault(state.capture, []).append(text)
        elif not state.skip:
            (bands if state.band else out).append(text)
            total += len(text)

    def flush_hex() -> None:
        if hexbuf:
            emit(bytes(hexbuf).decode(codepage, "replace"))
            hexbuf.clear()

    while pos < len(src) and total <= max_text:
        m = _RTF_TOKEN.match(src, pos)
        if m is None:  # cannot happen: every character starts some alternative
            break
        pos = m.end()
        tokens += 1
        if tokens % 8192 == 0:
            check()
        word, param, hexd, symbol, brace, text = m.groups()
        if hexd is not None:
            if skip_chars:
                skip_chars -= 1
                continue
            hexbuf.append(int(hexd, 16))
            continue
        flush_hex()
        if brace is not None and brace[0] == "{":
            room = min(len(brace), _MAX_GROUPS - len(stack))
            for _ in range(room):
                stack.append(_Group(state.skip, state.uc, state.capture, state.band))
            state = stack[-1]
            overflow += len(brace) - room
            pending_star = False
            continue
        if brace is not None:
            count = len(brace)
            shared = min(overflow, count)
            overflow -= shared
            for _ in range(min(count - shared, len(stack) - 1)):
                closed = stack.pop()
                state = stack[-1]
                if closed.capture is not None and closed.capture != state.capture:
                    value = "".join(captured.pop(closed.capture, [])).strip()
                    if closed.capture == "propname":
                        propname = value
                    elif closed.capture == "staticval":
                        if propname:
                            props.append((propname, value))
                        propname = ""
                    elif value:
                        props.append((closed.capture, value))
            skip_chars = 0
            continue
        if word is not None:
            if word == "bin" and param:
                pos += max(0, int(param))
                continue
            if skip_chars and word != "u":
                skip_chars -= 1
                continue
            if pending_star or word in _SKIP:
                pending_star = False
                if word in ("userprops", "info"):
                    continue
                if word in ("propname", "staticval"):
                    state.capture = word
                    continue
                state.skip = True
                continue
            if word in _BANDS:
                state.band = True
                emit("\n")
                continue
            if word in _PROPERTY and not state.skip:
                state.capture = word
                continue
            if word in ("propname", "staticval"):
                state.capture = word
                continue
            if word == "uc" and param:
                state.uc = max(0, min(int(param), 16))
            elif word == "u" and param:
                code = int(param)
                emit(chr((code + 65536) % 65536 if code < 0 else min(code, 0x10FFFF)))
                skip_chars = state.uc
            elif word in _BREAK:
                emit("\n")
            elif word in _TAB:
                emit("\t")
            elif word == "emdash":
                emit("\u2014")
            continue
        if symbol is not None:
            if symbol == "*":
                pending_star = True
            elif symbol in ("\r", "\n"):
                emit("\n")
            elif skip_chars:
                skip_chars -= 1
            else:
                emit(_SYMBOLS.get(symbol, ""))
            continue
        if text is not None:
            if skip_chars:
                drop = min(skip_chars, len(text))
                skip_chars -= drop
                text = text[drop:]
            if text:
                emit(text)
    flush_hex()
    if total > max_text:
        res.cut = True
    body = _CONTROL.sub("", "".join(out))[:max_text]
    if body.strip():
        res.texts.append(("text", body, DOCUMENT))
    band = _CONTROL.sub("", "".join(bands))[:max_text]
    if band.strip():
        res.texts.append(("headers", band, BAND))
    for name, value in props[:500]:
        res.properties.append(("info", name, value))
    return res


def is_rtf(data: bytes) -> bool:
    return data[:64].lstrip().startswith(b"{\\rtf")
