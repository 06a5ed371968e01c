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
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from milter.inspect import bounded, drafts, labels
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
    # (where, text, place): place is one of ``labels.PLACES`` (a document body, a page
    # header/footer band, a watermark) and decides which marking forms count in it.
    texts: list[tuple[str, str, str]] = field(default_factory=list)
    # (where, evidence) of a document visibly not final (clause 2.f).
    drafts: list[tuple[str, str]] = field(default_factory=list)
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


_CORE_FIELDS = (
    ("dc:title", "Title"),
    ("dc:subject", "Subject"),
    ("cp:keywords", "Keywords"),
    ("dc:description", "Description"),
    ("cp:category", "Category"),
    ("cp:contentStatus", "ContentStatus"),
)
_TEXTPATH = re.compile(r"<v:textpath\b[^<>]*?\bstring=\"([^\"]{1,200})\"")
_WORD_BAND = re.compile(r"word/(header|footer)\d*\.xml")
_SLIDE_BAND = re.compile(r"ppt/(slidemasters/slidemaster|notesmasters/notesmaster)\d*\.xml")
_SHEET = re.compile(r"xl/worksheets/sheet\d+\.xml")
_SLIDE = re.compile(r"ppt/slides/slide\d+\.xml|xl/drawings/drawing\d+\.xml")


def core_properties(xml: str, fields: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """Title, subject, keywords (and status) of ``docProps/core.xml`` or ODF ``meta.xml``."""
    out = []
    for tag, name in fields:
        for _head, content in elements(xml, f"<{tag}", f"</{tag}>")[:8]:
            value = _tag_free(content)
            if value:
                out.append((name, value))
    return out


def watermarks(xml: str) -> str:
    """Word watermark texts: the ``string`` of VML ``v:textpath`` shapes, one per line."""
    return "\n".join(html.unescape(m.group(1)) for m in _TEXTPATH.finditer(xml))


def read_ooxml(bz: BoundedZip, max_text: int) -> DocResult:
    """docx/xlsx/pptx and their macro variants."""
    res = DocResult(kind="ooxml")
    names = bz.names
    res.macro = any(n.lower().endswith("vbaproject.bin") for n in names)
    xml = bz.text("docProps/custom.xml", 1 << 20)
    if xml:
        for name, value in custom_properties(xml):
            res.properties.append(("docProps/custom.xml", name, value))
    core = bz.text("docProps/core.xml", 1 << 20)
    if core:
        for name, value in core_properties(core, _CORE_FIELDS):
            res.properties.append(("docProps/core.xml", name, value))
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
    sheets: list[str] = []
    for name in sorted(names, key=_sort_key):
        low = name.lower()
        if _WORD_BAND.fullmatch(low) or _SLIDE_BAND.fullmatch(low):
            marked.append(name)
        elif _SHEET.fullmatch(low):
            sheets.append(name)
        elif low in (
            "word/document.xml",
            "word/footnotes.xml",
        ) or _SLIDE.fullmatch(low):
            body.append(name)
        elif re.fullmatch(r"(word|xl|ppt)/embeddings/[^/]+", low):
            data = bz.read(name)
            if data is not None:
                res.embedded.append((name.rsplit("/", 1)[1], data))
    used = 0

    def keep(where: str, text: str, place: str) -> None:
        nonlocal used
        if text.strip():
            res.texts.append((where, text[: max(0, max_text - used)], place))
            used += len(text)
            res.text_cut = res.text_cut or used > max_text

    for name in marked + body:
        if used >= max_text:
            res.text_cut = True  # this part and those after it are left unread
            break
        part = bz.text(name)
        if part is None:
            continue
        marks = watermarks(part) if "v:textpath" in part else ""
        if marks:
            res.texts.append((name, marks, labels.WATERMARK))
        if name == "word/document.xml":
            comments = (
                bz.text("word/comments.xml", 4 << 20) if "word/comments.xml" in names else None
            )
            for evidence in drafts.word_evidence(part, comments):
                res.drafts.append((name, evidence))
        keep(name, xml_text(part), labels.BAND if name in marked else labels.DOCUMENT)
    if sheets or "xl/sharedStrings.xml" in names:
        _read_sheets(bz, sheets, res, max_text - used, keep)
    res.unread.extend(bz.cut)
    return res


# SpreadsheetML header/footer codes: ``&L``/``&C``/``&R`` start a section, ``&"Font,Bold"``,
# ``&12``, ``&K``colour and field codes (``&P`` page, ``&D`` date ...) are formatting.
_HF_CODE = re.compile(r'&(?:"[^"]*"|\d+|K[0-9A-Fa-f]{6}|K\d\d[+-]\d{3}|([LCR])|[A-Za-z]|(&))')
_HF_ELEMENTS = ("oddHeader", "oddFooter", "evenHeader", "evenFooter", "firstHeader", "firstFooter")


def sheet_header_footer(value: str) -> str:
    """The printed text of an xlsx page header or footer, one line per section."""

    def code(m: re.Match[str]) -> str:
        if m.group(1):
            return "\n"
        return "&" if m.group(2) else ""

    return _HF_CODE.sub(code, value)


def children(xml: str, tag: str) -> Iterator[tuple[str, str]]:
    """``(start tag, content)`` of each ``<tag ...>`` element, self-closing ones included
    (with empty content), in one forward pass."""
    pos = 0
    opener = f"<{tag}"
    closer = f"</{tag}>"
    while True:
        start = xml.find(opener, pos)
        if start == -1:
            return
        after = start + len(opener)
        if after < len(xml) and (xml[after].isalnum() or xml[after] in "_:"):
            pos = after
            continue
        edge = _TAG_EDGE.search(xml, after)
        if edge is None or edge.group() == "<":
            if edge is None:
                return
            pos = edge.start()
            continue
        head = xml[after : edge.start()]
        if head.endswith("/"):
            yield head, ""
            pos = edge.end()
            continue
        close = xml.find(closer, edge.end())
        if close == -1:
            return
        yield head, xml[edge.end() : close]
        pos = close + len(closer)


_CELL_REF = re.compile(r'(?<!\w)r="([A-Z]{1,3})\d*"')
_CELL_TYPE = re.compile(r'(?<!\w)t="(\w+)"')


def _column(ref: str) -> int:
    n = 0
    for ch in ref:
        n = n * 26 + ord(ch) - 64
    return n - 1


def _read_sheets(
    bz: BoundedZip,
    sheets: list[str],
    res: DocResult,
    room: int,
    keep: Callable[[str, str, str], None],
) -> None:
    """Worksheets as rows of tab-separated cells, shared strings resolved and numbers
    kept (a NIK column is a column of numbers), so a column header stays above its
    values; page headers and footers as bands. Without worksheets, the shared strings."""
    shared_xml = bz.text("xl/sharedStrings.xml") or ""
    shared = [xml_text(content) for _h, content in children(shared_xml, "si")]
    if not sheets:
        keep("xl/sharedStrings.xml", "\n".join(shared), labels.DOCUMENT)
        return
    for name in sheets:
        if room <= 0:
            res.text_cut = True
            return
        xml = bz.text(name)
        if xml is None:
            continue
        bands = []
        for tag in _HF_ELEMENTS:
            for _h, content in children(xml, tag):
                bands.append(sheet_header_footer(html.unescape(content)))
        if bands:
            keep(name, "\n".join(bands), labels.BAND)
        lines: list[str] = []
        size = 0
        for _h, row in children(xml, "row"):
            cells: list[str] = []
            row_size = 0
            for head, content in children(row, "c"):
                ref = _CELL_REF.search(head)
                if ref is not None:
                    col = _column(ref.group(1))
                    if col < 16384 and col > len(cells):
                        row_size += col - len(cells)
                        cells.extend([""] * (col - len(cells)))
                kind = _CELL_TYPE.search(head)
                t = kind.group(1) if kind else "n"
                if t == "inlineStr":
                    value = xml_text(content)
                else:
                    v = elements(content, "<v", "</v>")
                    value = html.unescape(v[0][1]) if v else ""
                    if t == "s" and value.strip().isdigit():
                        i = int(value)
                        value = shared[i] if i < len(shared) else ""
                cells.append(" ".join(value[:32768].split()))
                row_size += len(cells[-1]) + 1
                if size + row_size > room:
                    break  # one shared string repeated in every cell must not blow up
            line = "\t".join(cells).rstrip("\t")
            lines.append(line)
            size += row_size + 1  # padding counts: empty rows and columns are work too
            if size > room:
                res.text_cut = True
                break
        text = "\n".join(lines)
        keep(name, text, labels.DOCUMENT)
        room -= len(text)


_ODF_META = (
    ("dc:title", "Title"),
    ("dc:subject", "Subject"),
    ("meta:keyword", "Keywords"),
    ("dc:description", "Description"),
)
_WATERMARK_SHAPE = re.compile(r"<draw:custom-shape\b[^<>]*WaterMark", re.IGNORECASE)


def read_odf(bz: BoundedZip, max_text: int) -> DocResult:
    """OpenDocument text, spreadsheet, presentation: meta fields, text, review traces."""
    res = DocResult(kind="odf")
    meta = bz.text("meta.xml", 1 << 20)
    if meta:
        for name, value in named_elements(meta, "meta:user-defined", "meta:name"):
            res.properties.append(("meta.xml", html.unescape(name), _tag_free(value)))
        for name, value in core_properties(meta, _ODF_META):
            res.properties.append(("meta.xml", name, value))
    res.macro = any(
        n.startswith("Basic/") and n.endswith(".xml") and "script-lb" not in n for n in bz.names
    )
    for name, place in (("styles.xml", labels.BAND), ("content.xml", labels.DOCUMENT)):
        xml = bz.text(name)
        if xml:
            if name == "styles.xml":
                xml = "".join(_headers_footers(xml))
            else:
                for evidence in drafts.odf_evidence(xml):
                    res.drafts.append((name, evidence))
            marks = _odf_watermarks(xml)
            if marks:
                res.texts.append((name, marks, labels.WATERMARK))
            text = xml_text(xml)
            if text.strip():
                res.texts.append((name, text[:max_text], place))
                res.text_cut = res.text_cut or len(text) > max_text
    res.unread.extend(bz.cut)
    return res


def _odf_watermarks(xml: str) -> str:
    """Text of LibreOffice watermark shapes (``draw:custom-shape`` named ...WaterMark...)."""
    out = []
    for m in _WATERMARK_SHAPE.finditer(xml):
        end = xml.find("</draw:custom-shape>", m.end())
        if end == -1:
            break  # no closer left: searching again from each opener would rescan
        out.append(_tag_free(xml[m.end() : end].split(">", 1)[-1]))
    return "\n".join(out)


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


# --- PDF document information ---------------------------------------------------------

_PDF_INFO = re.compile(
    rb"/(Title|Subject|Keywords)\s*(\((?:\\.|[^\\)]){0,400}\)|<[0-9A-Fa-f\s]{0,800}>)"
)


def pdf_info_fields(
    data: bytes,
    *,
    found: list[tuple[bytes, bytes]] | None = None,
    object_streams: list[bytes] | None = None,
) -> list[tuple[str, str, str]]:
    """Title, Subject and Keywords of a PDF's document information, as
    ``(where, name, value)``, from the file and its compressed object streams. A caller
    that has already scanned the file passes what ``_PDF_INFO`` finds in it as ``found``
    (name and value) and the ``drafts.pdf_object_streams`` as ``object_streams``."""
    from milter.inspect.pdf import pdf_string

    out: list[tuple[str, str, str]] = []
    for name, token in _pdf_info_pairs(data, found, object_streams):
        value = pdf_string(token).strip()
        entry = ("info", name.decode(), value)
        if value and entry not in out and len(out) < 16:
            out.append(entry)
    return out


def _pdf_info_pairs(
    data: bytes, found: list[tuple[bytes, bytes]] | None, object_streams: list[bytes] | None
) -> Iterator[tuple[bytes, bytes]]:
    if found is None:
        found = [(m.group(1), m.group(2)) for m in _PDF_INFO.finditer(data)]
    yield from found
    for blob in drafts.pdf_object_streams(data) if object_streams is None else object_streams:
        for m in _PDF_INFO.finditer(blob):
            yield m.group(1), m.group(2)


_PDF_STREAM = re.compile(rb"stream\r?\n")
_PDF_STRING = re.compile(rb"\((?:\\.|[^\\)]){0,400}\)|<[0-9A-Fa-f\s]{2,800}>")
_MAX_WATERMARK_STREAMS = 64
_MAX_WATERMARK_BYTES = 2 << 20


def pdf_watermarks(data: bytes, *, inflated: Mapping[int, bytes | int] | None = None) -> str:
    """Text a PDF marks as a watermark, one string per line: marked content
    ``/Artifact << /Subtype /Watermark >> BDC ... EMC`` in page content, and Form XObjects
    an editor tags as watermarks (Acrobat's ``/PieceInfo`` ``/Watermark``). Fonts with
    plain encodings only; a watermark in an embedded CID font reads as nothing here.

    ``inflated`` holds streams the caller has inflated whole, by the offset of their
    data, and is used as zlib's output: the data itself, or its size when it holds no
    ``/Watermark``."""
    if b"FlateDecode" not in data and b"Watermark" not in data:  # the first is found early
        return ""
    from milter.inspect.pdf import pdf_string

    out: list[str] = []
    budget = _MAX_WATERMARK_BYTES
    pos = 0
    for _ in range(_MAX_WATERMARK_STREAMS * 4):
        m = _PDF_STREAM.search(data, pos)
        if m is None or budget <= 0 or len(out) >= 16:
            break
        end = data.find(b"endstream", m.end())
        if end == -1:
            break
        pos = end + 9
        head = data[max(0, m.start() - 512) : m.start()]
        head = head[head.rfind(b"<<") :] if b"<<" in head else head
        if b"/Image" in head or b"/DCTDecode" in head or b"/EmbeddedFile" in head:
            continue
        raw = data[m.end() : end]
        if b"/FlateDecode" in head:
            whole = inflated.get(m.end()) if inflated else None
            if isinstance(whole, int) and b"/Watermark" not in head:
                budget -= min(whole, budget)  # no /Watermark in it: only its size counts
                continue
            if isinstance(whole, bytes):
                body = whole[:budget]
            else:
                try:
                    body = zlib.decompressobj().decompress(raw, budget)
                except zlib.error:
                    continue
        else:
            body = raw[:budget]
        budget -= len(body)
        if b"/Watermark" in head:
            sections = [body]
        else:
            sections = []
            at = body.find(b"/Watermark")
            while at != -1 and len(sections) < 8:
                stop = body.find(b"EMC", at)
                sections.append(body[at : stop if stop != -1 else len(body)])
                if stop == -1:
                    break
                at = body.find(b"/Watermark", stop)
        for section in sections:
            words = [pdf_string(t) for t in _PDF_STRING.findall(section)[:64]]
            text = "".join(w for w in words if w.isprintable()).strip()
            if text:
                out.append(text)
    return "\n".join(out)


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
