"""The SMTP envelope, as the front-end received it.

Kept separate from the message bytes because policy decides per envelope recipient,
and a recipient's fate must never depend on what the headers claim.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

_ID_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXZ"


_POOL = bytearray()
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:
    """A forked worker must not hand out the ids its parent's pool would (nor wait on
    a lock a thread of the parent held at the fork)."""
    global _POOL_LOCK
    _POOL_LOCK = threading.Lock()
    _POOL.clear()


os.register_at_fork(after_in_child=_forget_pool)


def new_id(length: int = 12) -> str:
    """A short, unguessable, printable identifier (no vowels: no accidental words).

    The system's random source is read 4 KB at a time, not once per id: ids are made
    for every message on the hot path, and each read is a system call.
    """
    with _POOL_LOCK:  # store threads make ids too: no two may take the same bytes
        if len(_POOL) < length:
            _POOL.extend(os.urandom(4096))
        n = int.from_bytes(_POOL[-length:])
        del _POOL[-length:]
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
class Dsn:
    """The RFC 3461 parameters a client gave, passed on where the next hop offers DSN.

    Kept as the client wrote them (``ENVID`` and ``ORCPT`` are xtext): the gateway only
    relays them, the next hop is the one that generates the notifications.
    """

    ret: str = ""  # FULL or HDRS
    envid: str = ""
    notify: Mapping[str, str] = field(default_factory=dict)  # recipient -> NOTIFY value
    orcpt: Mapping[str, str] = field(default_factory=dict)  # recipient -> ORCPT value

    def __bool__(self) -> bool:
        return bool(self.ret or self.envid or self.notify or self.orcpt)

    def mail_params(self) -> str:
        """The MAIL FROM parameters, each with a leading space."""
        out = f" RET={self.ret}" if self.ret else ""
        return out + (f" ENVID={self.envid}" if self.envid else "")

    def rcpt_params(self, address: str) -> str:
        """The RCPT TO parameters of one recipient, each with a leading space."""
        notify, orcpt = self.notify.get(address), self.orcpt.get(address)
        return (f" NOTIFY={notify}" if notify else "") + (f" ORCPT={orcpt}" if orcpt else "")


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
    # Where it came from, as the MTA in front of the gateway told it (milter macros or
    # XFORWARD); empty when unknown. ``mta_queue_id`` is that MTA's queue id, which
    # lets an administrator follow one message from Postfix's log into the gateway's.
    frontend: str = "smtp"  # smtp | milter
    client_name: str = ""
    login: str = ""  # the sender's SASL login name
    mta_queue_id: str = ""
    dsn: Dsn = field(default_factory=Dsn)
    # The connection's own peer when ``client_addr`` names the original client that an
    # MTA in front passed on (XFORWARD): the Received header tells who really connected.
    peer_addr: str = ""

    def origin(self) -> dict[str, str]:
        """The fields the log line, the quarantine record and the alerts share."""
        return {
            "frontend": self.frontend,
            "client_address": self.client_addr,
            "client_name": self.client_name,
            "helo": self.helo,
            "login": self.login,
            "queue_id": self.mta_queue_id,
        }
