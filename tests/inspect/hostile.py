"""Hostile messages from the bounded-inspection issue, built in memory (never committed).

Each builder returns the bytes of a whole message. They are shaped after the reports:
the sizes are the reported ones, so the tests show the inspector copes with what was
actually sent, and the compressed bombs are put together from repeated deflate blocks
so that building a 1 GB stream costs a megabyte and a few milliseconds.
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from bench.messages import pdf_file

MB = 1 << 20
LABEL = "SANGAT RAHASIA"

_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-'
    'officedocument.wordprocessingml.document.main+xml"/></Types>'
)
_DOC_HEAD = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
    "<w:body>"
)
_DOC_TAIL = "</w:body></w:document>"


def repeated_deflate(unit: bytes, count: int, *, head: bytes = b"", tail: bytes = b"") -> bytes:
    """A zlib stream of ``head + unit * count + tail`` without ever holding that in memory.

    After a full flush a deflate block depends on nothing before it, so one compressed
    ``unit`` is repeated ``count`` times; the Adler-32 trailer is combined arithmetically.
    """
    comp = zlib.compressobj(9)
    first = comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(unit) + comp.flush(zlib.Z_FULL_FLUSH)
    last = comp.compress(tail) + comp.flush(zlib.Z_FULL_FLUSH)
    body = first + block * count + last + b"\x03\x00"  # an empty final fixed block
    return body + struct.pack(">I", _adler_of(head, unit, count, tail))


def _adler_of(head: bytes, unit: bytes, count: int, tail: bytes) -> int:
    mod = 65521
    a = 1
    b = 0
    for chunk, times in ((head, 1), (unit, count), (tail, 1)):
        # one pass over the chunk gives its contribution; repeating it is arithmetic
        s = sum(chunk) % mod
        w = sum((len(chunk) - i) * c for i, c in enumerate(chunk)) % mod
        n = len(chunk)
        for _ in range(times if times < 4 else 0):
            b = (b + n * a + w) % mod
            a = (a + s) % mod
        if times >= 4:
            # a_k = a + k*s ; b_k = b + sum_{j<k} (n*a_j + w) = b + k*(n*a + w) + n*s*k*(k-1)/2
            k = times
            b = (b + k * (n * a + w) + n * s * (k * (k - 1) // 2)) % mod
            a = (a + k * s) % mod
    return (b << 16) | a


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _docx(document: bytes, *, custom: bytes | None = None) -> bytes:
    members = {
        "[Content_Types].xml": _CONTENT_TYPES.encode(),
        "_rels/.rels": b"<Relationships/>",
        "word/document.xml": document,
    }
    if custom is not None:
        members["docProps/custom.xml"] = custom
    return _zip(members)


def _mail(
    subject: str, attachments: list[tuple[str, str, bytes]], body: str = "Terlampir."
) -> bytes:
    msg = MIMEMultipart("mixed")
    msg["From"] = "budi@dinas.jakarta.go.id"
    msg["To"] = "andi@gmail.com"
    msg["Subject"] = subject
    msg.attach(MIMEText(body, "plain", "utf-8"))
    for name, subtype, data in attachments:
        part = MIMEApplication(data, subtype)
        part.add_header("Content-Disposition", "attachment", filename=name)
        msg.attach(part)
    return msg.as_bytes()


def _pdf(content_stream: bytes) -> bytes:
    """A one-page PDF whose page content is the given (already Flate-compressed) stream."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content_stream)
        + content_stream
        + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    return pdf_file(objects)


# --- the cases -----------------------------------------------------------------------


def garbage_base64(size: int = 20 * MB) -> bytes:
    """An attachment declared base64 whose 20 MB body is mostly not base64 at all: random
    characters, ``=`` among them, so the decoder stops at the first padding it meets."""
    rng = random.Random(11)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=!*#%&?~ \t-"
    block = b"\r\n".join(bytes(rng.choice(alphabet) for _ in range(76)) for _ in range(1024))
    body = b"\r\n".join([block] * (size // len(block) + 1))
    head = (
        b"From: budi@dinas.jakarta.go.id\r\nTo: andi@gmail.com\r\nSubject: data\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="g"\r\n\r\n'
        b"--g\r\nContent-Type: text/plain\r\n\r\nTerlampir.\r\n--g\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="data.bin"\r\n\r\n'
    )
    return head + body + b"\r\n--g--\r\n"


def pdf_flate_bomb(size: int = 1 << 30) -> bytes:
    """A PDF whose page content inflates to ``size`` bytes of zeros (~1 MB compressed)."""
    stream = repeated_deflate(b"\x00" * MB, size // MB, head=b"BT /F1 12 Tf 72 720 Td ")
    return _mail("Laporan", [("laporan.pdf", "pdf", _pdf(stream))])


def docx_zero_bomb(size: int = 30 * MB) -> bytes:
    """A docx whose word/document.xml is ``size`` bytes of NUL."""
    return _mail("Nota", [("nota.docx", "octet-stream", _docx(b"\x00" * size))])


def unclosed_boundaries(count: int = 200_000) -> bytes:
    """Multiparts nested ``count`` deep, each opening a new boundary and closing none."""
    parts = [
        b"From: budi@dinas.jakarta.go.id\r\nTo: andi@gmail.com\r\nSubject: x\r\n"
        b"MIME-Version: 1.0\r\n"
    ]
    for i in range(count):
        parts.append(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i))
    parts.append(b"Content-Type: text/plain\r\n\r\nSANGAT RAHASIA\r\n")
    return b"".join(parts)


def multipart_message_chain(count: int = 200_000) -> bytes:
    """Multiparts and message/rfc822 parts alternating ``count`` deep, none closed: part
    sections restart in every attached message, so only the nesting itself bounds it."""
    parts = [b"From: budi@dinas.jakarta.go.id\r\nTo: andi@gmail.com\r\nSubject: x\r\n"]
    for i in range(count):
        if i % 2:
            parts.append(b"Content-Type: message/rfc822\r\n\r\n")
        else:
            parts.append(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i))
    parts.append(b"Content-Type: text/plain\r\n\r\nSANGAT RAHASIA\r\n")
    return b"".join(parts)


def unclosed_boundaries_flat(count: int = 200_000) -> bytes:
    """One multipart with ``count`` delimiter lines and no closing one."""
    head = (
        b"From: budi@dinas.jakarta.go.id\r\nTo: andi@gmail.com\r\nSubject: x\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
    )
    return head + b"--b\r\n" * count + b"Content-Type: text/plain\r\n\r\nx\r\n"


def docx_padded(padding: int = 9 * MB, filler: bytes = b" ") -> bytes:
    """A small docx whose document.xml has ``padding`` spaces (or ``filler``) before a
    SANGAT RAHASIA line."""
    document = (
        _DOC_HEAD.encode()
        + filler * padding
        + f"<w:p><w:r><w:t>{LABEL}</w:t></w:r></w:p>"
        "<w:p><w:r><w:t>Nota dinas tentang anggaran.</w:t></w:r></w:p>".encode()
        + _DOC_TAIL.encode()
    )
    return _mail("Nota dinas", [("nota.docx", "octet-stream", _docx(document))])


def pdf_padded(padding: int = 200 * MB) -> bytes:
    """A PDF whose content stream has ``padding`` spaces before ``(SANGAT RAHASIA) Tj``."""
    stream = repeated_deflate(
        b" " * MB,
        padding // MB,
        head=b"BT /F1 12 Tf 72 720 Td\n",
        tail=f"\n({LABEL}) Tj\n0 -14 Td\n(Laporan anggaran) Tj\nET\n".encode(),
    )
    return _mail("Laporan", [("laporan.pdf", "pdf", _pdf(stream))])


def docx_unterminated_properties(count: int = 25_000) -> bytes:
    """A docx whose custom.xml opens ``count`` ``<property>`` elements and closes none."""
    props = b'<property fmtid="{D5CDD505-2E9C-101B-9397-08002B2CF9AE}" pid="2" name="x">' * count
    custom = b'<?xml version="1.0"?><Properties>' + props
    document = (_DOC_HEAD + "<w:p><w:r><w:t>Isi.</w:t></w:r></w:p>" + _DOC_TAIL).encode()
    return _mail("Nota", [("nota.docx", "octet-stream", _docx(document, custom=custom))])


def _html_mail(markup: str) -> bytes:
    msg = MIMEMultipart("alternative")
    msg["From"] = "budi@dinas.jakarta.go.id"
    msg["To"] = "andi@gmail.com"
    msg["Subject"] = "Undangan"
    msg.attach(MIMEText("Undangan rapat.", "plain", "utf-8"))
    msg.attach(MIMEText(markup, "html", "utf-8"))
    return msg.as_bytes()


def html_comments(count: int = 60_000) -> bytes:
    """An HTML body with ``count`` comment openers and no closer."""
    return _html_mail(f"<html><body><p>{LABEL}</p>" + "<!--" * count + "</body></html>")


def html_scripts(count: int = 40_000) -> bytes:
    """An HTML body with ``count`` unclosed ``<script `` tags."""
    return _html_mail(f"<html><body><p>{LABEL}</p>" + "<script " * count + "</body></html>")
