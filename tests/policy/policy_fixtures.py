"""Messages the policy tests send through the real inspector: built here, byte for byte."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path

from tests.corpus import corpus_root

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "policies" / "se-79-2019.yaml"
CORPUS = corpus_root()
PGP_ENCRYPTED = (
    "real/thunderbird/mail/components/extensions/test/xpcshell/messages/encryptedNestedMessages.eml"
)

Attachment = tuple[str, bytes, str]


def build_message(
    *,
    subject: str = "Laporan kegiatan",
    body: str = "Terlampir laporan kegiatan minggu ini.",
    sender: str = "budi@diskominfotik.jakarta.go.id",
    to: Sequence[str] = ("warga@gmail.com",),
    attachments: Sequence[Attachment] = (),
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = ", ".join(to)
    m["Subject"] = subject
    for name, value in headers:
        m[name] = value
    m.set_content(body)
    for filename, data, ctype in attachments:
        maintype, subtype = ctype.split("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return m.as_bytes()


def zip_with(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, data)
    return buf.getvalue()


def pe_bytes() -> bytes:
    """A minimal Windows PE header: what libmagic needs to call it an executable."""
    return b"MZ" + b"\x90" * 58 + b"\x80\x00\x00\x00" + b"\x00" * 64 + b"PE\x00\x00" + b"\x00" * 200


def niks(n: int) -> list[str]:
    """``n`` distinct NIKs that pass the detector's checks (DKI codes, real birth dates)."""
    return [
        f"317101{day:02d}0590{serial:04d}"
        for day, serial in zip(range(10, 10 + n), range(1, n + 1), strict=True)
    ]
