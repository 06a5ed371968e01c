"""DKIM: keys made by ``milter dkim keygen``, signatures checked by dkimpy offline."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest

from milter.actions.dkim import (
    DkimError,
    keygen,
    load_keys,
    public_txt,
    sign,
    signer,
)
from milter.actions.rewrite import apply
from milter.cli import main
from milter.config import DkimKey
from milter.policy.verdict import Disclaimer, SubjectPrefix

MESSAGE = (
    b"From: Budi <budi@dinas.jakarta.go.id>\r\n"
    b"To: warga@gmail.com\r\n"
    b"Subject: Undangan rapat\r\n"
    b"Date: Mon, 02 Nov 2026 09:00:00 +0700\r\n"
    b"Message-ID: <abc@dinas.jakarta.go.id>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Rapat hari Senin pukul 09.00.\r\n"
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[DkimKey, str]]:
    """Two real keys, one per domain, with the TXT value DNS would hold."""
    d = tmp_path_factory.mktemp("dkim")
    out = {}
    for domain, selector in (("jakarta.go.id", "gw1"), ("bapenda.jakarta.go.id", "bp1")):
        path, record = keygen(domain, selector, d)
        out[domain] = (DkimKey(domain, selector, path), record)
    return out


def dns_for(keys: dict[str, tuple[DkimKey, str]]) -> Callable[..., bytes | None]:
    table = {
        f"{k.selector}._domainkey.{k.domain}.".encode(): public_txt(Path(k.key_file).read_bytes())
        for k, _ in keys.values()
    }

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        value = table.get(name if name.endswith(b".") else name + b".")
        return value.encode() if value else None

    return dnsfunc


def signature_tags(data: bytes) -> dict[str, str]:
    header = data.split(b"\r\n\r\n", 1)[0].decode()
    m = re.search(r"DKIM-Signature:(.*?)(?=\r\n\S)", header, re.S)
    assert m, header
    flat = re.sub(r"\s+", "", m.group(1))
    return dict(t.split("=", 1) for t in flat.split(";") if t)


def test_keygen_writes_private_key_and_record(keys: dict[str, tuple[DkimKey, str]]) -> None:
    key, record = keys["jakarta.go.id"]
    assert stat.S_IMODE(os.stat(key.key_file).st_mode) == 0o600
    assert Path(key.key_file).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert record.startswith("gw1._domainkey.jakarta.go.id. IN TXT (")
    strings = re.findall(r'"([^"]*)"', record)
    assert all(len(s) <= 255 for s in strings)
    assert "".join(strings) == public_txt(Path(key.key_file).read_bytes())
    assert "".join(strings).startswith("v=DKIM1; k=rsa; p=MII")


def test_keygen_never_overwrites(tmp_path: Path) -> None:
    keygen("jakarta.go.id", "s1", tmp_path)
    with pytest.raises(DkimError, match="not overwriting"):
        keygen("jakarta.go.id", "s1", tmp_path)
    with pytest.raises(DkimError):
        keygen("../etc", "s1", tmp_path)


def test_signature_verifies(keys: dict[str, tuple[DkimKey, str]]) -> None:
    configured = [k for k, _ in keys.values()]
    signed = sign(MESSAGE, configured, "dinas.jakarta.go.id")
    assert signed.endswith(MESSAGE)
    tags = signature_tags(signed)
    assert tags["d"] == "jakarta.go.id" and tags["s"] == "gw1"
    assert tags["c"] == "relaxed/relaxed"
    assert tags["h"].lower().split(":")[:2] == ["from", "from"]
    assert "subject" in tags["h"].lower()
    assert dkim.verify(signed, dnsfunc=dns_for(keys))


def test_most_specific_domain_wins(keys: dict[str, tuple[DkimKey, str]]) -> None:
    data = MESSAGE.replace(b"budi@dinas.", b"ani@bapenda.")
    signed = sign(data, [k for k, _ in keys.values()], "bapenda.jakarta.go.id")
    assert signature_tags(signed)["d"] == "bapenda.jakarta.go.id"
    assert dkim.verify(signed, dnsfunc=dns_for(keys))


def test_foreign_domain_left_unsigned(keys: dict[str, tuple[DkimKey, str]]) -> None:
    data = MESSAGE.replace(b"budi@dinas.jakarta.go.id", b"someone@example.org")
    assert sign(data, [k for k, _ in keys.values()], "example.org") == data
    # a lookalike domain is not a subdomain
    data = MESSAGE.replace(b"dinas.jakarta.go.id", b"notjakarta.go.id")
    assert sign(data, [k for k, _ in keys.values()], "notjakarta.go.id") == data


def test_envelope_domain_used_when_from_has_none(keys: dict[str, tuple[DkimKey, str]]) -> None:
    data = MESSAGE.replace(b"From: Budi <budi@dinas.jakarta.go.id>\r\n", b"From: undisclosed\r\n")
    signed = sign(data, [k for k, _ in keys.values()], "jakarta.go.id")
    assert signature_tags(signed)["d"] == "jakarta.go.id"


def test_verifies_after_disclaimer_and_breaks_on_later_change(
    keys: dict[str, tuple[DkimKey, str]],
) -> None:
    rewritten = apply(
        MESSAGE,
        [
            Disclaimer("Pesan ini RAHASIA / confidential.", rule="r"),
            SubjectPrefix("[TERBATAS]", rule="r"),
        ],
    )
    assert b"confidential" in rewritten and b"[TERBATAS]" in rewritten
    sign_message = signer([k for k, _ in keys.values()])
    signed = sign_message(rewritten, "budi@dinas.jakarta.go.id")
    dnsfunc = dns_for(keys)
    assert dkim.verify(signed, dnsfunc=dnsfunc)
    tampered = signed.replace(b"Rapat hari Senin", b"Rapat hari Selasa")
    assert not dkim.verify(tampered, dnsfunc=dnsfunc)


def test_lf_message_signed_consistently(keys: dict[str, tuple[DkimKey, str]]) -> None:
    data = MESSAGE.replace(b"\r\n", b"\n")
    signed = sign(data, [k for k, _ in keys.values()], "")
    assert b"\r" not in signed
    assert dkim.verify(signed.replace(b"\n", b"\r\n"), dnsfunc=dns_for(keys))


def test_configured_header_set(keys: dict[str, tuple[DkimKey, str]]) -> None:
    key, _ = keys["jakarta.go.id"]
    custom = DkimKey(key.domain, key.selector, key.key_file, ("From", "Subject"))
    signed = sign(MESSAGE, [custom], "")
    assert signature_tags(signed)["h"].lower() == "from:subject"
    assert dkim.verify(signed, dnsfunc=dns_for(keys))
    with pytest.raises(DkimError, match="From"):
        load_keys([DkimKey(key.domain, key.selector, key.key_file, ("Subject",))])


def test_bad_key_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(DkimError, match="not a usable private key"):
        load_keys([DkimKey("jakarta.go.id", "x", str(bad))])
    with pytest.raises(DkimError):
        load_keys([DkimKey("jakarta.go.id", "x", str(tmp_path / "missing.pem"))])


def test_cli_keygen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["dkim", "keygen", "--domain", "jakarta.go.id", "--selector", "gw2"]
    args += ["--dir", str(tmp_path / "keys")]
    rc = main(args)
    out, err = capsys.readouterr()
    assert rc == 0
    key = tmp_path / "keys" / "gw2.jakarta.go.id.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert out.startswith("gw2._domainkey.jakarta.go.id. IN TXT")
    assert str(key) in err
    rc = main(args)  # a second key under the same name is refused, never overwritten
    assert rc == 1
    assert "not overwriting" in capsys.readouterr().err
