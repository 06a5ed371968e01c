"""7z and RAR archives: their members, taken out within the limits zip members get.

7z is read with py7zr (pure Python, LZMA/LZMA2/BZip2/Deflate/zstd through the standard
library and small wheels, and actively maintained). It decompresses into writers that
``extract`` asks a factory for, so the writers here count every byte and stop the
extraction at the budget; declared sizes are checked first (cheap, and a member that
declares more than the budget is not decompressed at all) but never trusted alone:
py7zr's own ``max_extract_size`` and the writers count the bytes actually produced.

RAR has no maintained pure-Python decoder; ``unrar-free`` (libarchive's RAR 4 and
RAR 5 readers behind a small command) is free software and packaged by Debian. It runs
as a separate process on a private copy of the archive, in a private directory (it
refuses ``..`` and absolute member names), with a timeout, a per-file size limit
(``RLIMIT_FSIZE``) and a watch on the directory's total size and file count that stops
it at the budget; links it creates are never followed. Without the command, a RAR
archive is unscannable with the reason "RAR: no free decoder".
"""

from __future__ import annotations

import io
import os
import resource
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from milter.inspect.documents import opaque_archive_encrypted

RAR_DECODER: str | None = shutil.which("unrar-free") or shutil.which("unrar")
NO_RAR_DECODER = "RAR: no free decoder"
_LOCKED = "encrypted archive entry"
_POLL = 0.02  # seconds between looks at what the RAR decoder has written
_RAR_MEMORY = 1 << 30  # address space of the decoder process


@dataclass
class Member:
    """One archive member: its content, or why it was left unread."""

    name: str
    size: int
    content: bytes | None = None
    reason: str | None = None
    encrypted: bool = False


@dataclass
class Listing:
    """What an archive held, as far as it was opened.

    ``reason`` makes the archive itself unscannable (a member limit, an unreadable
    structure, no decoder); members left unread carry their own reason too.
    """

    members: list[Member] = field(default_factory=list)
    encrypted: bool = False
    reason: str | None = None


class _Stop(Exception):
    """A writer refused more bytes: the budget or the ratio was reached."""


# --- 7z -------------------------------------------------------------------------------


def read_7z(
    data: bytes,
    *,
    budget: int,
    ratio: float,
    max_entries: int,
    check: Callable[[], None],
) -> Listing:
    """The members of a 7z archive, read into memory within ``budget`` bytes in all."""
    import py7zr
    import py7zr.exceptions
    import py7zr.io

    if opaque_archive_encrypted(data):
        return Listing(encrypted=True, reason="encrypted 7z archive")
    errors = (
        py7zr.exceptions.ArchiveError,
        py7zr.exceptions.PasswordRequired,
        py7zr.exceptions.AbsolutePathError,
        EOFError,
        OSError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        LookupError,
        MemoryError,
        # py7zr's answer to a compression method or filter it does not implement
        # (PPMd variants, ARM64 BCJ...): the archive cannot be read, a finding.
        NotImplementedError,
    )
    listing = Listing()
    try:
        archive = py7zr.SevenZipFile(io.BytesIO(data), mode="r", max_extract_size=budget)
    except py7zr.exceptions.PasswordRequired:
        return Listing(encrypted=True, reason="encrypted 7z archive")
    except errors as exc:
        return Listing(reason=f"unreadable 7z: {type(exc).__name__}")
    with archive:
        if archive.needs_password():
            listing.encrypted = True
            listing.reason = "encrypted 7z archive"
            for info in archive.list()[:max_entries]:
                if not info.is_directory:
                    listing.members.append(
                        Member(info.filename, info.uncompressed, None, _LOCKED, encrypted=True)
                    )
            return listing
        infos = [i for i in archive.list() if not i.is_directory]
        if len(infos) > max_entries:
            listing.reason = "archive entry limit reached"
            infos = infos[:max_entries]
        # The whole archive's ratio stands in for a member's when the member has no
        # compressed size of its own (solid archives share one stream).
        declared = sum(i.uncompressed for i in infos)
        whole = declared / max(len(data), 1)
        wanted: list[str] = []
        left = budget
        for info in infos:
            own = info.uncompressed / max(info.compressed, 1) if info.compressed else whole
            why = None
            if own > ratio or whole > ratio:
                why = "expansion ratio limit reached"
            elif info.uncompressed > left:
                why = "expanded bytes limit reached"
            if why:
                listing.members.append(Member(info.filename, info.uncompressed, None, why))
                listing.reason = listing.reason or why
                continue
            left -= info.uncompressed
            wanted.append(info.filename)
        if not wanted:
            return listing
        factory = _Factory(budget, check)
        failed = None
        try:
            check()
            # A structural match for py7zr.io.WriterFactory; py7zr is imported only
            # when a 7z archive arrives (it takes 0.2 s to import).
            archive.extract(targets=wanted, factory=cast("py7zr.io.WriterFactory", factory))
        except _Stop as exc:
            failed = str(exc)
        except py7zr.exceptions.DecompressionBombError:
            failed = "expanded bytes limit reached"
        except errors as exc:
            failed = f"unreadable 7z: {type(exc).__name__}"
        # Members in the order they were written (a name used twice is written twice,
        # the second time as ``name_0``: both are read); after a failure the member
        # being written and those not reached are unread.
        done = factory.order[:-1] if failed else factory.order
        for name, writer in done:
            listing.members.append(Member(name, writer.size, writer.getvalue()))
        if failed:
            listing.reason = listing.reason or failed
            sizes = [i.uncompressed for i in infos if i.filename in set(wanted)]
            for index in range(len(done), len(wanted)):
                size = sizes[index] if index < len(sizes) else 0
                listing.members.append(Member(wanted[index], size, None, failed))
    return listing


class _Writer:
    """A py7zr output that keeps at most what the factory's shared budget allows."""

    def __init__(self, factory: _Factory) -> None:
        self._factory = factory
        self._buf = io.BytesIO()
        self.size = 0

    def write(self, s: bytes | bytearray) -> int:
        self._factory.take(len(s))
        self.size += len(s)
        return self._buf.write(s)

    def read(self, size: int | None = None) -> bytes:
        return self._buf.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._buf.seek(offset, whence)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    def getvalue(self) -> bytes:
        return self._buf.getvalue()


class _Factory:
    """Hands py7zr one counting writer per member, all charged to one budget."""

    def __init__(self, budget: int, check: Callable[[], None]) -> None:
        self.budget = budget
        self.check = check
        self.order: list[tuple[str, _Writer]] = []

    def take(self, size: int) -> None:
        self.budget -= size
        if self.budget < 0:
            raise _Stop("expanded bytes limit reached")
        self.check()

    def create(self, filename: str) -> _Writer:
        writer = _Writer(self)
        # py7zr names the output after a sanitised path under the working directory;
        # the member name is its tail.
        self.order.append((_member_name(filename), writer))
        return writer


def _member_name(path: str) -> str:
    cwd = os.getcwd().replace("\\", "/").rstrip("/") + "/"
    path = path.replace("\\", "/")
    return path[len(cwd) :] if path.startswith(cwd) else path.lstrip("/")


# --- RAR ------------------------------------------------------------------------------


def read_rar(
    data: bytes,
    *,
    budget: int,
    ratio: float,
    max_entries: int,
    deadline: float,
) -> Listing:
    """The members of a RAR archive, extracted by ``RAR_DECODER`` in a bounded process."""
    if opaque_archive_encrypted(data):
        return Listing(encrypted=True, reason="encrypted rar archive")
    decoder = RAR_DECODER
    if decoder is None or not os.access(decoder, os.X_OK):
        return Listing(reason=NO_RAR_DECODER)
    limit = min(budget, int(len(data) * ratio) + 1)
    with tempfile.TemporaryDirectory(prefix="milter-rar-") as tmp:
        src = os.path.join(tmp, "archive.rar")
        out = os.path.join(tmp, "out")
        os.mkdir(out, 0o700)
        with open(src, "wb") as fh:
            fh.write(data)
        reason = _run_rar(decoder, src, out, limit=limit, entries=max_entries, deadline=deadline)
        listing = Listing(reason=reason)
        files, _total = _tree(out, max_entries + 1)
        if len(files) > max_entries:
            listing.reason = listing.reason or "archive entry limit reached"
            files = files[:max_entries]
        left = limit
        for name, size in files:
            if size > left:
                listing.members.append(Member(name, size, None, "expanded bytes limit reached"))
                listing.reason = listing.reason or "expanded bytes limit reached"
                continue
            content = _read_private(os.path.join(out, name), left + 1)
            if content is None:
                continue
            left -= len(content)
            listing.members.append(Member(name, len(content), content))
    return listing


def _read_private(path: str, limit: int) -> bytes | None:
    """A file the decoder wrote, never one it linked to: no symbolic link is followed and
    a hard link (a link count above one) is skipped, so an archive cannot make the
    inspector read a file of the host."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if os.fstat(fd).st_nlink != 1:
            return None
        return fh.read(limit)


def _run_rar(
    decoder: str, src: str, out: str, *, limit: int, entries: int, deadline: float
) -> str | None:
    """Run the decoder; None when it finished cleanly, else why its output is partial.

    unrar-free keeps member paths under ``out`` and refuses ``..`` and absolute names
    (a leading ``/`` is stripped), so members with the same base name in different
    folders stay apart.
    """
    if time.monotonic() >= deadline:
        return "time budget exceeded"
    proc = subprocess.Popen(
        [decoder, "-x", src, out + "/"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=out,
        close_fds=True,
    )
    # Limits set from outside (``preexec_fn`` is unsafe in a threaded worker): the
    # watch below is what bounds the output; these bound a decoder gone wrong.
    try:
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit + 1, limit + 1))
        resource.prlimit(proc.pid, resource.RLIMIT_AS, (_RAR_MEMORY, _RAR_MEMORY))
        resource.prlimit(proc.pid, resource.RLIMIT_CORE, (0, 0))
        # A decoder orphaned by a worker killed at its hard budget still stops.
        cpu = int(max(0.0, deadline - time.monotonic())) + 2
        resource.prlimit(proc.pid, resource.RLIMIT_CPU, (cpu, cpu))
    except (OSError, ValueError):
        pass  # already gone
    reason: str | None = None
    code = 0
    try:
        while True:
            try:
                code = proc.wait(timeout=_POLL)
                break
            except subprocess.TimeoutExpired:
                pass
            files, total = _tree(out, entries + 1)
            if total > limit:
                reason = "expanded bytes limit reached"
            elif len(files) > entries:
                reason = "archive entry limit reached"
            elif time.monotonic() >= deadline:
                reason = "time budget exceeded"
            if reason:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if reason is None and _tree(out, entries + 1)[1] > limit:
        reason = "expanded bytes limit reached"
    if reason is None and code != 0:
        reason = "unreadable rar archive"
    return reason


def _tree(root: str, most: int) -> tuple[list[tuple[str, int]], int]:
    """Regular files under ``root`` (relative names, sizes; at most ``most``, in name
    order per folder) and their total size. Links are not followed."""
    files: list[tuple[str, int]] = []
    total = 0
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            files.append((os.path.relpath(path, root).replace(os.sep, "/"), st.st_size))
            total += st.st_size
            if len(files) >= most:
                return files, total
    return files, total
