"""Small real documents and messages built in code for the inspector's tests."""

from __future__ import annotations

import io
import tarfile
import zipfile
import zlib
from email import encoders
from email.mime.application import MIMEApplication
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from bench.messages import docx, jpeg, pdf

__all__ = ["docx", "eml", "jpeg", "odt", "pdf", "tar", "xlsx", "zip_of"]

PE_HEADER = (
    b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00"
    + b"\x00" * 44
    + (b"\x80\x00\x00\x00")
    + b"\x00" * 64
    + b"PE\x00\x00\x4c\x01\x03\x00"
    + b"\x00" * 200
)


def zip_of(members: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def encrypted_zip(name: str, data: bytes) -> bytes:
    """A zip whose only entry has the 'encrypted' flag bit set (traditional PKWARE)."""
    raw = bytearray(zip_of({name: data}, compression=zipfile.ZIP_STORED))
    # local header flag at offset 6, central directory flag at offset 8 of its record
    raw[6] |= 1
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 8] |= 1
    return bytes(raw)


def tar(members: dict[str, bytes], *, gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def xlsx(strings: list[str], *, custom: dict[str, str] | None = None) -> bytes:
    shared = "".join(f"<si><t>{s}</t></si>" for s in strings)
    members = {
        "[Content_Types].xml": '<?xml version="1.0"?><Types xmlns="http://schemas.'
        'openxmlformats.org/package/2006/content-types"><Override PartName="/xl/workbook.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.'
        'main+xml"/></Types>',
        "_rels/.rels": "<Relationships/>",
        "xl/workbook.xml": "<workbook/>",
        "xl/sharedStrings.xml": f"<sst>{shared}</sst>",
    }
    if custom:
        props = "".join(
            f'<property pid="{i}" name="{k}"><vt:lpwstr>{v}</vt:lpwstr></property>'
            for i, (k, v) in enumerate(custom.items(), 2)
        )
        members["docProps/custom.xml"] = f"<Properties>{props}</Properties>"
    return zip_of(members)


def odt(text: str, user_fields: dict[str, str]) -> bytes:
    fields = "".join(
        f'<meta:user-defined meta:name="{k}">{v}</meta:user-defined>'
        for k, v in user_fields.items()
    )
    return zip_of(
        {
            "mimetype": b"application/vnd.oasis.opendocument.text",
            "meta.xml": f"<office:document-meta><office:meta>{fields}</office:meta>"
            "</office:document-meta>",
            "content.xml": f"<office:document-content><text:p>{text}</text:p>"
            "</office:document-content>",
        }
    )


def docm(paragraphs: list[str]) -> bytes:
    """A docx with a vbaProject.bin part: macro-enabled."""
    base = zipfile.ZipFile(io.BytesIO(docx(paragraphs)))
    members = {n: base.read(n) for n in base.namelist()}
    members["word/vbaProject.bin"] = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 512
    return zip_of(members)


def eml(
    body: str = "Halo.",
    *,
    subject: str = "Laporan",
    headers: dict[str, str] | None = None,
    attachments: tuple[tuple[str, str, bytes], ...] = (),
    html: str | None = None,
) -> bytes:
    """A message with a text (and optional HTML) body and (name, type, data) attachments."""
    msg = MIMEMultipart("mixed")
    msg["From"] = "budi@dinas.jakarta.go.id"
    msg["To"] = "andi@example.com"
    msg["Subject"] = subject
    msg["Message-ID"] = "<test@dinas.jakarta.go.id>"
    for k, v in (headers or {}).items():
        msg[k] = v
    if html is None:
        msg.attach(MIMEText(body, "plain", "utf-8"))
    else:
        alt = MIMEMultipart("alternative")
        alt.attach(MIMEText(body, "plain", "utf-8"))
        alt.attach(MIMEText(html, "html", "utf-8"))
        msg.attach(alt)
    for name, ctype, data in attachments:
        maintype, subtype = ctype.split("/", 1)
        part: MIMEBase = (
            MIMEApplication(data, subtype)
            if maintype == "application"
            else MIMEBase(maintype, subtype)
        )
        if maintype != "application":
            part.set_payload(data)
            encoders.encode_base64(part)
        part.add_header("Content-Disposition", "attachment", filename=name)
        msg.attach(part)
    return msg.as_bytes()


def flate_bomb(size: int) -> bytes:
    return zlib.compress(b"\x00" * size, 9)
