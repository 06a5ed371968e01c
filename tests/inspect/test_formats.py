"""Formats that are readable and are read: S/MIME signed mail, 7z, RAR, TNEF compressed
RTF, legacy Office (.doc/.xls/.ppt) and RTF.

Fixtures are made at test time by the real tools where they exist here (openssl, 7z,
py7zr, LibreOffice) and by small writers of the published formats where no tool can
write them on this machine (RAR, which only the non-free ``rar`` creates; Excel and
PowerPoint 97 binaries, which the Writer-only LibreOffice here cannot save; TNEF).
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import shutil
import struct
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import py7zr
import pytest

from milter.config import InspectLimits
from milter.inspect import archives, filetype, inspect_message, legacy, smime, tnef
from milter.inspect.findings import ARCHIVE, ENCRYPTED, SIGNED, UNSCANNABLE, Findings, Part
from tests.conftest import ROOT, Sink
from tests.inspect import builders as b

POLICY = str(ROOT / "policies" / "se-79-2019.yaml")


def sources(f: Findings) -> dict[str, str | None]:
    return {label.source: label.level for label in f.labels}


def part(f: Findings, path: str) -> Part:
    return next(p for p in f.parts if p.path == path)


def run(*cmd: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    subprocess.run(cmd, check=True, capture_output=True, cwd=cwd, env=env, timeout=180)


INNER = (
    b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
    b"--XX\r\nContent-Type: text/plain\r\n\r\nTerlampir nota.\r\n"
    b'--XX\r\nContent-Type: text/plain; name="nota.txt"\r\n'
    b'Content-Disposition: attachment; filename="nota.txt"\r\n\r\n'
    b"RAHASIA\r\n\r\nIsi nota dinas.\r\n--XX--\r\n"
)
HEAD = b"From: budi@dinas.jakarta.go.id\r\nTo: sari@gmail.com\r\nSubject: Nota\r\n"


# --- S/MIME ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("pki")
    run(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=budi@dinas.jakarta.go.id",
        "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
    )  # fmt: skip
    return d / "cert.pem", d / "key.pem"


def openssl(cert: tuple[Path, Path], tmp: Path, *args: str, data: bytes = INNER) -> bytes:
    src, out = tmp / "in.txt", tmp / "out.bin"
    src.write_bytes(data)
    run("openssl", *args, "-in", str(src), "-out", str(out), *_keys(args, cert))
    return out.read_bytes()


def _keys(args: tuple[str, ...], cert: tuple[Path, Path]) -> list[str]:
    if "-encrypt" in args:
        return [str(cert[0])]
    return ["-signer", str(cert[0]), "-inkey", str(cert[1])]


def test_opaque_signed_smime_is_unwrapped_and_read(cert: tuple[Path, Path], tmp_path: Path) -> None:
    signed = openssl(cert, tmp_path, "smime", "-sign", "-nodetach")
    assert b"smime-type=signed-data" in signed
    f = inspect_message(HEAD + signed)
    assert sources(f)["attachment:nota.txt"] == "RAHASIA"
    wrapper = part(f, "1")
    assert SIGNED in wrapper.flags and UNSCANNABLE not in wrapper.flags
    assert "Terlampir nota." in f.text
    assert f.classification == "RAHASIA"


@pytest.mark.parametrize("stream", [False, True])
def test_cms_signed_der_attachment_and_ber_streaming(
    cert: tuple[Path, Path], tmp_path: Path, stream: bool
) -> None:
    """``openssl cms -sign -nodetach`` DER (and BER with indefinite lengths and chunked
    content when streamed), attached as a .p7m file under x-pkcs7-mime."""
    extra = ("-stream",) if stream else ()
    der = openssl(cert, tmp_path, "cms", "-sign", "-nodetach", "-outform", "DER", *extra)
    assert (der[1] == 0x80) is stream
    assert filetype.sniff(der) == "application/pkcs7-mime"
    msg = b.eml(
        "Dokumen bertanda tangan.", attachments=(("smime.p7m", "application/x-pkcs7-mime", der),)
    )
    f = inspect_message(msg)
    assert sources(f)["attachment:nota.txt"] == "RAHASIA"
    wrapper = next(p for p in f.parts if p.filename == "smime.p7m")
    assert SIGNED in wrapper.flags and UNSCANNABLE not in wrapper.flags


def test_signed_file_p7m_is_the_file(cert: tuple[Path, Path], tmp_path: Path) -> None:
    """A document signed on its own (``nota.txt.p7m``): the content is the file itself."""
    der = openssl(
        cert, tmp_path, "cms", "-sign", "-nodetach", "-binary", "-outform", "DER",
        data=b"SANGAT RAHASIA\n\nLaporan.\n",
    )  # fmt: skip
    msg = b.eml("Terlampir.", attachments=(("nota.txt.p7m", "application/octet-stream", der),))
    f = inspect_message(msg)
    assert sources(f)["attachment:nota.txt.p7m/nota.txt"] == "SANGAT_RAHASIA"


def test_signed_files_inside_a_zip(cert: tuple[Path, Path], tmp_path: Path) -> None:
    mail = openssl(cert, tmp_path, "cms", "-sign", "-nodetach", "-outform", "DER")
    doc = openssl(
        cert, tmp_path, "cms", "-sign", "-nodetach", "-binary", "-outform", "DER",
        data=b"TERBATAS\n\nLaporan.\n",
    )  # fmt: skip
    enc = openssl(cert, tmp_path, "cms", "-encrypt", "-outform", "DER")
    z = b.zip_of({"smime.p7m": mail, "laporan.txt.p7m": doc, "enc.p7m": enc})
    f = inspect_message(b.eml(attachments=(("a.zip", "application/zip", z),)))
    got = sources(f)
    assert got["attachment:a.zip/smime.p7m/nota.txt"] == "RAHASIA"
    assert got["attachment:a.zip/laporan.txt.p7m/laporan.txt"] == "TERBATAS"
    assert SIGNED in part(f, "a.zip/smime.p7m").flags
    assert {ENCRYPTED, UNSCANNABLE} <= part(f, "a.zip/enc.p7m").flags


def test_multipart_signed_is_read_through_its_first_part(
    cert: tuple[Path, Path], tmp_path: Path
) -> None:
    signed = openssl(cert, tmp_path, "smime", "-sign")
    assert b"multipart/signed" in signed
    f = inspect_message(HEAD + signed)
    assert sources(f)["attachment:nota.txt"] == "RAHASIA"
    sig = next(p for p in f.parts if p.declared_type.endswith("pkcs7-signature"))
    assert SIGNED in sig.flags and UNSCANNABLE not in sig.flags


def test_encrypted_smime_stays_encrypted(cert: tuple[Path, Path], tmp_path: Path) -> None:
    enc = openssl(cert, tmp_path, "smime", "-encrypt")
    f = inspect_message(HEAD + enc)
    p = f.parts[0]
    assert {ENCRYPTED, UNSCANNABLE} <= p.flags and p.reason == "S/MIME encrypted"
    assert f.labels == ()
    # Encrypted, then signed (opaque): the signature is taken off, the encryption stays.
    signed = openssl(cert, tmp_path, "smime", "-sign", "-nodetach", data=enc)
    g = inspect_message(HEAD + signed)
    assert SIGNED in g.parts[0].flags
    assert any({ENCRYPTED, UNSCANNABLE} <= p.flags for p in g.parts[1:])


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def compressed_data(content: bytes) -> bytes:
    """RFC 3274 CompressedData (openssl here is built without zlib, so made by hand)."""
    oid = _der(0x06, bytes.fromhex("2a864886f70d0109100109"))
    zlib_alg = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d0109100308")))
    data_oid = _der(0x06, bytes.fromhex("2a864886f70d010701"))
    encap = _der(0x30, data_oid + _der(0xA0, _der(0x04, zlib.compress(content))))
    body = _der(0x30, _der(0x02, b"\x00") + zlib_alg + encap)
    return _der(0x30, oid + _der(0xA0, body))


def test_compressed_smime_is_inflated() -> None:
    blob = compressed_data(INNER)
    raw = (
        HEAD + b"MIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; "
        b'smime-type=compressed-data; name="smime.p7z"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + base64.encodebytes(blob)
    )
    f = inspect_message(raw)
    assert sources(f)["attachment:nota.txt"] == "RAHASIA"
    bomb = compressed_data(b"\x00" * (8 << 20))
    res = smime.unwrap(bomb, limit=1 << 30, ratio=100.0)
    assert res.content is None and "ratio" in (res.reason or "")


def test_hostile_cms_ends_as_a_finding(cert: tuple[Path, Path], tmp_path: Path) -> None:
    der = openssl(cert, tmp_path, "cms", "-sign", "-nodetach", "-outform", "DER")
    lying = der[:2] + b"\x84\x7f\xff\xff\xff" + der[4:]
    deep = b"\x30\x80" * 200_000
    chunks = (
        b"\x30\x80\x06\x09"
        + bytes.fromhex("2a864886f70d010701")
        + b"\xa0\x80"
        + (b"\x24\x80" * 100_000)
    )
    for blob, why in (
        (der[: len(der) // 2], "past the end"),
        (lying, "past the end"),
        (deep, "too deep"),
        (chunks, "too deep"),
        (b"\x30\x03\x06\x01\x00", "unknown content type"),
    ):
        start = time.monotonic()
        res = smime.unwrap(blob, limit=1 << 20, ratio=100.0)
        assert res.content is None and why in (res.reason or ""), (why, res)
        assert time.monotonic() - start < 2
        raw = (
            HEAD + b"MIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; "
            b"smime-type=signed-data\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(blob)
        )
        p = inspect_message(raw).parts[0]
        assert {SIGNED, UNSCANNABLE} <= p.flags and "unreadable S/MIME" in (p.reason or "")


# --- 7z -------------------------------------------------------------------------------


def seven_zip(tmp: Path, files: dict[str, bytes], *args: str) -> bytes:
    folder = tmp / "src"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    out = tmp / "a.7z"
    out.unlink(missing_ok=True)
    run("7z", "a", "-bd", "-bso0", *args, str(out), ".", cwd=folder)
    return out.read_bytes()


def by_py7zr(files: dict[str, bytes], password: str | None = None) -> bytes:
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w", password=password, header_encryption=bool(password)) as z:
        for name, data in files.items():
            z.writestr(data, name)
    return buf.getvalue()


def test_7z_members_are_read(tmp_path: Path) -> None:
    made = seven_zip(tmp_path, {"dok/nota.txt": b"SANGAT RAHASIA\nisi\n", "b.txt": b"biasa"})
    other = by_py7zr({"lap/x.txt": b"RAHASIA\n\nisi"})
    f = inspect_message(
        b.eml(
            attachments=(
                ("arsip.7z", "application/x-7z-compressed", made),
                ("lain.7z", "application/octet-stream", other),
            )
        )
    )
    got = sources(f)
    assert got["attachment:arsip.7z/dok/nota.txt"] == "SANGAT_RAHASIA"
    assert got["attachment:lain.7z/lap/x.txt"] == "RAHASIA"
    assert ARCHIVE in part(f, "arsip.7z").flags and UNSCANNABLE not in part(f, "arsip.7z").flags
    assert part(f, "arsip.7z/b.txt").depth == 2


def test_7z_same_name_twice_keeps_both() -> None:
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as z:
        z.writestr(b"biasa\n", "a/nota.txt")
        z.writestr(b"SANGAT RAHASIA\n", "a/nota.txt")
    f = inspect_message(
        b.eml(attachments=(("d.7z", "application/x-7z-compressed", buf.getvalue()),))
    )
    assert f.classification == "SANGAT_RAHASIA"
    assert {p.path for p in f.parts} >= {"d.7z/a/nota.txt", "d.7z/a/nota.txt_0"}


def test_encrypted_7z_stays_encrypted(tmp_path: Path) -> None:
    files = {"nota.txt": b"RAHASIA\n"}
    for blob in (
        seven_zip(tmp_path, files, "-pRahasia1", "-mhe=on"),
        seven_zip(tmp_path, files, "-pRahasia1"),
        by_py7zr(files, password="Rahasia1"),
    ):
        f = inspect_message(b.eml(attachments=(("a.7z", "application/x-7z-compressed", blob),)))
        p = part(f, "a.7z")
        assert {ENCRYPTED, UNSCANNABLE, ARCHIVE} <= p.flags and f.labels == ()


def test_7z_bomb_and_limits(tmp_path: Path) -> None:
    bomb = seven_zip(tmp_path, {"nol.bin": b"\x00" * (16 << 20), "ok.txt": b"RAHASIA\n"})
    assert len(bomb) < 16 << 10
    f = inspect_message(b.eml(attachments=(("bom.7z", "application/x-7z-compressed", bomb),)))
    assert "ratio" in (part(f, "bom.7z/nol.bin").reason or "")
    assert UNSCANNABLE in part(f, "bom.7z").flags
    tight = InspectLimits(expanded_bytes=1 << 20, expansion_ratio=1e9)
    g = inspect_message(
        b.eml(attachments=(("bom.7z", "application/x-7z-compressed", bomb),)), limits=tight
    )
    assert "expanded bytes" in (part(g, "bom.7z/nol.bin").reason or "")
    # The budget counts bytes produced, not only bytes declared.
    listing = archives.read_7z(
        by_py7zr({"a.txt": b"a" * 5000}), budget=4000, ratio=1e9, max_entries=5, check=lambda: None
    )
    assert listing.members[0].content is None and listing.reason
    many = by_py7zr({f"f{i}.txt": b"x" for i in range(20)})
    h = inspect_message(
        b.eml(attachments=(("m.7z", "application/x-7z-compressed", many),)),
        limits=InspectLimits(archive_entries=5),
    )
    assert part(h, "m.7z").reason == "archive entry limit reached"
    nested = b.zip_of({"in.7z": by_py7zr({"n.txt": b"RAHASIA\n"})})
    k = inspect_message(
        b.eml(attachments=(("n.zip", "application/zip", nested),)),
        limits=InspectLimits(archive_depth=1),
    )
    assert part(k, "n.zip/in.7z").reason == "archive depth limit reached"
    broken = inspect_message(
        b.eml(attachments=(("c.7z", "application/x-7z-compressed", bomb[: len(bomb) // 2]),))
    )
    assert UNSCANNABLE in part(broken, "c.7z").flags


# --- RAR ------------------------------------------------------------------------------


def _rar4_block(kind: int, flags: int, body: bytes) -> bytes:
    rest = struct.pack("<BHH", kind, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(rest) & 0xFFFF) + rest


def rar4(files: dict[str, bytes], *, flags: int = 0x8000) -> bytes:
    """A RAR 4 archive with stored members (method 0x30), after the RAR 2.9 format notes;
    ``flags`` of the file headers (0x04: the member is encrypted)."""
    out = b"Rar!\x1a\x07\x00" + _rar4_block(0x73, 0, b"\x00" * 6)
    for name, data in files.items():
        n = name.encode()
        head = struct.pack(
            "<IIBIIBBHI", len(data), len(data), 3, zlib.crc32(data), 0x5A000000, 20, 0x30,
            len(n), 0o100644,
        )  # fmt: skip
        out += _rar4_block(0x74, flags, head + n) + data
    return out + _rar4_block(0x7B, 0x4000, b"")


def _vint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _rar5_block(kind: int, flags: int, fields: bytes, data_size: int | None = None) -> bytes:
    head = _vint(kind) + _vint(flags) + (_vint(data_size) if data_size is not None else b"")
    head += fields
    sized = _vint(len(head)) + head
    return struct.pack("<I", zlib.crc32(sized)) + sized


def rar5(files: dict[str, bytes]) -> bytes:
    """A RAR 5 archive with stored members, after the RAR 5.0 technote."""
    out = b"Rar!\x1a\x07\x01\x00" + _rar5_block(1, 0, _vint(0))
    for name, data in files.items():
        n = name.encode()
        fields = (
            _vint(0x04) + _vint(len(data)) + _vint(0o644) + struct.pack("<I", zlib.crc32(data))
            + _vint(0) + _vint(1) + _vint(len(n)) + n
        )  # fmt: skip
        out += _rar5_block(2, 0x02, fields, len(data)) + data
    return out + _rar5_block(5, 0, _vint(0))


needs_unrar = pytest.mark.skipif(
    archives.RAR_DECODER is None, reason="no free RAR decoder (unrar-free) installed"
)


@needs_unrar
@pytest.mark.parametrize("make", [rar4, rar5])
def test_rar_members_are_read(make: Any) -> None:
    blob = make({"dok/nota.txt": b"SANGAT RAHASIA\nisi\n", "b.txt": b"biasa"})
    assert filetype.kind(filetype.sniff(blob)) == "rar"
    f = inspect_message(b.eml(attachments=(("arsip.rar", "application/vnd.rar", blob),)))
    assert sources(f)["attachment:arsip.rar/dok/nota.txt"] == "SANGAT_RAHASIA"
    assert UNSCANNABLE not in part(f, "arsip.rar").flags


@needs_unrar
def test_rar_same_names_in_two_folders_and_unsafe_names() -> None:
    """A later member with the same base name must not hide an earlier one, and a
    member named outside the folder is refused, not written there."""
    blob = rar4(
        {
            "a/nota.txt": b"SANGAT RAHASIA\n",
            "b/nota.txt": b"biasa\n",
            "../../keluar.txt": b"RAHASIA\n",
        }
    )
    f = inspect_message(b.eml(attachments=(("x.rar", "application/vnd.rar", blob),)))
    assert sources(f)["attachment:x.rar/a/nota.txt"] == "SANGAT_RAHASIA"
    assert part(f, "x.rar/b/nota.txt").size == 6
    assert UNSCANNABLE in part(f, "x.rar").flags  # the refused member


@needs_unrar
def test_rar_limits_and_damage() -> None:
    blob = rar4({"besar.txt": b"a" * 50_000, "nota.txt": b"RAHASIA\n"})
    f = inspect_message(
        b.eml(attachments=(("a.rar", "application/vnd.rar", blob),)),
        limits=InspectLimits(expanded_bytes=20_000),
    )
    assert "expanded bytes" in (part(f, "a.rar").reason or "")
    many = rar4({f"f{i}.txt": b"x" for i in range(20)})
    g = inspect_message(
        b.eml(attachments=(("m.rar", "application/vnd.rar", many),)),
        limits=InspectLimits(archive_entries=5),
    )
    assert part(g, "m.rar").reason == "archive entry limit reached"
    bad = bytearray(rar4({"nota.txt": b"RAHASIA\n"}))
    bad[-30] ^= 0xFF  # a member's data no longer matches its CRC
    h = inspect_message(b.eml(attachments=(("c.rar", "application/vnd.rar", bytes(bad)),)))
    assert UNSCANNABLE in part(h, "c.rar").flags


def test_encrypted_rar_stays_encrypted() -> None:
    locked = rar4({"nota.txt": b"RAHASIA\n"}, flags=0x8004)
    f = inspect_message(b.eml(attachments=(("k.rar", "application/vnd.rar", locked),)))
    assert {ENCRYPTED, UNSCANNABLE, ARCHIVE} <= part(f, "k.rar").flags and f.labels == ()


def test_rar_without_a_decoder_is_unscannable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "RAR_DECODER", None)
    f = inspect_message(
        b.eml(attachments=(("a.rar", "application/vnd.rar", rar4({"n.txt": b"RAHASIA"})),))
    )
    p = part(f, "a.rar")
    assert UNSCANNABLE in p.flags and p.reason == "RAR: no free decoder"


# --- TNEF -----------------------------------------------------------------------------


def lzfu(rtf: bytes) -> bytes:
    """MS-OXRTFCP compressed RTF using literals only (valid for any decoder), with the
    end reference at the write position."""
    body = bytearray()
    pos = 0
    write = 207
    while True:
        chunk = rtf[pos : pos + 8]
        pos += len(chunk)
        write = (write + len(chunk)) & 0xFFF
        if len(chunk) == 8:
            body += b"\x00" + chunk
            continue
        body += bytes([1 << len(chunk)]) + chunk + struct.pack(">H", write << 4)
        break
    return struct.pack("<IIII", len(body) + 12, len(rtf), 0x75465A4C, 0) + bytes(body)


def tnef_attr(level: int, attr: int, data: bytes) -> bytes:
    return (
        struct.pack("<BII", level, attr, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)
    )


def tnef_stream(rtf: bytes, *, body: bytes = b"", subject: bytes = b"Laporan\x00") -> bytes:
    prop = struct.pack("<HHII", 0x0102, 0x1009, 1, len(rtf)) + rtf + b"\x00" * (-len(rtf) % 4)
    return (
        b"\x78\x9f\x3e\x22\x01\x00"
        + tnef_attr(1, 0x00089006, b"\x00\x00\x01\x00")
        + tnef_attr(1, 0x00018004, subject)
        + (tnef_attr(1, 0x0002800C, body) if body else b"")
        + tnef_attr(1, 0x00069003, struct.pack("<I", 1) + prop)
    )


def test_decompress_rtf_spec_example() -> None:
    """The worked example of MS-OXRTFCP 3.1.1 (references into the preset dictionary)."""
    blob = bytes.fromhex(
        "2d0000002b0000004c5a4675f1c5c7a703000a007263706731323542320af32068656c09002062"
        "7705b06c647d0a800fa0"
    )
    assert tnef.decompress_rtf(blob, 1 << 20) == (
        b"{\\rtf1\\ansi\\ansicpg1252\\pard hello world}\r\n",
        False,
    )


def test_tnef_compressed_rtf_body_is_read() -> None:
    rtf = rb"{\rtf1\ansi\ansicpg1252{\fonttbl{\f0 Arial;}}\pard SANGAT RAHASIA\par Isi surat.\par}"
    data = tnef_stream(lzfu(rtf), body=b"Lihat isi.")
    f = inspect_message(b.eml(attachments=(("winmail.dat", "application/ms-tnef", data),)))
    assert sources(f)["attachment:winmail.dat:rtf:text"] == "SANGAT_RAHASIA"
    assert "Isi surat." in f.text and "Arial" not in f.text


def test_tnef_rtf_bomb_is_bounded() -> None:
    # Every reference copies 17 bytes from the dictionary: 3 input bytes per 17 out,
    # from an offset that is never the write position (which would end the stream).
    groups = []
    write = 207
    for _ in range(10_000):
        group = b"\xff"
        for _ in range(8):
            group += struct.pack(">H", (((write + 2048) & 0xFFF) << 4) | 0xF)
            write = (write + 17) & 0xFFF
        groups.append(group)
    refs = b"".join(groups)
    blob = struct.pack("<IIII", len(refs) + 12, 0xFFFFFFFF, 0x75465A4C, 0) + refs
    start = time.monotonic()
    out, cut = tnef.decompress_rtf(blob, 1 << 20)
    assert len(out) == 1 << 20 and cut and time.monotonic() - start < 5
    data = tnef_stream(blob)
    f = inspect_message(
        b.eml(attachments=(("winmail.dat", "application/ms-tnef", data),)),
        limits=InspectLimits(expanded_bytes=1 << 20),
    )
    assert "expansion limit" in (part(f, "winmail.dat").reason or "")
    for junk in (b"", b"\x00" * 15, struct.pack("<IIII", 99, 99, 0x12345678, 0)):
        g = inspect_message(
            b.eml(attachments=(("winmail.dat", "application/ms-tnef", tnef_stream(junk)),))
        )
        assert UNSCANNABLE in part(g, "winmail.dat").flags


# --- legacy Office and RTF ------------------------------------------------------------

FODT = """<?xml version="1.0" encoding="UTF-8"?>
<office:document xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0"
 xmlns:style="urn:oasis:names:tc:opendocument:xmlns:style:1.0"
 xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"
 xmlns:dc="http://purl.org/dc/elements/1.1/"
 xmlns:meta="urn:oasis:names:tc:opendocument:xmlns:meta:1.0"
 office:version="1.2" office:mimetype="application/vnd.oasis.opendocument.text">
 <office:meta><dc:title>{title}</dc:title><dc:subject>Anggaran</dc:subject>
  <meta:user-defined meta:name="{prop}">{value}</meta:user-defined></office:meta>
 <office:master-styles><style:master-page style:name="Standard">
  <style:header><text:p>{header}</text:p></style:header></style:master-page>
 </office:master-styles>
 <office:body><office:text>
  <text:p>Kepada Yth. Kepala Dinas</text:p>
  {body}
 </office:text></office:body>
</office:document>
"""


@pytest.fixture(scope="session")
def office(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Real .doc and .rtf files saved by LibreOffice (one soffice run for all of them)."""
    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    if soffice is None:
        pytest.skip("LibreOffice is not installed")
    d = tmp_path_factory.mktemp("office")
    filler = "\n".join(f"<text:p>Paragraf isi nomor {i}.</text:p>" for i in range(30))
    docs = {
        # The marking in the page header only, with the title naming it too.
        "header": FODT.format(
            title="SANGAT RAHASIA", prop="Catatan", value="x", header="SANGAT RAHASIA",
            body=filler,
        ),
        # The marking as a custom property (where Titus-like tools put it).
        "prop": FODT.format(
            title="Nota", prop="Klasifikasi", value="RAHASIA", header="", body=filler
        ),
        "plain": FODT.format(
            title="Jadwal", prop="Catatan", value="x", header="", body="<text:p>Rapat.</text:p>"
        ),
    }  # fmt: skip
    for name, text in docs.items():
        (d / f"{name}.fodt").write_text(text)
    env = {"HOME": str(d / "home"), "PATH": "/usr/bin:/bin"}
    for fmt in ("doc", "rtf"):
        run(
            soffice, "--headless", "--norestore", "--convert-to", fmt, "--outdir", str(d / "out"),
            *(str(d / f"{n}.fodt") for n in docs), env=env,
        )  # fmt: skip
    return {p.name: p.read_bytes() for p in (d / "out").iterdir()}


@pytest.mark.parametrize("ext", ["doc", "rtf"])
def test_libreoffice_doc_and_rtf_labels(office: dict[str, bytes], ext: str) -> None:
    ctype = "application/msword" if ext == "doc" else "application/rtf"
    f = inspect_message(b.eml(attachments=((f"nota.{ext}", ctype, office[f"header.{ext}"]),)))
    assert f.classification == "SANGAT_RAHASIA"
    got = sources(f)
    header = "WordDocument:headers" if ext == "doc" else "headers"
    assert got[f"attachment:nota.{ext}:{header}"] == "SANGAT_RAHASIA"
    prop = "SummaryInformation" if ext == "doc" else "info"
    assert got[f"attachment:nota.{ext}:{prop}"] == "SANGAT_RAHASIA"  # the title
    assert "Paragraf isi nomor 29." in f.text
    assert not part(f, f"nota.{ext}").flags & {UNSCANNABLE, "mismatch"}
    g = inspect_message(b.eml(attachments=((f"p.{ext}", ctype, office[f"prop.{ext}"]),)))
    where = "DocumentSummaryInformation" if ext == "doc" else "info"
    assert sources(g)[f"attachment:p.{ext}:{where}"] == "RAHASIA"
    h = inspect_message(b.eml(attachments=((f"j.{ext}", ctype, office[f"plain.{ext}"]),)))
    assert h.labels == () and "Rapat." in h.text


def test_encrypted_doc_flag(office: dict[str, bytes]) -> None:
    doc = bytearray(office["header.doc"])
    fib = next(i for i in range(512, len(doc), 512) if doc[i : i + 2] == b"\xec\xa5")
    doc[fib + 0x0A] |= 0x00  # low byte unchanged; fEncrypted is bit 8 of the flags word
    doc[fib + 0x0B] |= 0x01
    f = inspect_message(b.eml(attachments=(("e.doc", "application/msword", bytes(doc)),)))
    assert {ENCRYPTED, UNSCANNABLE} <= part(f, "e.doc").flags and f.labels == ()


# A compound file writer (MS-CFB version 3), enough for Excel and PowerPoint 97 streams.
_END, _FREE, _FATSECT = 0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFD


def cfb(streams: dict[str, bytes], *, loop: str | None = None) -> bytes:
    """Streams padded to the 4096-byte mini-stream cutoff, so all live in regular sectors;
    ``folder/name`` is a stream in a storage (one level). ``loop``: that stream's sector
    chain points back at itself (a loop in the FAT)."""
    names = list(streams)
    datas = [s + b"\x00" * max(0, 4096 - len(s)) for s in streams.values()]
    tops = list(dict.fromkeys(n.split("/", 1)[0] for n in names))
    storages = [t for t in tops if t not in streams]
    dir_sectors = (len(names) + len(storages) + 1 + 3) // 4
    data_sectors = [(len(d) + 511) // 512 for d in datas]
    total = dir_sectors + sum(data_sectors)
    fat_sectors = 1
    while fat_sectors * 128 < total + fat_sectors:
        fat_sectors += 1
    fat = [_FATSECT] * fat_sectors
    first_dir = len(fat)
    fat += [len(fat) + i + 1 for i in range(dir_sectors - 1)] + [_END]
    starts = []
    for name, count in zip(names, data_sectors, strict=True):
        start = len(fat)
        starts.append(start)
        chain = [start + i + 1 for i in range(count - 1)] + [_END]
        if name == loop:
            chain[-1] = start
        fat += chain
    fat += [_FREE] * (fat_sectors * 128 - len(fat))
    header = (
        bytes.fromhex("d0cf11e0a1b11ae1") + b"\x00" * 16
        + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6) + b"\x00" * 6
        + struct.pack("<IIIIIIIII", 0, fat_sectors, first_dir, 0, 4096, _END, 0, _END, 0)
    )  # fmt: skip
    difat = list(range(fat_sectors)) + [_FREE] * (109 - fat_sectors)
    header += struct.pack("<109I", *difat)

    def entry(name: str, kind: int, *, child: int, right: int, start: int, size: int) -> bytes:
        raw = (name + "\x00").encode("utf-16-le")
        return (
            raw.ljust(64, b"\x00") + struct.pack("<HBB", len(raw), kind, 1)
            + struct.pack("<III", _FREE, right, child) + b"\x00" * 36
            + struct.pack("<IQ", start, size)
        )  # fmt: skip

    where = {
        name: (start, max(len(data), 4096) if name != loop else 1 << 20)
        for name, data, start in zip(names, streams.values(), starts, strict=True)
    }
    specs: list[list[Any]] = [["Root Entry", 5, _FREE, _FREE, _END, 0]]

    def new(spec: list[Any]) -> int:
        specs.append(spec)
        return len(specs) - 1

    def chain(ids: list[int]) -> None:
        for a, b_ in itertools.pairwise(ids):
            specs[a][3] = b_

    top_ids = []
    for head in tops:
        if head in streams:
            top_ids.append(new([head, 2, _FREE, _FREE, *where[head]]))
            continue
        folder = new([head, 1, _FREE, _FREE, 0, 0])
        kids = [
            new([n.split("/", 1)[1], 2, _FREE, _FREE, *where[n]])
            for n in names
            if n.startswith(head + "/")
        ]
        chain(kids)
        specs[folder][2] = kids[0]
        top_ids.append(folder)
    chain(top_ids)
    specs[0][2] = top_ids[0] if top_ids else _FREE
    entries = [
        entry(name, kind, child=child, right=right, start=start, size=size)
        for name, kind, child, right, start, size in specs
    ]
    directory = b"".join(entries).ljust(dir_sectors * 512, b"\x00")
    fat_bytes = struct.pack(f"<{len(fat)}I", *fat)
    body = (
        fat_bytes
        + directory
        + b"".join(d.ljust(n * 512, b"\x00") for d, n in zip(datas, data_sectors, strict=True))
    )
    return header + body


def summary(title: str) -> bytes:
    """A SummaryInformation property set holding a code page and a title."""
    raw = title.encode("cp1252") + b"\x00"
    raw += b"\x00" * (-len(raw) % 4)
    props = struct.pack("<IhH", 2, 1252, 0) + struct.pack("<II", 0x1E, len(raw)) + raw
    section = struct.pack("<II", 8 + 16 + len(props), 2) + struct.pack("<IIII", 1, 24, 2, 32)
    section += props
    fmtid = uuid.UUID("f29f85e0-4ff9-1068-ab91-08002b27b3d9").bytes_le
    head = struct.pack("<HHI", 0xFFFE, 0, 0x00020006) + b"\x00" * 16 + struct.pack("<I", 1)
    return head + fmtid + struct.pack("<I", 48) + section


def biff(rtype: int, body: bytes) -> bytes:
    return struct.pack("<HH", rtype, len(body)) + body


def xl_string(text: str) -> bytes:
    return struct.pack("<HB", len(text), 1) + text.encode("utf-16-le")


def xls(cells: list[str], *, header: str = "", encrypted: bool = False) -> bytes:
    """BIFF8: a shared string table split over a CONTINUE record mid-string, and a header."""
    sst = struct.pack("<II", len(cells), len(cells)) + b"".join(xl_string(c) for c in cells)
    cut = len(sst) - 8  # inside the last string's characters: "sini" continues
    records = biff(0x0809, b"\x00\x06\x05\x00" + b"\x00" * 12)
    if encrypted:
        records += biff(0x002F, b"\x01\x00" + b"\x00" * 52)
    records += biff(0x0014, xl_string(header)) if header else b""
    records += biff(0x00FC, sst[:cut]) + biff(0x003C, b"\x01" + sst[cut:]) + biff(0x000A, b"")
    return cfb({"Workbook": records, "\x05SummaryInformation": summary("Laporan")})


def ppt(texts: list[str], *, cp1252: str = "") -> bytes:
    atoms = b"".join(
        struct.pack("<HHI", 0, 0x0FA0, 2 * len(t)) + t.encode("utf-16-le") for t in texts
    )
    if cp1252:
        atoms += struct.pack("<HHI", 0, 0x0FA8, len(cp1252)) + cp1252.encode("cp1252")
    slides = struct.pack("<HHI", 0x000F, 0x0FF0, len(atoms)) + atoms
    doc = struct.pack("<HHI", 0x000F, 0x03E8, len(slides)) + slides
    return cfb({"PowerPoint Document": doc, "\x05SummaryInformation": summary("Paparan")})


def test_xls_strings_header_and_properties() -> None:
    data = xls(["Nama", "Anggaran", "Catatan panjang sekali di sini"], header="&CRAHASIA")
    read = legacy.read_ole_text(data, max_text=1 << 20, budget=1 << 24)
    text = "\n".join(t for _, t, _ in read.texts)
    assert "Catatan panjang sekali di sini" in text and "&CRAHASIA" in text
    assert ("SummaryInformation", "title", "Laporan") in read.properties
    f = inspect_message(
        b.eml(attachments=(("a.xls", "application/vnd.ms-excel", xls(["SANGAT RAHASIA", "isi"])),))
    )
    assert sources(f)["attachment:a.xls:Workbook"] == "SANGAT_RAHASIA"
    g = inspect_message(
        b.eml(
            attachments=(("e.xls", "application/vnd.ms-excel", xls(["RAHASIA"], encrypted=True)),)
        )
    )
    assert {ENCRYPTED, UNSCANNABLE} <= part(g, "e.xls").flags and g.labels == ()


def test_ppt_text_atoms() -> None:
    data = ppt(["SANGAT RAHASIA", "Paparan anggaran"], cp1252="Catatan pembicara")
    f = inspect_message(b.eml(attachments=(("p.ppt", "application/vnd.ms-powerpoint", data),)))
    assert sources(f)["attachment:p.ppt:PowerPoint Document"] == "SANGAT_RAHASIA"
    assert "Catatan pembicara" in f.text and "Paparan anggaran" in f.text
    assert not part(f, "p.ppt").flags & {UNSCANNABLE, "mismatch"}


def test_encrypted_ppt_stays_encrypted() -> None:
    doc = struct.pack("<HHI", 0, 0x0FA0, 14) + "RAHASIA".encode("utf-16-le")
    data = cfb({"PowerPoint Document": doc, "EncryptedSummary": b"\x00" * 64})
    f = inspect_message(b.eml(attachments=(("e.ppt", "application/vnd.ms-powerpoint", data),)))
    assert {ENCRYPTED, UNSCANNABLE} <= part(f, "e.ppt").flags and f.labels == ()


def utf16(text: str) -> bytes:
    return text.encode("utf-16-le") + b"\x00\x00"


def test_outlook_msg_subject_body_rtf_and_attachments() -> None:
    rtf = rb"{\rtf1\ansi\pard Isi surat dinas.\par SANGAT RAHASIA\par}"
    data = cfb(
        {
            "__properties_version1.0": b"\x00" * 32,
            "__substg1.0_0037001F": utf16("[RAHASIA] Nota dinas"),
            "__substg1.0_1000001F": utf16("Terlampir laporan."),
            "__substg1.0_10090102": lzfu(rtf),
            "__attach_version1.0_#00000000/__substg1.0_3707001F": utf16("lampiran.txt"),
            "__attach_version1.0_#00000000/__substg1.0_37010102": b"TERBATAS\n\nisi\n",
        }
    )
    f = inspect_message(b.eml(attachments=(("nota.msg", "application/vnd.ms-outlook", data),)))
    got = sources(f)
    assert got["attachment:nota.msg:subject"] == "RAHASIA"
    assert got["attachment:nota.msg:rtf:text"] == "SANGAT_RAHASIA"
    assert got["attachment:nota.msg/lampiran.txt"] == "TERBATAS"
    assert "Terlampir laporan." in f.text
    assert part(f, "nota.msg/lampiran.txt").depth == 2


def test_hostile_ole_ends_as_a_finding() -> None:
    looped = cfb({"Workbook": biff(0x00FC, b"\x00" * 8)}, loop="Workbook")
    huge = cfb({"Workbook": b"\x00" * 5000})
    # The root entry (the mini stream) at 1024 + 116: a chain that loops, and a size
    # larger than the file.
    mini_loop = bytearray(looped)
    struct.pack_into(
        "<IQ", mini_loop, 1024 + 116, struct.unpack_from("<I", looped, 1024 + 244)[0], 4096
    )
    mini_big = bytearray(huge)
    struct.pack_into("<IQ", mini_big, 1024 + 116, 2, 1 << 31)
    start = time.monotonic()
    for data in (
        looped,
        bytes(mini_loop),
        bytes(mini_big),
        huge[:1500],
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\xff" * 600,
    ):
        f = inspect_message(b.eml(attachments=(("x.xls", "application/vnd.ms-excel", data),)))
        assert UNSCANNABLE in part(f, "x.xls").flags, part(f, "x.xls")
    assert time.monotonic() - start < 5
    read = legacy.read_ole_text(huge, max_text=1 << 20, budget=1000)
    assert read.reason == "expanded bytes limit reached"


def test_rtf_hostile_nesting_is_linear() -> None:
    for blob in (
        b"{\\rtf1 " + b"{" * 1_000_000 + b"SANGAT RAHASIA\\par " + b"}" * 1_000_000 + b"}",
        b"{\\rtf1 " + b"{" * 1_000_000 + b"SANGAT RAHASIA\\par ",  # never closed
        b"{\\rtf1 {\\*\\unknowndest " + b"{\\x }" * 300_000 + b"}\\par SANGAT RAHASIA\\par}",
    ):
        start = time.monotonic()
        f = inspect_message(b.eml(attachments=(("n.rtf", "application/rtf", blob),)))
        assert time.monotonic() - start < 10
        assert f.classification == "SANGAT_RAHASIA", f.labels
    read = legacy.rtf_text(
        b"{\\rtf1\\ansi\\ansicpg1251 \\'cf\\u1056?\\bin5 {}}}"
        b"{\\pict 0aff}{\\*\\fldinst X} end\\par}",
        max_text=100,
    )
    assert read.texts[0][1] == "ПР end\n"


def test_file_types_by_signature() -> None:
    assert filetype.by_signature(b"7z\xbc\xaf\x27\x1c\x00\x04") == "application/x-7z-compressed"
    assert filetype.kind(filetype.by_signature(rar5({})) or "") == "rar"
    assert filetype.by_signature(compressed_data(b"x")) is None  # a pkcs9 OID, not pkcs7
    assert filetype.kind(filetype.by_signature(tnef_stream(b"")) or "") == "tnef"
    assert filetype.kind(filetype.sniff(xls(["a"]))) == "ole"
    assert not filetype.mismatch("text/rtf", "rtf", "application/rtf")
    assert not filetype.mismatch("application/pkcs7-mime", "p7m", "application/pkcs7-mime")
    assert not filetype.mismatch("text/plain", "p7m", "application/pkcs7-mime")  # base64 DER
    assert filetype.mismatch("application/x-7z-compressed", "pdf", "")
    assert filetype.mismatch("application/vnd.rar", "zip", "application/zip")


# --- end to end -----------------------------------------------------------------------


@pytest.fixture
def gateway(sink: Sink, gateway_factory: Any, tmp_path: Path) -> Iterator[Any]:
    yield gateway_factory(
        upstream=f"smtp://127.0.0.1:{sink.port}",
        routes={"sanapati": f"smtp://127.0.0.1:{sink.port}"},
        policy=POLICY,
        notices={"enabled": False},
    )


def test_signed_smime_with_secret_attachment_is_held_at_the_gateway(
    gateway: Any, sink: Sink, cert: tuple[Path, Path], tmp_path: Path
) -> None:
    import smtplib

    secret = openssl(cert, tmp_path, "smime", "-sign", "-nodetach")
    plain = openssl(
        cert, tmp_path, "smime", "-sign", "-nodetach",
        data=INNER.replace(b"RAHASIA\r\n\r\nIsi nota dinas.", b"Jadwal rapat pukul 10."),
    )  # fmt: skip
    for data, rcpt in ((secret, "sari@gmail.com"), (plain, "andi@gmail.com")):
        msg = HEAD.replace(b"sari@gmail.com", rcpt.encode()) + data
        with smtplib.SMTP("127.0.0.1", gateway.port, timeout=60) as s:
            s.sendmail("budi@dinas.jakarta.go.id", [rcpt], msg.replace(b"\r\n", b"\n"))
    # The signed message without a marking is delivered (signing is no reason to hold)...
    [delivered] = sink.wait_for(1)
    assert delivered.rcpt_tos == ["andi@gmail.com"]
    # ... and the one with a RAHASIA attachment inside its signature is held.
    out = subprocess.run(
        [sys.executable, "-m", "milter", "-c", str(gateway.config_path), "quarantine", "list",
         "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    [held] = json.loads(out.stdout)
    assert held["recipients"] == ["sari@gmail.com"]
    assert "RAHASIA" in json.dumps(held)
