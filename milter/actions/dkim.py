"""DKIM signing, behind one adapter over dkimpy (which has no type hints).

The gateway signs last, after every rewrite, so the signature covers what the
recipient receives; a disclaimer added later would break it. The key is chosen by
the domain in From (what DMARC aligns on), then by the envelope sender's domain; a
key for ``jakarta.go.id`` also signs for its subdomains (relaxed alignment). With no
matching key the message goes out unsigned rather than signed for a foreign domain.

Keys are generated with the ``openssl`` command (as dkimpy's own ``dknewkey`` does),
so no cryptography library is needed beyond what dkimpy brings.
"""

from __future__ import annotations

import base64
import functools
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from pathlib import Path

import dkim
import dkim.crypto

from milter.config import DkimKey
from milter.envelope import domain_of

# Signed when present; From is listed twice so a second From cannot be added unnoticed.
DEFAULT_HEADERS = (
    "from",
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "in-reply-to",
    "references",
    "auto-submitted",
)
DEFAULT_DIRECTORY = "/etc/milter/dkim"
KEY_BITS = 2048


class DkimError(Exception):
    """A key cannot be read, generated or used."""


@dataclass(frozen=True)
class LoadedKey:
    """A configured key with its private key read and checked."""

    domain: str
    selector: str
    private_key: bytes
    headers: tuple[str, ...]

    def covers(self, domain: str) -> bool:
        return domain == self.domain or domain.endswith("." + self.domain)


@functools.lru_cache(maxsize=64)
def _read_key(path: str, mtime_ns: int, size: int) -> bytes:
    """The key file's bytes, cached until the file changes (mtime and size are the key)."""
    data = Path(path).read_bytes()
    try:
        dkim.crypto.parse_pem_private_key(data)
    except Exception as exc:  # dkimpy raises assorted types for a bad key
        raise DkimError(f"{path}: not a usable private key ({exc})") from None
    return data


def load_keys(keys: Sequence[DkimKey]) -> tuple[LoadedKey, ...]:
    """Read and check every configured key; DkimError names the first bad one."""
    out = []
    for k in keys:
        try:
            st = os.stat(k.key_file)
        except OSError as exc:
            raise DkimError(f"{k.key_file}: {exc.strerror}") from None
        try:
            data = _read_key(k.key_file, st.st_mtime_ns, st.st_size)
        except OSError as exc:
            raise DkimError(f"{k.key_file}: {exc.strerror}") from None
        headers = tuple(h.lower() for h in k.headers) or DEFAULT_HEADERS
        if "from" not in headers:
            raise DkimError(f"{k.domain}/{k.selector}: the signed headers must include From")
        out.append(LoadedKey(k.domain.lower(), k.selector, data, headers))
    return tuple(out)


def _from_domain(data: bytes) -> str:
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    msg = BytesHeaderParser(policy=compat32).parsebytes(head + b"\n")
    values = [str(v) for v in msg.get_all("from", [])]
    for _, address in getaddresses(values):
        if "@" in address:
            return domain_of(address)
    return ""


def choose_key(keys: Sequence[LoadedKey], from_domain: str, sender_domain: str) -> LoadedKey | None:
    """The key for the From domain, else the sender's; exact domains before parents."""
    for domain in (from_domain.lower(), sender_domain.lower()):
        if not domain:
            continue
        for k in keys:
            if k.domain == domain:
                return k
        parents = [k for k in keys if k.covers(domain)]
        if parents:
            return max(parents, key=lambda k: len(k.domain))
    return None


def sign_loaded(data: bytes, keys: Sequence[LoadedKey], sender_domain: str) -> bytes:
    """``data`` with a DKIM-Signature prepended, or unchanged when no key matches."""
    key = choose_key(keys, _from_domain(data), sender_domain)
    if key is None:
        return data
    eol = b"\r\n" if b"\r\n" in data[: data.find(b"\n") + 1] else b"\n"
    present = _present_headers(data)
    include = [h.encode("ascii") for h in key.headers if h in present]
    try:
        header = dkim.sign(
            data,
            key.selector.encode("ascii"),
            key.domain.encode("ascii"),
            key.private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=include,
            linesep=eol,
        )
    except Exception as exc:  # dkimpy's DKIMException and parse errors alike
        raise DkimError(f"cannot sign for {key.domain}: {exc}") from None
    if eol == b"\n":
        header = header.replace(b"\r\n", b"\n")
    return bytes(header) + data


def _present_headers(data: bytes) -> set[str]:
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    msg = BytesHeaderParser(policy=compat32).parsebytes(head + b"\n")
    return {k.lower() for k in msg}


def sign(data: bytes, keys: Sequence[DkimKey], sender_domain: str) -> bytes:
    """Sign with the configured key matching the From or sender domain, if any."""
    return sign_loaded(data, load_keys(keys), sender_domain)


def signer(keys: Sequence[DkimKey]) -> Callable[[bytes, str], bytes]:
    """A ``sign(data, mail_from)`` for the pipeline, with the keys read once now."""
    loaded = load_keys(keys)

    def sign_message(data: bytes, mail_from: str) -> bytes:
        return sign_loaded(data, loaded, domain_of(mail_from))

    return sign_message


# -- key generation ----------------------------------------------------------------------


def _openssl(*args: str, stdin: bytes | None = None) -> bytes:
    exe = shutil.which("openssl")
    if exe is None:
        raise DkimError("the openssl command is needed to generate keys")
    proc = subprocess.run([exe, *args], input=stdin, capture_output=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise DkimError(f"openssl {args[0]} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def public_txt(private_pem: bytes) -> str:
    """The TXT record value (``v=DKIM1; k=rsa; p=...``) for a private key."""
    der = _openssl("pkey", "-pubout", "-outform", "DER", stdin=private_pem)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")


def zone_record(domain: str, selector: str, txt: str) -> str:
    """A zone-file line; the value is split into strings of at most 255 characters."""
    chunks = [txt[i : i + 255] for i in range(0, len(txt), 255)]
    quoted = " ".join(f'"{c}"' for c in chunks)
    return f"{selector}._domainkey.{domain}. IN TXT ( {quoted} )"


def keygen(domain: str, selector: str, directory: str | os.PathLike[str]) -> tuple[str, str]:
    """Write a new RSA key as ``DIR/SELECTOR.DOMAIN.pem`` (mode 0600); return its path
    and the DNS TXT record to publish. An existing key is never overwritten."""
    domain = domain.strip().lower().rstrip(".")
    if not domain or any(c in domain for c in "/ \\") or "." not in domain:
        raise DkimError(f"not a domain: {domain!r}")
    if not selector or not all(c.isalnum() or c in "-_." for c in selector):
        raise DkimError(f"not a selector: {selector!r}")
    pem = _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{KEY_BITS}")
    folder = Path(directory)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / f"{selector}.{domain}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise DkimError(
            f"{folder / f'{selector}.{domain}.pem'} exists; not overwriting it"
        ) from None
    except OSError as exc:
        raise DkimError(f"{folder}: {exc.strerror}") from None
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    return str(path), zone_record(domain, selector, public_txt(pem))
