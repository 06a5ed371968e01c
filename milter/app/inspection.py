"""Inspection in worker processes: budgets enforced by the kernel, not hoped for.

A message is inspected in a child process of the gateway worker, not in a thread of
it. A thread that hostile input keeps busy (a back-tracking pattern, a quadratic
parser) cannot be stopped and keeps competing for the interpreter with the event loop;
a process is killed when the message's hard budget runs out and replaced, and every
other message goes on. Measured on the 66 KB report message, a process also costs less
CPU per message than a thread here: the event loop and the inspector no longer pass
the interpreter lock back and forth.

Children are forked from a clean forkserver that has imported the inspector already,
so a replacement starts in milliseconds and inherits none of the gateway's threads,
sockets or database handles. Each child serves one message at a time over a pipe:
the message bytes go in, the findings (or the error) come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import signal
import time
from collections.abc import Callable
from multiprocessing.context import ForkServerContext
from typing import Any

from milter import log
from milter.inspect.findings import Findings

Inspector = Callable[[bytes], Findings]

# Past this size the bytes are written to the child from a thread: the pipe holds
# 64 KB, and a large message must not hold the event loop while the child reads.
_SEND_INLINE = 1 << 20


class InspectionFailed(Exception):
    """The child died or raised: the message could not be inspected (``on_error``)."""


def _serve(conn: multiprocessing.connection.Connection, inspector: Inspector) -> None:
    """The child: one message at a time until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway stops its children itself
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[bool, Any] = (True, inspector(data))
        except Exception as exc:  # reported to the parent, which applies on_error
            reply = (False, f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return


class _Child:
    def __init__(self, ctx: ForkServerContext, inspector: Inspector, generation: int) -> None:
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, inspector), daemon=True)
        self.process.start()
        child.close()
        self.conn = parent
        self.generation = generation

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
        with contextlib.suppress(Exception):
            self.conn.close()
        with contextlib.suppress(Exception):
            self.process.join(1)
            self.process.close()


def _context() -> ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["milter.inspect", "milter.app.inspection"])
    return ctx


class InspectionPool:
    """Up to ``size`` inspection processes for one gateway worker."""

    def __init__(self, inspector: Inspector, *, size: int, budget: float) -> None:
        self.size = max(1, size)
        self.budget = budget
        self._inspector = inspector
        self._generation = 0
        self._ctx = _context()
        self._idle: list[_Child] = []
        self._count = 0
        self._available = asyncio.Condition()
        self._closed = False

    def use(self, inspector: Inspector) -> None:
        """A reloaded policy's inspector: children of the old one retire when idle."""
        self._inspector = inspector
        self._generation += 1
        stale = [c for c in self._idle if c.generation != self._generation]
        self._idle = [c for c in self._idle if c.generation == self._generation]
        for child in stale:
            self._count -= 1
            child.kill()

    async def start(self) -> None:
        """Start the children now, so the first messages do not wait for them."""
        children = await asyncio.to_thread(self._spawn_many, self.size - self._count)
        self._count += len(children)
        self._idle.extend(children)

    def _spawn_many(self, n: int) -> list[_Child]:
        return [_Child(self._ctx, self._inspector, self._generation) for _ in range(n)]

    async def _take(self) -> _Child:
        async with self._available:
            while not self._idle and self._count >= self.size:
                await self._available.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return await asyncio.to_thread(_Child, self._ctx, self._inspector, self._generation)
        except BaseException:
            self._count -= 1
            raise

    async def _give(self, child: _Child | None) -> None:
        async with self._available:
            if child is None:
                self._count -= 1
            elif child.generation != self._generation or self._closed:
                self._count -= 1
                child.kill()
            else:
                self._idle.append(child)
            self._available.notify()

    async def inspect(self, data: bytes) -> Findings:
        """The findings for ``data``; at the hard budget the child is killed and the
        message is reported unscannable (the policy decides), never silently clean."""
        child = await self._take()
        keep: _Child | None = None
        try:
            started = time.monotonic()
            if len(data) > _SEND_INLINE:
                await asyncio.to_thread(child.conn.send_bytes, data)
            else:
                child.conn.send_bytes(data)
            try:
                async with asyncio.timeout(self.budget):
                    ok, value = await _receive(child.conn)
            except TimeoutError:
                log.event(
                    "inspection-killed",
                    logging.WARNING,
                    pid=child.process.pid,
                    seconds=round(time.monotonic() - started, 1),
                    size=len(data),
                )
                child.kill()
                return Findings(
                    size=len(data),
                    unscannable=(f"inspection stopped at its time budget ({self.budget:g} s)",),
                )
            except (EOFError, OSError) as exc:
                child.kill()
                raise InspectionFailed(f"inspection process ended: {exc or 'no reply'}") from None
            if not ok:
                keep = child
                raise InspectionFailed(str(value))
            keep = child
            assert isinstance(value, Findings)
            return value
        except BaseException:
            if keep is None:
                child.kill()
            raise
        finally:
            await self._give(keep)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for child in idle:
            child.kill()


async def _receive(conn: multiprocessing.connection.Connection) -> tuple[bool, Any]:
    """The child's reply, read when the pipe is readable (the child writes it whole)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = conn.fileno()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    reply = conn.recv()
    if not isinstance(reply, tuple) or len(reply) != 2:
        raise EOFError("malformed reply")
    return bool(reply[0]), reply[1]
