"""Rebuilding the message from HEADER and BODY packets, in the gateway's wire form.

The rest of the gateway keeps a message dot-stuffed, as SMTP carries it (see
``milter.message``), so the milter front-end stuffs while it receives instead of
making a second pass over a large spooled file. Memory stays bounded: past a
threshold the bytes go to a temporary file in the spool directory (the gateway's one
``SpoolWriter``, so its leftovers are swept like the SMTP proxy's).
"""

from __future__ import annotations

import re

from milter.message import Message, SpoolWriter

_FOLD = re.compile(rb"\r?\n")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_LINE_DOT = re.compile(rb"\n\.")  # a regex finds it faster than ``in`` in base64 text


class DotStuffer:
    """Dot-stuffs a CRLF stream that arrives in arbitrary pieces.

    A line-leading dot may sit right after a cut (the previous piece ended with
    CRLF, or with CR and this one starts with LF), where a per-piece replace
    cannot see it; the last two bytes seen are carried over for that. Bare LF is
    made CRLF first (Postfix never sends one, other MTAs might), so that no dot
    becomes line-leading after it has been checked.
    """

    def __init__(self) -> None:
        self._tail = b"\r\n"  # the start of the message is the start of a line

    def feed(self, data: bytes) -> bytes:
        if not data:
            return data
        tail = self._tail
        if data.count(b"\n") != data.count(b"\r\n"):
            if tail[-1:] == b"\r" and data[:1] == b"\n":
                data = b"\n" + _BARE_LF.sub(b"\r\n", data[1:])
            else:
                data = _BARE_LF.sub(b"\r\n", data)
        self._tail = (tail + data)[-2:]
        head = b""
        if tail[-1:] == b"\n" and data[:1] == b".":
            head = b"."
        elif tail[-1:] == b"\r" and data[:2] == b"\n.":
            head, data = b"\n.", data[1:]
        if _LINE_DOT.search(data):
            data = data.replace(b"\r\n.", b"\r\n..")
        return head + data if head else data

    @property
    def at_line_start(self) -> bool:
        return self._tail == b"\r\n"


def header_bytes(name: bytes, value: bytes, leadspc: bool) -> bytes:
    """One header field as it stood in the message.

    Postfix sends continuation lines separated by a bare LF and, unless
    SMFIP_HDR_LEADSPC was agreed, drops the one space after the colon; that space
    is then put back, which is what nearly every message had.
    """
    value = _FOLD.sub(b"\r\n", value)
    return name + (b":" if leadspc else b": ") + value + b"\r\n"


class MessageBuilder:
    """Headers, the blank line and the body of one transaction, counted and stuffed.

    ``size`` counts the message as the recipient sees it (before stuffing), the
    figure a size limit is about. Once ``over`` is set the bytes are dropped and
    the spool file is gone, but the count goes on.
    """

    def __init__(self, threshold: int, spool_dir: str | None, max_size: int) -> None:
        self._spool = SpoolWriter(threshold, spool_dir, repair=False)
        self._stuffer = DotStuffer()
        self.max_size = max_size
        self.size = 0
        self.over = False
        self._in_body = False

    def _write(self, data: bytes) -> None:
        self.size += len(data)
        if self.over:
            return
        if self.size > self.max_size:
            self.over = True
            self._spool.discard()
            return
        self._spool.write(self._stuffer.feed(data))

    def header(self, name: bytes, value: bytes, leadspc: bool) -> None:
        self._write(header_bytes(name, value, leadspc))

    def end_of_headers(self) -> None:
        if not self._in_body:
            self._in_body = True
            self._write(b"\r\n")

    def body(self, chunk: bytes) -> None:
        self.end_of_headers()
        self._write(chunk)

    def finish(self) -> Message:
        """The message; a body that does not end with CRLF gets one, as SMTP requires."""
        self.end_of_headers()
        if not self._stuffer.at_line_start:
            self._write(b"\r\n")
        return self._spool.finish()

    def discard(self) -> None:
        self._spool.discard()
