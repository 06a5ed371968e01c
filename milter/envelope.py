"""The SMTP envelope, as the front-end received it.

Kept separate from the message bytes because policy decides per envelope recipient,
and a recipient's fate must never depend on what the headers claim.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

_ID_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXZ"


def new_id(length: int = 12) -> str:
    """A short, unguessable, printable identifier (no vowels: no accidental words).

    One read of the system's random source per id (not one per character): ids are
    made for every message on the hot path.
    """
    n = int.from_bytes(secrets.token_bytes(length))
    out = []
    for _ in range(length):
        n, r = divmod(n, len(_ID_ALPHABET))
        out.append(_ID_ALPHABET[r])
    return "".join(out)


def domain_of(address: str) -> str:
    """The lower-cased domain of an address; empty for the null sender or a bare local part."""
    _, _, domain = address.rpartition("@")
    return domain.strip().strip(">").lower() if "@" in address else ""


@dataclass(frozen=True)
class Envelope:
    """Who sent what to whom, as said in MAIL FROM / RCPT TO, not in the headers."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    client_addr: str = "127.0.0.1"
    helo: str = ""
    smtputf8: bool = False
    tls: bool = False
    esmtp: bool = True
    queue_id: str = field(default_factory=new_id)
    received_at: float = field(default_factory=time.time)
