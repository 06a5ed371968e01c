"""Real documents for the labelled fixtures: WordprocessingML, SpreadsheetML, OpenDocument
and PDF written part by part with ``zipfile``, in the shapes Word, Excel, LibreOffice and
PDF editors write them (headers and footers in their own parts, VML watermarks, text
boxes, tracked changes, comments, page header codes, review annotations).

LibreOffice opens every document built here; ``make.py`` also converts some with
``soffice --headless`` so a few fixtures are what the office suite itself wrote.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Sequence
from email.message import EmailMessage
from xml.sax.saxutils import escape, quoteattr

from bench.messages import pdf_file

W_NS = (
    'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" '
    'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships" '
    'xmlns:v="urn:schemas-microsoft-com:vml" '
    'xmlns:o="urn:schemas-microsoft-com:office:office"'
)
DOCX_MAIN = "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"
XLSX_MAIN = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"
REL_DOC = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"
REL_CORE = "http://schemas.openxmlformats.org/package/2006/relationships/metadata/core-properties"
REL_BASE = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/"


def _zip(members: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            if name == "mimetype":
                zf.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_STORED)
            else:
                zf.writestr(name, data)
    return buf.getvalue()


def _core(props: dict[str, str] | None) -> str:
    tags = {
        "title": "dc:title",
        "subject": "dc:subject",
        "keywords": "cp:keywords",
        "description": "dc:description",
        "status": "cp:contentStatus",
    }
    body = "".join(
        f"<{tags[k]}>{escape(v)}</{tags[k]}>" for k, v in (props or {}).items() if k in tags
    )
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/'
        'metadata/core-properties" xmlns:dc="http://purl.org/dc/elements/1.1/">'
        f"{body}<dc:creator>Sekretariat</dc:creator></cp:coreProperties>"
    )


# --- Word ----------------------------------------------------------------------------


def _run(text: str) -> str:
    return f'<w:r><w:t xml:space="preserve">{escape(text)}</w:t></w:r>'


def _para(text: str, *, center: bool = False) -> str:
    ppr = '<w:pPr><w:jc w:val="center"/></w:pPr>' if center else ""
    return f"<w:p>{ppr}{_run(text)}</w:p>"


def _table(rows: Sequence[Sequence[str]]) -> str:
    out = ["<w:tbl><w:tblPr><w:tblW w:w='0' w:type='auto'/></w:tblPr>"]
    for row in rows:
        out.append("<w:tr>")
        for cell in row:
            out.append(
                f"<w:tc><w:tcPr><w:tcW w:w='2000' w:type='dxa'/></w:tcPr>{_para(cell)}</w:tc>"
            )
        out.append("</w:tr>")
    out.append("</w:tbl>")
    return "".join(out)


def _textbox(lines: Sequence[str]) -> str:
    inner = "".join(_para(x, center=True) for x in lines)
    return (
        '<w:p><w:r><w:pict><v:shape id="Stempel" style="width:120pt;height:40pt" '
        'type="#_x0000_t202"><v:textbox><w:txbxContent>'
        f"{inner}</w:txbxContent></v:textbox></v:shape></w:pict></w:r></w:p>"
    )


def _watermark(text: str) -> str:
    return (
        '<w:p><w:r><w:pict><v:shape id="PowerPlusWaterMarkObject1" o:spid="_x0000_s2049" '
        'type="#_x0000_t136" style="position:absolute;rotation:315;width:400pt;height:100pt">'
        f'<v:textpath style="font-family:&quot;Calibri&quot;" string={quoteattr(text)}/>'
        "</v:shape></w:pict></w:r></w:p>"
    )


def docx(
    paragraphs: Sequence[str],
    *,
    header: Sequence[str] = (),
    footer: Sequence[str] = (),
    watermark: str | None = None,
    table: Sequence[Sequence[str]] = (),
    textbox: Sequence[str] = (),
    page_break_before: Sequence[str] = (),
    tracked: bool = False,
    comments: Sequence[str] = (),
    core: dict[str, str] | None = None,
) -> bytes:
    """A Word document: body paragraphs, then an optional letter table, a text box
    (a stamp), paragraphs after a page break; header/footer parts; a VML watermark in
    the header; tracked insertions/deletions; comments."""
    body = [_table(table)] if table else []
    body += [_para(p) for p in paragraphs]
    if tracked:
        body.append(
            '<w:p><w:ins w:id="1" w:author="Editor" w:date="2024-05-01T10:00:00Z">'
            f"{_run('Kalimat tambahan dari penyunting.')}</w:ins>"
            '<w:del w:id="2" w:author="Editor" w:date="2024-05-01T10:01:00Z">'
            '<w:r><w:delText xml:space="preserve">Kalimat lama.</w:delText></w:r></w:del></w:p>'
        )
    if comments:
        body.append(
            '<w:p><w:commentRangeStart w:id="0"/>'
            f"{_run('Bagian yang dikomentari.')}"
            '<w:commentRangeEnd w:id="0"/><w:r><w:commentReference w:id="0"/></w:r></w:p>'
        )
    if textbox:
        body.append(_textbox(textbox))
    if page_break_before:
        body.append('<w:p><w:r><w:br w:type="page"/></w:r></w:p>')
        body += [_para(p) for p in page_break_before]
    rels = [f'<Relationship Id="rIdS" Type="{REL_BASE}styles" Target="styles.xml"/>']
    overrides = [
        f'<Override PartName="/word/document.xml" ContentType="{DOCX_MAIN}"/>',
        '<Override PartName="/word/styles.xml" ContentType="application/vnd.openxmlformats-'
        'officedocument.wordprocessingml.styles+xml"/>',
        '<Override PartName="/docProps/core.xml" ContentType="application/vnd.openxmlformats-'
        'package.core-properties+xml"/>',
    ]
    members: dict[str, str | bytes] = {}
    sect = []
    header_xml = "".join(_para(h, center=True) for h in header)
    if watermark:
        header_xml += _watermark(watermark)
    for kind, content in (("header", header_xml), ("footer", "".join(_para(f) for f in footer))):
        if not content:
            continue
        tag = "hdr" if kind == "header" else "ftr"
        members[f"word/{kind}1.xml"] = (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            f"<w:{tag} {W_NS}>{content}</w:{tag}>"
        )
        rels.append(f'<Relationship Id="rId{kind}" Type="{REL_BASE}{kind}" Target="{kind}1.xml"/>')
        overrides.append(
            f'<Override PartName="/word/{kind}1.xml" ContentType="application/vnd.openxmlformats-'
            f'officedocument.wordprocessingml.{kind}+xml"/>'
        )
        sect.append(f'<w:{kind}Reference w:type="default" r:id="rId{kind}"/>')
    if comments:
        items = "".join(
            f'<w:comment w:id="{i}" w:author="Kabid" w:date="2024-05-01T09:00:00Z" w:initials="K">'
            f"{_para(c)}</w:comment>"
            for i, c in enumerate(comments)
        )
        members["word/comments.xml"] = (
            f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:comments {W_NS}>'
            f"{items}</w:comments>"
        )
        rels.append(f'<Relationship Id="rIdC" Type="{REL_BASE}comments" Target="comments.xml"/>')
        overrides.append(
            '<Override PartName="/word/comments.xml" ContentType="application/vnd.openxmlformats-'
            'officedocument.wordprocessingml.comments+xml"/>'
        )
    sect_xml = f"<w:sectPr>{''.join(sect)}<w:pgSz w:w='11906' w:h='16838'/></w:sectPr>"
    members["[Content_Types].xml"] = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
        'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
        f"{''.join(overrides)}</Types>"
    )
    members["_rels/.rels"] = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        f'<Relationship Id="rId1" Type="{REL_DOC}" Target="word/document.xml"/>'
        f'<Relationship Id="rId2" Type="{REL_CORE}" Target="docProps/core.xml"/>'
        "</Relationships>"
    )
    members["word/_rels/document.xml.rels"] = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        f"{''.join(rels)}</Relationships>"
    )
    members["word/styles.xml"] = (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:styles {W_NS}/>'
    )
    members["word/document.xml"] = (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:document {W_NS}>'
        f"<w:body>{''.join(body)}{sect_xml}</w:body></w:document>"
    )
    members["docProps/core.xml"] = _core(core)
    return _zip(members)


# --- Excel ---------------------------------------------------------------------------


def _col(i: int) -> str:
    name = ""
    i += 1
    while i:
        i, rem = divmod(i - 1, 26)
        name = chr(65 + rem) + name
    return name


def xlsx(
    rows: Sequence[Sequence[str | int]],
    *,
    odd_header: str | None = None,
    odd_footer: str | None = None,
    inline: bool = False,
    core: dict[str, str] | None = None,
) -> bytes:
    """A workbook of one sheet: text in shared strings (or inline strings), numbers as
    numeric cells, and page header/footer codes (``&C...``) as Excel writes them."""
    shared: list[str] = []
    index: dict[str, int] = {}
    xml_rows = []
    for r, row in enumerate(rows, 1):
        cells = []
        for c, value in enumerate(row):
            ref = f"{_col(c)}{r}"
            if isinstance(value, int):
                cells.append(f'<c r="{ref}"><v>{value}</v></c>')
            elif inline:
                cells.append(f'<c r="{ref}" t="inlineStr"><is><t>{escape(value)}</t></is></c>')
            else:
                if value not in index:
                    index[value] = len(shared)
                    shared.append(value)
                cells.append(f'<c r="{ref}" t="s"><v>{index[value]}</v></c>')
        xml_rows.append(f'<row r="{r}">{"".join(cells)}</row>')
    hf = ""
    if odd_header or odd_footer:
        hf = "<headerFooter>"
        if odd_header:
            hf += f"<oddHeader>{escape(odd_header)}</oddHeader>"
        if odd_footer:
            hf += f"<oddFooter>{escape(odd_footer)}</oddFooter>"
        hf += "</headerFooter>"
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    sheet = (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><worksheet {ns} '
        'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
        f"<sheetData>{''.join(xml_rows)}</sheetData>{hf}</worksheet>"
    )
    members: dict[str, str | bytes] = {
        "[Content_Types].xml": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
            'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
            f'<Override PartName="/xl/workbook.xml" ContentType="{XLSX_MAIN}"/>'
            '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
            '<Override PartName="/xl/sharedStrings.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>'
            '<Override PartName="/docProps/core.xml" ContentType="application/'
            'vnd.openxmlformats-package.core-properties+xml"/></Types>'
        ),
        "_rels/.rels": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/'
            f'relationships"><Relationship Id="rId1" Type="{REL_DOC}" Target="xl/workbook.xml"/>'
            f'<Relationship Id="rId2" Type="{REL_CORE}" Target="docProps/core.xml"/>'
            "</Relationships>"
        ),
        "xl/workbook.xml": (
            f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><workbook {ns} '
            'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
            '<sheets><sheet name="Data" sheetId="1" r:id="rId1"/></sheets></workbook>'
        ),
        "xl/_rels/workbook.xml.rels": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/'
            f'relationships"><Relationship Id="rId1" Type="{REL_BASE}worksheet" '
            'Target="worksheets/sheet1.xml"/><Relationship Id="rId2" '
            f'Type="{REL_BASE}sharedStrings" Target="sharedStrings.xml"/></Relationships>'
        ),
        "xl/worksheets/sheet1.xml": sheet,
        "xl/sharedStrings.xml": (
            f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><sst {ns} '
            f'count="{len(shared)}" uniqueCount="{len(shared)}">'
            + "".join(f"<si><t>{escape(s)}</t></si>" for s in shared)
            + "</sst>"
        ),
        "docProps/core.xml": _core(core),
    }
    return _zip(members)


# --- OpenDocument --------------------------------------------------------------------

ODF_NS = (
    'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
    'xmlns:style="urn:oasis:names:tc:opendocument:xmlns:style:1.0" '
    'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
    'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
    'xmlns:draw="urn:oasis:names:tc:opendocument:xmlns:drawing:1.0" '
    'xmlns:svg="urn:oasis:names:tc:opendocument:xmlns:svg-compatible:1.0" '
    'xmlns:fo="urn:oasis:names:tc:opendocument:xmlns:xsl-fo-compatible:1.0" '
    'xmlns:dc="http://purl.org/dc/elements/1.1/" '
    'xmlns:meta="urn:oasis:names:tc:opendocument:xmlns:meta:1.0" '
    'xmlns:office-version="1.3" office:version="1.3"'
)


def odt(
    paragraphs: Sequence[str],
    *,
    header: Sequence[str] = (),
    watermark: str | None = None,
    table: Sequence[Sequence[str]] = (),
    tracked: bool = False,
    title: str | None = None,
) -> bytes:
    """An OpenDocument text: paragraphs, a letter table, a header (with a LibreOffice
    watermark shape), tracked changes, a title in meta.xml."""
    body = []
    if tracked:
        body.append(
            '<text:tracked-changes><text:changed-region text:id="ct1"><text:deletion>'
            "<office:change-info><dc:creator>Editor</dc:creator><dc:date>2024-05-01T10:00:00"
            "</dc:date></office:change-info><text:p>Kalimat lama.</text:p></text:deletion>"
            "</text:changed-region></text:tracked-changes>"
        )
    if table:
        body.append('<table:table table:name="Kop">')
        body.append(f'<table:table-column table:number-columns-repeated="{len(table[0])}"/>')
        for row in table:
            cells = "".join(
                f'<table:table-cell office:value-type="string"><text:p>{escape(c)}</text:p>'
                "</table:table-cell>"
                for c in row
            )
            body.append(f"<table:table-row>{cells}</table:table-row>")
        body.append("</table:table>")
    body += [f"<text:p>{escape(p)}</text:p>" for p in paragraphs]
    head = "".join(f"<text:p>{escape(h)}</text:p>" for h in header)
    if watermark:
        head += (
            '<text:p><draw:custom-shape draw:name="PowerPlusWaterMarkObject1" '
            'text:anchor-type="char" svg:width="15cm" svg:height="4cm">'
            f"<text:p>{escape(watermark)}</text:p></draw:custom-shape></text:p>"
        )
    styles = (
        f'<?xml version="1.0" encoding="UTF-8"?><office:document-styles {ODF_NS}>'
        '<office:master-styles><style:master-page style:name="Standard">'
        + (f"<style:header>{head}</style:header>" if head else "")
        + "</style:master-page></office:master-styles></office:document-styles>"
    )
    content = (
        f'<?xml version="1.0" encoding="UTF-8"?><office:document-content {ODF_NS}>'
        f"<office:body><office:text>{''.join(body)}</office:text></office:body>"
        "</office:document-content>"
    )
    meta = (
        f'<?xml version="1.0" encoding="UTF-8"?><office:document-meta {ODF_NS}><office:meta>'
        + (f"<dc:title>{escape(title)}</dc:title>" if title else "")
        + "</office:meta></office:document-meta>"
    )
    manifest = (
        '<?xml version="1.0" encoding="UTF-8"?><manifest:manifest xmlns:manifest="urn:oasis:'
        'names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.3">'
        '<manifest:file-entry manifest:full-path="/" manifest:media-type="application/'
        'vnd.oasis.opendocument.text"/>'
        + "".join(
            f'<manifest:file-entry manifest:full-path="{n}" manifest:media-type="text/xml"/>'
            for n in ("content.xml", "styles.xml", "meta.xml")
        )
        + "</manifest:manifest>"
    )
    return _zip(
        {
            "mimetype": "application/vnd.oasis.opendocument.text",
            "content.xml": content,
            "styles.xml": styles,
            "meta.xml": meta,
            "META-INF/manifest.xml": manifest,
        }
    )


# --- PDF -----------------------------------------------------------------------------


def _pdf_text(s: str) -> str:
    return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def pdf(
    pages: Sequence[Sequence[str]],
    *,
    info: dict[str, str] | None = None,
    annotations: Sequence[str] = (),
    watermark: str | None = None,
) -> bytes:
    """A PDF of pages of Helvetica lines (first line at the top, last at the bottom of
    the page, like a header and a footer), an Info dictionary, review annotations of
    the given subtypes on the first page, and an optional diagonal watermark text."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    font = 3
    objects.append(
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
    )
    annot_refs: list[int] = []
    for i, subtype in enumerate(annotations):
        objects.append(
            f"<< /Type /Annot /Subtype /{subtype} /Rect [100 {600 - 40 * i} 300 {620 - 40 * i}] "
            f"/Contents (Mohon diperbaiki) /T (Kabid) >>".encode("latin-1")
        )
        annot_refs.append(len(objects))
    for n, lines in enumerate(pages):
        ops = ["BT", "/F1 11 Tf", "40 800 Td"]
        body = list(lines)
        if len(body) > 2:
            ops.append(f"({_pdf_text(body[0])}) Tj")
            ops.append("0 -40 Td 14 TL")
            for line in body[1:-1]:
                ops.append(f"({_pdf_text(line)}) Tj T*")
            ops.append("ET BT /F1 11 Tf 280 40 Td")
            ops.append(f"({_pdf_text(body[-1])}) Tj")
        else:
            for line in body:
                ops.append(f"({_pdf_text(line)}) Tj 0 -14 Td")
        ops.append("ET")
        if watermark:
            ops.append(
                "/Artifact << /Type /Pagination /Subtype /Watermark >> BDC "
                f"BT /F1 60 Tf 0.7 0.7 -0.7 0.7 150 300 Tm ({_pdf_text(watermark)}) Tj ET EMC"
            )
        content = zlib.compress("\n".join(ops).encode("latin-1"), 6)
        objects.append(
            b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content)
            + content
            + b"\nendstream"
        )
        stream_ref = len(objects)
        annots = ""
        if n == 0 and annot_refs:
            annots = " /Annots [" + " ".join(f"{r} 0 R" for r in annot_refs) + "]"
        objects.append(
            (
                f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents {stream_ref} 0 R "
                f"/Resources << /Font << /F1 {font} 0 R >> >>{annots} >>"
            ).encode("latin-1")
        )
        kids.append(len(objects))
    objects[1] = (
        f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} >>"
    ).encode("latin-1")
    entries = "".join(f"/{k} ({_pdf_text(v)}) " for k, v in (info or {"Producer": "x"}).items())
    objects.append(f"<< {entries}>>".encode("latin-1"))
    return pdf_file(objects, info=len(objects))


# --- mail ----------------------------------------------------------------------------

CTYPES = {
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "odt": "application/vnd.oasis.opendocument.text",
    "pdf": "application/pdf",
    "csv": "text/csv",
    "txt": "text/plain",
}


def eml(
    subject: str,
    body: str = "Terlampir.",
    *,
    html: str | None = None,
    attachments: Sequence[tuple[str, bytes]] = (),
    sender: str = "budi@diskominfotik.jakarta.go.id",
    to: str = "warga@gmail.com",
) -> bytes:
    """A message as a mail client sends it: text (and HTML) body, attachments by name."""
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    m["Date"] = "Wed, 01 May 2024 10:00:00 +0700"
    m["Message-ID"] = "<labelled@diskominfotik.jakarta.go.id>"
    m.set_content(body)
    if html is not None:
        m.add_alternative(html, subtype="html")
    for name, data in attachments:
        ctype = CTYPES.get(name.rsplit(".", 1)[-1], "application/octet-stream")
        maintype, subtype = ctype.split("/")
        if maintype == "text":
            m.add_attachment(data.decode("utf-8"), subtype=subtype, filename=name)
        else:
            m.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return m.as_bytes()
