"""A received message in its wire form, in memory or spooled to disk.

The gateway keeps the DATA bytes exactly as the client sent them, still
dot-stuffed: relaying them needs no second copy and no re-encoding, which is
what keeps a pass-through relay fast and a 25 MB message cheap. Only the
inspector needs the unstuffed content, and it asks for it once.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CHUNK = 256 * 1024
# Spool files are ``msg-`` and tempfile's random suffix (lower-case letters, digits
# and ``_``); nothing else in a spool directory is the gateway's to remove.
SPOOL_PREFIX = "msg-"
_SPOOL_NAME = re.compile(re.escape(SPOOL_PREFIX) + r"[a-z0-9_]+\Z")
# When this module was first imported: close to the start of the process, and, as
# forked workers inherit it, of the supervisor that forked them.
_IMPORTED = time.time()


_LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")
# A dot between line-break characters that is not a proper CRLF "." CRLF line: the
# SMTP smuggling sequences (<LF>.<LF>, <CR>.<CR>, <CR><LF>.<LF> ...). A stuffed wire
# never contains a proper one, so any match is a hostile or broken message.
SMUGGLING = re.compile(rb"[\r\n]\.[\r\n]")


def smuggling(data: bytes) -> bool:
    """Does ``data`` hold a smuggling sequence (``SMUGGLING``)? Every one starts with a
    line-break byte and a dot, which ordinary text has only on a dot-stuffed line: two
    searches at memchr speed settle most messages, where the pattern, which has no
    literal to look for, tests every byte."""
    return (b"\n." in data or b"\r." in data) and SMUGGLING.search(data) is not None


def normalize(content: bytes) -> bytes:
    """CRLF line endings everywhere, as the wire requires."""
    if b"\r" not in content or re.search(rb"\r(?!\n)|(?<!\r)\n", content):
        content = _LINE_ENDINGS.sub(b"\r\n", content)
    return content


def stuff(content: bytes) -> bytes:
    """Dot-stuff CRLF content for the wire (RFC 5321 section 4.5.2)."""
    if b"\n." not in content and not content.startswith(b"."):
        return content
    out = content.replace(b"\r\n.", b"\r\n..")
    return b"." + out if out.startswith(b".") else out


def unstuff(wire: bytes) -> bytes:
    """Undo dot-stuffing as a receiving MTA does (RFC 5321 section 4.5.2): a line's
    leading dot is removed, so the inspector sees what the recipient will see."""
    if b"\n." not in wire and not wire.startswith(b"."):
        return wire
    out = wire.replace(b"\r\n.", b"\r\n")
    return out[1:] if out.startswith(b".") else out


class Message:
    """The DATA of one transaction plus the header lines the gateway prepends.

    ``wire`` is dot-stuffed and ends with CRLF (the terminating dot excluded).
    A spooled message lives in a private temporary file that is removed on ``close``.
    """

    def __init__(
        self, wire: bytes | None = None, path: str | None = None, size: int | None = None
    ) -> None:
        self._wire = wire
        self.path = path
        self.prefix = b""
        self.size = size if size is not None else len(wire or b"")
        self._content: bytes | None = None
        self._head: bytes | None = None
        self._owner = True  # close() removes the spool file

    @classmethod
    def from_content(cls, content: bytes) -> Message:
        """A message built by the gateway itself (a rewrite, a notice)."""
        content = normalize(content)
        if not content.endswith(b"\r\n"):
            content += b"\r\n"
        msg = cls(stuff(content))
        msg._content = content
        return msg

    def derived(self, header_lines: bytes) -> Message:
        """The same message with more header lines in front, sharing its storage
        (a DKIM signature for one group must not change what the others send)."""
        other = Message(self._wire, self.path, self.size)
        other.prefix = header_lines + self.prefix
        other._owner = False
        return other

    def prepend(self, header_lines: bytes) -> None:
        self.prefix = header_lines + self.prefix
        self._content = None

    @property
    def total_size(self) -> int:
        return self.size + len(self.prefix)

    def wire_chunks(self) -> Iterator[bytes | memoryview]:
        """The dot-stuffed bytes to send after DATA, prefix first, in bounded chunks.

        A message that fits in one chunk is one write (one system call, one packet).
        """
        if self._wire is not None and len(self._wire) + len(self.prefix) <= CHUNK:
            yield self.prefix + self._wire
            return
        if self.prefix:
            yield self.prefix
        if self._wire is not None:
            view = memoryview(self._wire)
            for i in range(0, len(view), CHUNK):
                yield view[i : i + CHUNK]
        elif self.path is not None:
            with open(self.path, "rb") as fh:
                while block := fh.read(CHUNK):
                    yield block

    def head(self, limit: int = 256 * 1024) -> bytes:
        """The header block (with the gateway's prefix), read once and kept: what a
        delivery report quotes, without loading a large message's body."""
        if self._head is None:
            if self._content is not None:
                start = self._content[:limit]
            elif self._wire is not None:
                start = self.prefix + self._wire[:limit]
            elif self.path is not None:
                with open(self.path, "rb") as fh:
                    start = self.prefix + fh.read(limit)
            else:
                start = self.prefix
            end = start.find(b"\r\n\r\n")
            self._head = start[: end + 4] if end >= 0 else start
        return self._head

    def content(self) -> bytes:
        """The message as the recipient will see it (unstuffed, with the prefix)."""
        if self._content is None:
            if self._wire is not None:
                body = unstuff(self._wire)
            elif self.path is not None:
                with open(self.path, "rb") as fh:
                    if self.size == 0:
                        body = b""
                    else:
                        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                            body = unstuff(mm[:])
            else:
                body = b""
            self._content = self.prefix + body
        return self._content

    def close(self) -> None:
        if self.path is not None and self._owner:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None


_BARE_LF = re.compile(rb"(?<!\r)\n")


class SpoolWriter:
    """Collects DATA in memory and moves to a temporary file past a threshold.

    Bare LF line ends (Unix tools write them; SMTP forbids them) become CRLF on the
    way in, as Postfix does when it relays: the next hop may refuse bare LF, and the
    inspector, the rewriter and the next hop then all see the same lines. A writer whose
    caller has repaired the line ends already (the milter front-end stuffs as it
    receives) says ``repair=False``: a second pass costs as much as the protocol itself.
    """

    def __init__(self, threshold: int, directory: str | None, *, repair: bool = True) -> None:
        self.repair = repair
        self.threshold = threshold
        self.directory = directory or None
        self._buf = bytearray()
        self._fh: tempfile._TemporaryFileWrapper[bytes] | None = None
        self.size = 0
        self._after_cr = False  # the previous chunk ended with CR: a leading LF ends a CRLF

    def _crlf(self, data: bytes | bytearray) -> bytes | bytearray:
        after_cr, self._after_cr = self._after_cr, data[-1:] == b"\r"
        if data.count(b"\n") == data.count(b"\r\n"):
            return data
        head = b""
        if after_cr and data[:1] == b"\n":
            head, data = b"\n", data[1:]
        return head + _BARE_LF.sub(b"\r\n", data)

    def write(self, data: bytes | bytearray) -> None:
        if self.repair:
            data = self._crlf(data)
        self.size += len(data)
        if self._fh is not None:
            self._fh.write(data)
            return
        self._buf += data
        if len(self._buf) > self.threshold:
            if self.directory:
                Path(self.directory).mkdir(parents=True, exist_ok=True, mode=0o700)
            self._fh = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives past this call
                prefix=SPOOL_PREFIX, dir=self.directory, delete=False
            )
            self._fh.write(self._buf)
            self._buf = bytearray()

    def finish(self, strip_tail: int = 0) -> Message:
        """The message, dropping the last ``strip_tail`` bytes (the terminating dot line)."""
        if self._fh is None:
            del self._buf[len(self._buf) - strip_tail :]
            return Message(bytes(self._buf))
        self._fh.flush()
        size = self.size - strip_tail
        self._fh.truncate(size)
        self._fh.close()
        return Message(path=self._fh.name, size=size)

    def discard(self) -> None:
        """Forget the data; never raises, so it is safe on every error path."""
        self._buf = bytearray()
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()  # flushing a full disk fails; the file goes anyway
            with contextlib.suppress(OSError):
                os.unlink(self._fh.name)
            self._fh = None


def process_started(pid: int | None = None) -> float:
    """When process ``pid`` (default: this one) started, in ``time.time()`` seconds.

    Read from ``/proc`` (Linux). Elsewhere, or if that fails, an answer that errs
    towards sparing files: for this process the time this module was imported (no
    earlier than the true start), for another one 0.0 (nothing is known to be older).
    """
    try:
        with open(f"/proc/{pid or 'self'}/stat", "rb") as fh:
            # Field 22, counted after the command name, which may itself hold spaces.
            ticks = int(fh.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/stat", "rb") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith(b"btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED if pid is None else 0.0
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def sweep_spool(directory: str, before: float | None = None) -> int:
    """Remove spool files left by a process that died mid-message; how many went.

    A spool file lives only as long as its message is being received or processed,
    and its process removes it; one that was killed (OOM, SIGKILL, power loss) leaves
    it behind for good, holding mail content on disk. At start, every file named like
    the gateway's own (``msg-`` + tempfile suffix) in ``directory`` and last written
    before ``before`` (default: this process's start) is such a leftover: a file still
    in use was written since. A workers' supervisor passes its own start time, so a
    replacement worker spares the files of its siblings. Other files and
    subdirectories are never touched, and a file that cannot be removed is skipped.
    An empty ``directory`` (spool files in the system's temporary directory, shared
    with other programs) is not swept.
    """
    if not directory:
        return 0
    cutoff = process_started() if before is None else before
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        if not _SPOOL_NAME.match(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed += 1
    return removed
