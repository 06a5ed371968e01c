"""Office documents, OLE containers and TNEF: text, classification properties, risk flags.

XML inside documents is read with regular expressions and ``str.find``, not an XML
parser: the inputs are hostile (entity expansion, deep nesting) and what is needed is
small (property values, run text). No pattern here can rescan its input: an element
is found by its opener and then its closer, searched for forward only, and tags are
stripped no further than the last ``>`` (``bounded``). Every read is bounded by the
caller's byte budget and the expansion ratio; whitespace padding is skipped, and a
member cut at a limit is reported in ``DocResult.unread``, never read as if whole.
"""

from __future__ import annotations

import html
import re
import struct
import zipfile
from dataclasses import dataclass, field

from milter.inspect import bounded
from milter.inspect.errors import DocumentError

_TAG = re.compile(r"<[^>]*>")
# ``[^<>]`` rather than ``[^>]``: an attempt stops at the next tag, so a run of openers
# without their ``/>`` is not rescanned from each (no tag holds a ``<`` in XML).
_BREAKS = re.compile(
    r"</(?:w:p|a:p|text:p|text:h|si|row|w:tr|table:table-row)>|<w:br\b[^<>]*/>|<text:line-break/>|"
    r"<w:cr/>|<a:br\b[^<>]*/?>"
)
_TABS = re.compile(r"<w:tab/>|<text:tab/>|</w:tc>|</c>|</table:table-cell>")
_LABELINFO = re.compile(r"<(?:\w+:)?label\b([^<>]*)/?>")
# Only at the start of a word: from inside one, ``\w+`` would retry every suffix.
_ATTR = re.compile(r"(?<!\w)(\w+)=\"([^\"]*)\"")
_TAG_EDGE = re.compile(r"[<>]")
_NUMBERED = re.compile(r"(\d+)")


def xml_text(xml: str) -> str:
    """Visible text of a WordprocessingML/SpreadsheetML/DrawingML/ODF part, line per paragraph."""
    xml = _BREAKS.sub("\n", xml)
    xml = _TABS.sub("\t", xml)
    return html.unescape(bounded.sub_before_last(_TAG, "", xml, ">"))


def elements(xml: str, opener: str, closer: str) -> list[tuple[str, str]]:
    """``(start tag, content)`` of every ``<opener ...>content</closer>``, in order.

    What ``re.findall(opener + r"\b([^>]*)>(.*?)" + closer, xml, re.DOTALL)`` finds, in
    linear time: a start tag ends at its first ``>`` (one with a ``<`` before that is not a
    tag), the content at the next closer, and once no closer is left the search ends,
    where the pattern would have scanned to the end of the text once per opener.
    """
    found: list[tuple[str, str]] = []
    pos = 0
    size = len(opener)
    while True:
        start = xml.find(opener, pos)
        if start == -1:
            return found
        after = start + size
        if after < len(xml) and (xml[after].isalnum() or xml[after] == "_"):
            pos = after  # a longer name (``\b`` fails)
            continue
        edge = _TAG_EDGE.search(xml, after)
        if edge is None:
            return found
        if edge.group() == "<":
            pos = edge.start()
            continue
        close = xml.find(closer, edge.end())
        if close == -1:
            return found
        found.append((xml[after : edge.start()], xml[edge.end() : close]))
        pos = close + len(closer)


def named_elements(xml: str, tag: str, attr: str) -> list[tuple[str, str]]:
    """``(name, content)`` of the ``<tag ... attr="name" ...>content</tag>`` elements."""
    pattern = re.compile(rf"(?<!\w){re.escape(attr)}=\"([^\"]*)\"")
    out = []
    for head, content in elements(xml, f"<{tag}", f"</{tag}>"):
        m = pattern.search(head)
        if m is not None:
            out.append((m.group(1), content))
    return out


def _sort_key(name: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in _NUMBERED.split(name)]


@dataclass
class DocResult:
    """Text and properties of a document, plus flags the scanner turns into Part flags."""

    kind: str = ""
    texts: list[tuple[str, str, bool]] = field(default_factory=list)  # (where, text, marks_all)
    properties: list[tuple[str, str, str]] = field(default_factory=list)  # (where, name, value)
    label_ids: list[tuple[str, str]] = field(default_factory=list)  # (where, guid)
    embedded: list[tuple[str, bytes]] = field(default_factory=list)
    macro: bool = False
    encrypted: bool = False
    reason: str | None = None
    # Why parts of the document were not read in full (a member cut at a limit, text
    # past the text limit): each makes the document unscannable.
    unread: list[str] = field(default_factory=list)
    text_cut: bool = False


MAX_MEMBERS = 5000


class BoundedZip:
    """Reads zip members without trusting their declared sizes (zip bombs lie).

    Each read keeps at most its ``limit`` and the shared ``budget``, and at most the
    expansion ``ratio`` times the member's compressed size; text members are read with
    whitespace padding squeezed out. A read cut at a limit returns what it kept and
    records why in ``cut``; only an exhausted budget is an error.
    """

    def __init__(self, zf: zipfile.ZipFile, budget: int, ratio: float = 100.0) -> None:
        self.zf = zf
        self.budget = budget
        self.ratio = ratio
        infos = zf.infolist()
        self.names = {i.filename: i for i in infos[:MAX_MEMBERS]}
        self.cut: list[str] = []
        if len(infos) > MAX_MEMBERS:
            self.cut.append("archive entry limit reached")

    def read(self, name: str, limit: int = 8 << 20, *, pad: bool = False) -> bytes | None:
        info = self.names.get(name)
        if info is None or info.flag_bits & 0x1:
            return None
        want = min(limit, self.budget)
        if want <= 0:
            raise DocumentError("expansion limit reached")
        with self.zf.open(info) as fh:
            got = bounded.read_member(
                fh, limit=want, compressed=info.compress_size, ratio=self.ratio, pad=pad
            )
        if got.cut == "expanded bytes limit reached" and want == self.budget:
            raise DocumentError("expansion limit reached")
        if got.cut is not None:
            what = "read limit reached" if got.cut.startswith("expanded") else got.cut
            self.cut.append(f"{what} in {name}")
        self.budget -= len(got.data)
        return got.data

    def text(self, name: str, limit: int = 8 << 20) -> str | None:
        data = self.read(name, limit, pad=True)
        return None if data is None else data.decode("utf-8", "replace")


def is_ooxml(names: dict[str, zipfile.ZipInfo]) -> bool:
    return "[Content_Types].xml" in names and any(
        n.startswith(("word/", "xl/", "ppt/")) for n in names
    )


def is_odf(names: dict[str, zipfile.ZipInfo]) -> bool:
    return "mimetype" in names and ("content.xml" in names or "meta.xml" in names)


def _tag_free(xml: str) -> str:
    return html.unescape(bounded.sub_before_last(_TAG, "", xml, ">")).strip()


def custom_properties(xml: str) -> list[tuple[str, str]]:
    """``docProps/custom.xml`` name/value pairs."""
    return [
        (html.unescape(name), _tag_free(value))
        for name, value in named_elements(xml, "property", "name")
    ]


def read_ooxml(bz: BoundedZip, max_text: int) -> DocResult:
    """docx/xlsx/pptx and their macro variants."""
    res = DocResult(kind="ooxml")
    names = bz.names
    res.macro = any(n.lower().endswith("vbaproject.bin") for n in names)
    xml = bz.text("docProps/custom.xml", 1 << 20)
    if xml:
        for name, value in custom_properties(xml):
            res.properties.append(("docProps/custom.xml", name, value))
    for name in names:
        if name.lower().startswith("docmetadata/") and name.lower().endswith(".xml"):
            info = bz.text(name, 1 << 20) or ""
            for m in _LABELINFO.finditer(info):
                attrs = dict(_ATTR.findall(m.group(1)))
                if (
                    attrs.get("enabled", "1") in ("1", "true")
                    and attrs.get("removed", "0") in ("0", "false")
                    and attrs.get("id")
                ):
                    res.label_ids.append((name, attrs["id"]))
    marked: list[str] = []
    body: list[str] = []
    for name in sorted(names, key=_sort_key):
        low = name.lower()
        if re.fullmatch(r"word/(header|footer)\d*\.xml", low) or re.fullmatch(
            r"ppt/(slidemasters/slidemaster|notesmasters/notesmaster)\d*\.xml", low
        ):
            marked.append(name)
        elif low in (
            "word/document.xml",
            "xl/sharedstrings.xml",
            "word/footnotes.xml",
        ) or re.fullmatch(r"ppt/slides/slide\d+\.xml|xl/worksheets/sheet\d+\.xml", low):
            body.append(name)
        elif re.fullmatch(r"(word|xl|ppt)/embeddings/[^/]+", low):
            data = bz.read(name)
            if data is not None:
                res.embedded.append((name.rsplit("/", 1)[1], data))
    used = 0
    for name in marked + body:
        if used >= max_text:
            res.text_cut = True  # this part and those after it are left unread
            break
        part = bz.text(name)
        if part is None:
            continue
        if name.lower().startswith("xl/worksheets/"):
            cells = elements(part, "<is", "</is>")
            part = "".join(f"<is>{content}</is>" for head, content in cells if not head)
        text = xml_text(part)
        if text.strip():
            res.texts.append((name, text[: max_text - used], name in marked))
            used += len(text)
            res.text_cut = res.text_cut or used > max_text
    res.unread.extend(bz.cut)
    return res


def read_odf(bz: BoundedZip, max_text: int) -> DocResult:
    """OpenDocument text, spreadsheet, presentation: user-defined meta fields and text."""
    res = DocResult(kind="odf")
    meta = bz.text("meta.xml", 1 << 20)
    if meta:
        for name, value in named_elements(meta, "meta:user-defined", "meta:name"):
            res.properties.append(("meta.xml", html.unescape(name), _tag_free(value)))
    res.macro = any(
        n.startswith("Basic/") and n.endswith(".xml") and "script-lb" not in n for n in bz.names
    )
    for name, marks_all in (("styles.xml", True), ("content.xml", False)):
        xml = bz.text(name)
        if xml:
            if name == "styles.xml":
                xml = "".join(_headers_footers(xml))
            text = xml_text(xml)
            if text.strip():
                res.texts.append((name, text[:max_text], marks_all))
                res.text_cut = res.text_cut or len(text) > max_text
    res.unread.extend(bz.cut)
    return res


_STYLE_EDGE = re.compile(r"<style:(?:header|footer)\b|</style:(?:header|footer)>")


def _headers_footers(xml: str) -> list[str]:
    """The ``<style:header>``/``<style:footer>`` elements of ODF styles, as
    ``re.findall(r"<style:(?:header|footer)\b.*?</style:(?:header|footer)>")`` finds them
    (an element ends at the first closer of either kind), in one forward pass."""
    out: list[str] = []
    start = -1
    for m in _STYLE_EDGE.finditer(xml):
        if m.group().startswith("</"):
            if start != -1:
                out.append(xml[start : m.end()])
                start = -1
        elif start == -1:
            start = m.start()
    return out


# --- OLE compound files -----------------------------------------------------------

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def _utf16(name: str) -> bytes:
    return name.encode("utf-16-le")


_OLE_ENCRYPTED = (_utf16("EncryptedPackage"), _utf16("EncryptionInfo"))
_OLE_MACRO = (_utf16("_VBA_PROJECT"), _utf16("VBA\x00"), _utf16("Macros"))


def read_ole(data: bytes) -> DocResult:
    """Legacy Office and encrypted OOXML (which is an OLE file holding EncryptedPackage).

    Directory entry names are UTF-16 strings in the file; looking for them is enough
    to tell an encrypted package or a VBA project without walking the FAT.
    """
    res = DocResult(kind="ole")
    if any(marker in data for marker in _OLE_ENCRYPTED):
        res.encrypted = True
        res.reason = "encrypted Office document"
    res.macro = any(marker in data for marker in _OLE_MACRO)
    word = data.find(_utf16("WordDocument"))
    if word != -1 and not res.encrypted and _doc_encrypted(data):
        res.encrypted = True
        res.reason = "encrypted Word document"
    return res


def _doc_encrypted(data: bytes) -> bool:
    """Word 97 FIB ``fEncrypted``: the FIB starts the WordDocument stream (0xA5EC magic)."""
    pos = data.find(b"\xec\xa5", 512)
    while pos != -1 and pos < len(data) - 12:
        nfib = struct.unpack_from("<H", data, pos + 2)[0]
        if pos % 512 == 0 and 0x65 <= nfib <= 0x200:
            flags = struct.unpack_from("<H", data, pos + 10)[0]
            return bool(flags & 0x0100)
        pos = data.find(b"\xec\xa5", pos + 1)
    return False


# --- TNEF (winmail.dat) --------------------------------------------------------------

TNEF_SIGNATURE = b"\x78\x9f\x3e\x22"
_ATT_ATTACH_REND = 0x9002
_ATT_ATTACH_TITLE = 0x8010
_ATT_ATTACH_DATA = 0x800F
_ATT_BODY = 0x800C
_ATT_SUBJECT = 0x8004
_ATT_MAPI_PROPS = 0x9003
_ATT_ATTACHMENT = 0x9005
_PR_ATTACH_LONG_FILENAME = 0x3707


@dataclass
class TnefResult:
    subject: str = ""
    body: str = ""
    attachments: list[tuple[str, bytes]] = field(default_factory=list)


def read_tnef(data: bytes, max_attachments: int) -> TnefResult:
    """Attachments, subject and plain body of a TNEF stream (Outlook's winmail.dat)."""
    if not data.startswith(TNEF_SIGNATURE):
        raise DocumentError("not a TNEF stream")
    res = TnefResult()
    pos = 6
    name: str | None = None
    content: bytes | None = None

    def flush() -> None:
        nonlocal name, content
        if content is not None and len(res.attachments) < max_attachments:
            res.attachments.append((name or f"attachment{len(res.attachments) + 1}", content))
        name, content = None, None

    while pos + 9 <= len(data):
        level = data[pos]
        attr_id, length = struct.unpack_from("<II", data, pos + 1)
        start = pos + 9
        end = start + length
        if level not in (1, 2) or end + 2 > len(data):
            break
        value = data[start:end]
        kind = attr_id & 0xFFFF
        if level == 2 and kind == _ATT_ATTACH_REND:
            flush()
        elif level == 2 and kind == _ATT_ATTACH_TITLE:
            name = value.split(b"\x00", 1)[0].decode("cp1252", "replace")
        elif level == 2 and kind == _ATT_ATTACH_DATA:
            content = value
        elif level == 2 and kind == _ATT_ATTACHMENT:
            long_name = _mapi_long_filename(value)
            if long_name:
                name = long_name
        elif level == 1 and kind == _ATT_SUBJECT:
            res.subject = value.split(b"\x00", 1)[0].decode("cp1252", "replace")
        elif level == 1 and kind == _ATT_BODY:
            res.body = value.decode("cp1252", "replace")
        pos = end + 2
    flush()
    return res


def _mapi_long_filename(props: bytes) -> str | None:
    """PR_ATTACH_LONG_FILENAME from an attAttachment MAPI property block, if present."""
    marker = struct.pack("<HH", 0x001E, _PR_ATTACH_LONG_FILENAME)
    pos = props.find(marker)
    unicode = False
    if pos == -1:
        pos = props.find(struct.pack("<HH", 0x001F, _PR_ATTACH_LONG_FILENAME))
        unicode = True
    if pos == -1 or pos + 16 > len(props):
        return None
    size = struct.unpack_from("<I", props, pos + 8)[0]
    raw = props[pos + 12 : pos + 12 + min(size, 1024)]
    text = raw.decode("utf-16-le" if unicode else "cp1252", "replace")
    return text.rstrip("\x00") or None


# --- archives the standard library cannot open ---------------------------------------

SEVENZIP_MAGIC = b"7z\xbc\xaf\x27\x1c"
RAR4_MAGIC = b"Rar!\x1a\x07\x00"
RAR5_MAGIC = b"Rar!\x1a\x07\x01\x00"


def opaque_archive_encrypted(data: bytes) -> bool | None:
    """7z and RAR: True when the headers show encryption, False if not, None for other data."""
    if data.startswith(SEVENZIP_MAGIC):
        # The AES-256 + SHA-256 coder id appears in the (possibly encoded) header.
        return b"\x06\xf1\x07\x01" in data[-65536:] or b"\x06\xf1\x07\x01" in data[:65536]
    if data.startswith(RAR5_MAGIC):
        pos = len(RAR5_MAGIC) + 4
        _size, pos = _vint(data, pos)
        header_type, _ = _vint(data, pos)
        return header_type == 4
    if data.startswith(RAR4_MAGIC) and len(data) >= 12:
        flags = struct.unpack_from("<H", data, 10)[0]
        if flags & 0x0080:
            return True
        pos = 7 + struct.unpack_from("<H", data, 12)[0] if len(data) >= 14 else len(data)
        if pos + 5 <= len(data) and data[pos + 2] == 0x74:
            return bool(struct.unpack_from("<H", data, pos + 3)[0] & 0x0004)
        return False
    return None


def _vint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        b = data[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            break
        shift += 7
    return value, pos
