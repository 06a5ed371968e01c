"""Deterministic benchmark messages, built in code (no binary blobs in the repository).

Every benchmark (inspector, policy, gateway end to end) sends the same messages, so
their results compare. ``report_message`` is the realistic case: an agency report
with text and HTML bodies, a Word document and a one-page PDF with a photo.
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
from email.utils import formatdate
from functools import lru_cache

_WORDS = (
    "laporan",
    "kegiatan",
    "dinas",
    "provinsi",
    "jakarta",
    "anggaran",
    "realisasi",
    "program",
    "pembangunan",
    "jalan",
    "jembatan",
    "sekolah",
    "puskesmas",
    "pelayanan",
    "masyarakat",
    "rapat",
    "koordinasi",
    "evaluasi",
    "triwulan",
    "target",
    "capaian",
    "kinerja",
    "pegawai",
    "bidang",
    "seksi",
    "kepala",
    "wilayah",
    "kota",
    "administrasi",
    "kelurahan",
    "kecamatan",
    "data",
    "statistik",
    "penduduk",
    "perencanaan",
    "pengadaan",
    "barang",
    "jasa",
    "monitoring",
    "pelaksanaan",
    "kegiatan",
    "tahun",
    "berjalan",
    "rekomendasi",
    "tindak",
    "lanjut",
    "hasil",
)


def _words(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(_WORDS) for _ in range(count)]


def _paragraphs(count: int, seed: int, per: int = 60) -> list[str]:
    words = _words(count, seed)
    out = []
    for i in range(0, len(words), per):
        chunk = words[i : i + per]
        out.append(" ".join(chunk).capitalize() + ".")
    return out


# --- docx ------------------------------------------------------------------------

_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/'
    'vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/word/document.xml" ContentType="application/'
    'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>'
    '<Override PartName="/docProps/core.xml" ContentType="application/'
    'vnd.openxmlformats-package.core-properties+xml"/>'
    "</Types>"
)
_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
    'relationships/officeDocument" Target="word/document.xml"/>'
    '<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/package/2006/'
    'relationships/metadata/core-properties" Target="docProps/core.xml"/>'
    "</Relationships>"
)
_CORE = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/'
    'metadata/core-properties" xmlns:dc="http://purl.org/dc/elements/1.1/">'
    "<dc:title>Laporan Triwulan</dc:title><dc:creator>Dinas</dc:creator>"
    "</cp:coreProperties>"
)


def docx(paragraphs: list[str], *, custom: dict[str, str] | None = None) -> bytes:
    """A minimal valid .docx with the given paragraphs and optional custom properties."""
    body = "".join(f'<w:p><w:r><w:t xml:space="preserve">{p}</w:t></w:r></w:p>' for p in paragraphs)
    document = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        f"<w:body>{body}</w:body></w:document>"
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", _CONTENT_TYPES)
        zf.writestr("_rels/.rels", _RELS)
        zf.writestr("docProps/core.xml", _CORE)
        if custom:
            props = "".join(
                f'<property fmtid="{{D5CDD505-2E9C-101B-9397-08002B2CF9AE}}" pid="{i}" '
                f'name="{k}"><vt:lpwstr>{v}</vt:lpwstr></property>'
                for i, (k, v) in enumerate(custom.items(), 2)
            )
            zf.writestr(
                "docProps/custom.xml",
                '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
                '<Properties xmlns="http://schemas.openxmlformats.org/officeDocument/2006/'
                'custom-properties" xmlns:vt="http://schemas.openxmlformats.org/officeDocument/'
                f'2006/docPropsVTypes">{props}</Properties>',
            )
        zf.writestr("word/document.xml", document)
    return buf.getvalue()


# --- JPEG ------------------------------------------------------------------------


def _huffman_table(symbols: list[int], length: int) -> tuple[bytes, dict[int, tuple[int, int]]]:
    """A DHT body giving every symbol a code of one length, and the encoder's code map."""
    counts = [0] * 16
    counts[length - 1] = len(symbols)
    codes = {s: (i, length) for i, s in enumerate(symbols)}
    return bytes(counts) + bytes(symbols), codes


class _BitWriter:
    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.bits = 0

    def write(self, value: int, length: int) -> None:
        self.acc = (self.acc << length) | (value & ((1 << length) - 1))
        self.bits += length
        while self.bits >= 8:
            self.bits -= 8
            byte = (self.acc >> self.bits) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0)
        self.acc &= (1 << self.bits) - 1

    def flush(self) -> bytes:
        if self.bits:
            self.write((1 << (8 - self.bits)) - 1, 8 - self.bits)
        return bytes(self.out)


def _category(value: int) -> tuple[int, int]:
    size = abs(value).bit_length()
    bits = value if value >= 0 else value + (1 << size) - 1
    return size, bits


def jpeg(width: int = 400, height: int = 400, seed: int = 7) -> bytes:
    """A valid baseline greyscale JFIF image with a textured, deterministic content."""
    rng = random.Random(seed)
    dc_symbols = list(range(12))
    ac_symbols = [0x00, 0xF0] + [(run << 4) | size for run in range(16) for size in range(1, 11)]
    dc_table, dc_codes = _huffman_table(dc_symbols, 4)
    ac_table, ac_codes = _huffman_table(ac_symbols, 8)
    writer = _BitWriter()
    previous = 0
    for _block in range((width // 8) * (height // 8)):
        dc = previous + rng.randint(-6, 6)
        size, bits = _category(dc - previous)
        code, length = dc_codes[size]
        writer.write(code, length)
        if size:
            writer.write(bits, size)
        previous = dc
        position = 0
        for _ in range(rng.randint(8, 16)):
            run = rng.randint(0, 3)
            if position + run + 1 > 63:
                break
            value = rng.choice((-3, -2, -1, 1, 2, 3, 5, -5))
            size, bits = _category(value)
            code, length = ac_codes[(run << 4) | size]
            writer.write(code, length)
            writer.write(bits, size)
            position += run + 1
        code, length = ac_codes[0x00]
        writer.write(code, length)
    scan = writer.flush()

    def segment(marker: int, payload: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload

    quant = bytes([0]) + bytes([16] * 64)
    sof = struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0])
    dht = bytes([0x00]) + dc_table + bytes([0x10]) + ac_table
    sos = bytes([1, 1, 0x00, 0, 63, 0])
    return b"".join(
        [
            b"\xff\xd8",
            segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"),
            segment(0xDB, quant),
            segment(0xC0, sof),
            segment(0xC4, dht),
            segment(0xDA, sos),
            scan,
            b"\xff\xd9",
        ]
    )


# --- PDF -------------------------------------------------------------------------


def _pdf_text(s: str) -> str:
    return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def pdf_file(
    objects: list[bytes],
    *,
    info: int | None = None,
    header: bytes = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
) -> bytes:
    """A PDF file of numbered ``objects`` (object 1 the catalog), with its xref table;
    ``info`` names the document information object, if any."""
    out = bytearray(header)
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    info_ref = b" /Info %d 0 R" % info if info is not None else b""
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        info_ref,
        xref,
    )
    return bytes(out)


def pdf(
    lines: list[str],
    *,
    image: bytes | None = None,
    info: dict[str, str] | None = None,
    image_size: tuple[int, int] = (400, 400),
) -> bytes:
    """A one-page PDF: Helvetica text lines in a Flate stream, an optional JPEG, an Info dict."""
    ops = ["BT", "/F1 7 Tf", "9 TL", "40 800 Td"]
    for line in lines:
        ops.append(f"({_pdf_text(line)}) Tj T*")
    ops.append("ET")
    if image is not None:
        ops.append("q 200 0 0 200 350 40 cm /Im1 Do Q")
    content = zlib.compress("\n".join(ops).encode("latin-1"), 6)
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >>"
        + (b" /XObject << /Im1 6 0 R >>" if image else b"")
        + b" >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content)
        + content
        + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    if image is not None:
        w, h = image_size
        objects.append(
            b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
            b"/BitsPerComponent 8 /Filter /DCTDecode /Length %d >>\nstream\n"
            % (w, h, len(image))
            + image
            + b"\nendstream"
        )
    entries = "".join(f"/{k} ({_pdf_text(v)}) " for k, v in (info or {"Title": "Laporan"}).items())
    objects.append(f"<< {entries}>>".encode("latin-1"))
    return pdf_file(objects, info=len(objects))


# --- messages --------------------------------------------------------------------


def _envelope(msg: MIMEMultipart | MIMEText, subject: str) -> None:
    msg["From"] = "Budi Santoso <budi.santoso@example.co.id>"
    msg["To"] = "Kepala Bidang <kabid@dinas.jakarta.go.id>"
    msg["Subject"] = subject
    msg["Date"] = formatdate(1_700_000_000, localtime=False)
    msg["Message-ID"] = "<bench-report@example.co.id>"


@lru_cache(maxsize=1)
def report_message() -> bytes:
    """About 66 KB: text + HTML bodies, a ~600-word docx, a one-page PDF with a ~40 KB JPEG."""
    msg = MIMEMultipart("mixed")
    _envelope(msg, "Laporan kegiatan triwulan III")
    alt = MIMEMultipart("alternative")
    paras = _paragraphs(220, seed=1)
    alt.attach(MIMEText("\n\n".join(paras), "plain", "us-ascii"))
    alt.attach(
        MIMEText(
            "<html><body>" + "".join(f"<p>{p}</p>" for p in paras) + "</body></html>",
            "html",
            "us-ascii",
        )
    )
    msg.attach(alt)
    doc = MIMEApplication(
        docx(_paragraphs(600, seed=2)),
        "vnd.openxmlformats-officedocument.wordprocessingml.document",
    )
    doc.add_header("Content-Disposition", "attachment", filename="laporan-kegiatan.docx")
    msg.attach(doc)
    words = _words(2000, seed=3)
    lines = [" ".join(words[i : i + 14]) for i in range(0, len(words), 14)]
    report = MIMEApplication(pdf(lines, image=jpeg(400, 360), image_size=(400, 360)), "pdf")
    report.add_header("Content-Disposition", "attachment", filename="laporan-triwulan.pdf")
    msg.attach(report)
    return msg.as_bytes()


@lru_cache(maxsize=1)
def small_message() -> bytes:
    """About 5 KB of plain text from an external sender."""
    msg = MIMEText("\n\n".join(_paragraphs(570, seed=4)), "plain", "us-ascii")
    _envelope(msg, "Undangan rapat koordinasi")
    return msg.as_bytes()


def big_message(size: int = 25 << 20) -> bytes:
    """One large (``size`` bytes) binary attachment, for memory and streaming tests."""
    msg = MIMEMultipart("mixed")
    _envelope(msg, "Arsip data")
    msg.attach(MIMEText("Terlampir arsip data.", "plain", "utf-8"))
    rng = random.Random(5)
    blob = rng.randbytes(size)
    part = MIMEApplication(blob, "octet-stream")
    part.add_header("Content-Disposition", "attachment", filename="arsip.bin")
    msg.attach(part)
    return msg.as_bytes()
