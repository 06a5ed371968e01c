"""The contract between the milter front-end and whoever decides: one call per message.

The server collects a transaction, calls the handler once at end of message and
puts its result on the wire; the handler never sees the protocol, so the
application layer codes against these names only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar, overload

from milter.message import Message
from milter.milterproto.codec import unbrace
from milter.replies import Reply

_T = TypeVar("_T")


class Macros(dict[str, str]):
    """Macro values under their bare names, found under Sendmail's braced ones too.

    Postfix and milter documentation write ``{auth_authen}``; code written from
    either spelling then finds the value.
    """

    def __missing__(self, key: str) -> str:
        bare = unbrace(key)
        if bare != key and dict.__contains__(self, bare):
            return dict.__getitem__(self, bare)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, unbrace(key) if isinstance(key, str) else key)

    @overload
    def get(self, key: str, default: None = None, /) -> str | None: ...
    @overload
    def get(self, key: str, default: str, /) -> str: ...
    @overload
    def get(self, key: str, default: _T, /) -> str | _T: ...
    def get(self, key: str, default: object = None, /) -> object:
        return dict.get(self, unbrace(key), default)


@dataclass
class MilterTransaction:
    macros: dict[str, str]  # bare names: "i", "j", "auth_authen", "client_addr", ...
    client_addr: str  # from CONNECT (or {client_addr}); "" if unknown
    client_name: str
    client_port: int
    helo: str
    mail_from: str  # without angle brackets; "" for the null sender
    mail_args: list[str]  # ESMTP parameters of MAIL FROM, e.g. ["SIZE=123", "RET=HDRS"]
    rcpts: list[str]  # without angle brackets, in order
    rcpt_args: dict[str, list[str]]  # recipient -> its ESMTP parameters
    headers: list[tuple[str, str]]  # in order; folded values joined with CRLF
    message: Message  # headers + CRLF + body, dot-stuffed wire form
    smtputf8: bool  # SMTPUTF8 in mail_args


@dataclass
class MilterResult:
    kind: Literal["continue", "accept", "discard", "reject", "tempfail"]
    # For reject and tempfail: sent as SMFIR_REPLYCODE; a text with line breaks
    # becomes a multi-line reply.
    reply: Reply | None = None
    add_headers: list[tuple[str, str]] = field(default_factory=list)
    # (index, name, value): index 0 is the top of the header.
    insert_headers: list[tuple[int, str, str]] = field(default_factory=list)
    # (name, 1-based index among headers of that name, value); "" deletes.
    change_headers: list[tuple[str, int, str]] = field(default_factory=list)
    replace_body: bytes | None = None  # CRLF lines, sent in chunks of 65535 bytes
    delete_rcpts: list[str] = field(default_factory=list)
    add_rcpts: list[str] = field(default_factory=list)
    # Called when the MTA went away before hearing this result: it has not queued the
    # message and its client will send it again, so what the handler made durable for
    # it (holds, retry entries) must be taken back or the retry would duplicate it.
    dropped: Callable[[], Awaitable[None]] | None = field(default=None, compare=False)


Handler = Callable[[MilterTransaction], Awaitable[MilterResult]]
