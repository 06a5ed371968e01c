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
sockets or database handles. Each child serves one request at a time over a pipe:
the request and its bytes go in, the result (or the error) comes back.

OCR of scanned letters has a lane of its own (``inspect.ocr.processes``). A page costs
seconds of CPU; read in the inspection processes, one scan held one of the two
processes every other message needs, and ten percent of scans in the load multiplied
the others' latency by nine. So the inspection child reads everything but the image
pages and returns, with its findings, the OCR jobs it left (``milter.inspect.ocr.Job``:
the image or PDF bytes, the pages within ``max_pages``, where they sit). Only a message
with jobs goes on to the OCR lane, whose processes are killed at the OCR hard budget
(``inspect.ocr.time_budget`` and a quarter: a page being decoded is not interrupted at
the second). Its outcomes are then applied by a second, quick walk in an inspection
child, at the very points where the first walk left the jobs, so labels, text,
detectors and reasons are those of a walk that read the pages in place; what OCR could
not read, even when its process had to be killed, is a reason on the file, never
silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import time
from collections.abc import Callable
from functools import partial
from multiprocessing.context import ForkServerContext
from typing import Any

from milter import log
from milter.inspect import ocr
from milter.inspect.findings import Findings

Inspector = Callable[[bytes], Findings]
# What a child runs for one request: (request, bytes) -> (result, bytes to send after it).
Handler = Callable[[Any, bytes], tuple[Any, bytes | None]]

# Past this size the bytes are written to the child from a thread: the pipe holds
# 64 KB, and a large message must not hold the event loop while the child reads.
_SEND_INLINE = 1 << 20
# The hard budget of the OCR lane, as a multiple of the OCR time budget.
OCR_MARGIN = 1.25
# Requests to an inspection child: OCR in place (None), jobs left for the OCR lane
# (_COLLECT), or the second walk: ("replay", outcomes) or ("failed", reason).
_COLLECT = "collect"


class InspectionFailed(Exception):
    """The child died or raised: the message could not be inspected (``on_error``)."""


class _Killed(Exception):
    """The child passed its hard budget and was killed."""


def _serve(conn: multiprocessing.connection.Connection, handler: Handler) -> None:
    """The child: one request at a time until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway stops its children itself
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while True:
        try:
            request = pickle.loads(conn.recv_bytes())
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        extra: bytes | None = None
        try:
            value, extra = handler(request, data)
            reply: tuple[bool, Any, bool] = (True, value, extra is not None)
        except Exception as exc:  # reported to the parent, which applies on_error
            reply = (False, f"{type(exc).__name__}: {exc}", False)
        try:
            conn.send(reply)
            if extra is not None:
                conn.send_bytes(extra)
        except (OSError, ValueError):
            return


def _defers(inspector: Inspector) -> bool:
    """Whether the inspector can leave OCR to the lane (``inspect_message`` can)."""
    try:
        return "ocr_lane" in inspect.signature(inspector).parameters
    except (TypeError, ValueError):
        return False


def _inspect(inspector: Inspector, request: Any, data: bytes) -> tuple[Findings, bytes | None]:
    """An inspection child's request: the findings, and the pickled OCR jobs left to the
    lane (``(OcrConfig, [Job])``) when the first walk made any."""
    if request is None or not _defers(inspector):
        return inspector(data), None
    run: Callable[..., Findings] = inspector
    if request == _COLLECT:
        lane = ocr.Deferred()
        found = run(data, ocr_lane=lane)
        if not lane.jobs:
            return found, None
        return found, pickle.dumps((lane.config, lane.jobs), pickle.HIGHEST_PROTOCOL)
    kind, value = request
    lane = ocr.Deferred(value) if kind == "replay" else ocr.Deferred(failed=str(value))
    return run(data, ocr_lane=lane), None


def _read(request: Any, data: bytes) -> tuple[list[ocr.Outcome], None]:
    """An OCR child's request: the outcomes of one message's jobs, in order."""
    config, jobs = pickle.loads(data)
    return ocr.run_jobs(config, jobs), None


class _Child:
    def __init__(self, ctx: ForkServerContext, handler: Handler, generation: int) -> None:
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, handler), daemon=True)
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


class _Lane:
    """Up to ``size`` child processes running one handler, each request with a hard
    budget: the process is killed at it and replaced on demand."""

    def __init__(self, name: str, handler: Handler, size: int, ctx: ForkServerContext) -> None:
        self.name = name
        self.size = max(1, size)
        self._handler = handler
        self._generation = 0
        self._ctx = ctx
        self._idle: list[_Child] = []
        self._count = 0
        self._available = asyncio.Condition()
        self._closed = False

    def use(self, handler: Handler) -> None:
        """A new handler (a reloaded policy's inspector): old children retire when idle."""
        self._handler = handler
        self._generation += 1
        stale = [c for c in self._idle if c.generation != self._generation]
        self._idle = [c for c in self._idle if c.generation == self._generation]
        for child in stale:
            self._count -= 1
            child.kill()

    async def start(self) -> None:
        children = await asyncio.to_thread(self._spawn_many, self.size - self._count)
        self._count += len(children)
        self._idle.extend(children)

    def _spawn_many(self, n: int) -> list[_Child]:
        return [_Child(self._ctx, self._handler, self._generation) for _ in range(n)]

    async def _take(self) -> _Child:
        async with self._available:
            while not self._idle and self._count >= self.size:
                await self._available.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return await asyncio.to_thread(_Child, self._ctx, self._handler, self._generation)
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

    async def call(self, request: Any, data: bytes, budget: float) -> tuple[Any, bytes | None]:
        """The handler's result for ``request`` and ``data``. Raises ``_Killed`` when the
        child was killed at ``budget``, ``InspectionFailed`` when it died or raised."""
        child = await self._take()
        keep: _Child | None = None
        try:
            started = time.monotonic()
            # uvloop's add_reader leaves the pipe non-blocking: a write or read larger
            # than the pipe's buffer would then fail with EAGAIN half-way.
            os.set_blocking(child.conn.fileno(), True)
            head = pickle.dumps(request, pickle.HIGHEST_PROTOCOL)
            try:
                if len(data) + len(head) > _SEND_INLINE:
                    await asyncio.to_thread(_send, child.conn, head, data)
                else:
                    _send(child.conn, head, data)
                async with asyncio.timeout(budget):
                    ok, value, more = await _receive(child.conn)
                    extra = await asyncio.to_thread(child.conn.recv_bytes) if more else None
            except TimeoutError:
                log.event(
                    f"{self.name}-killed",
                    logging.WARNING,
                    pid=child.process.pid,
                    seconds=round(time.monotonic() - started, 1),
                    size=len(data),
                )
                child.kill()
                raise _Killed from None
            except (EOFError, OSError) as exc:
                child.kill()
                raise InspectionFailed(f"{self.name} process ended: {exc or 'no reply'}") from None
            keep = child
            if not ok:
                raise InspectionFailed(str(value))
            return value, extra
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


def _send(conn: multiprocessing.connection.Connection, head: bytes, data: bytes) -> None:
    conn.send_bytes(head)
    conn.send_bytes(data)


class InspectionPool:
    """Up to ``size`` inspection processes for one gateway worker, and up to
    ``ocr_processes`` OCR processes beside them."""

    def __init__(
        self,
        inspector: Inspector,
        *,
        size: int,
        budget: float,
        ocr_budget: float = 0.0,
        ocr_processes: int = 1,
    ) -> None:
        """``budget`` is the hard budget of inspection without OCR; ``ocr_budget`` the
        OCR time budget of a message (``inspect.ocr.time_budget``, 0 when OCR is off).
        With OCR processes it is their hard budget (and a quarter); without
        (``ocr_processes: 0``) OCR runs in the inspection processes and their hard
        budget grows by as much."""
        ctx = _context()
        self.size = max(1, size)
        share = ocr_budget * OCR_MARGIN if ocr_budget > 0 else 0.0
        self.ocr_budget = share if ocr_processes > 0 else 0.0  # the OCR lane's hard budget
        self.budget = budget + (share - self.ocr_budget)
        self._lane = _Lane("inspection", partial(_inspect, inspector), self.size, ctx)
        self._ocr = _Lane("ocr", _read, ocr_processes, ctx) if self.ocr_budget else None

    def use(self, inspector: Inspector) -> None:
        """A reloaded policy's inspector: children of the old one retire when idle."""
        self._lane.use(partial(_inspect, inspector))

    async def start(self) -> None:
        """Start the children now, so the first messages do not wait for them."""
        await self._lane.start()
        if self._ocr is not None:
            await self._ocr.start()

    async def inspect(self, data: bytes) -> Findings:
        """The findings for ``data``; at the hard budget the child is killed and the
        message is reported unscannable (the policy decides), never silently clean."""
        if self._ocr is None:
            return (await self._inspect(None, data))[0]
        found, jobs = await self._inspect(_COLLECT, data)
        if jobs is None:
            return found
        request: tuple[str, Any]
        try:
            outcomes, _ = await self._ocr.call(None, jobs, self.ocr_budget)
            request = ("replay", outcomes)
        except _Killed:
            request = ("failed", f"OCR stopped at its time budget ({self.ocr_budget:g} s)")
        except InspectionFailed as exc:
            request = ("failed", f"OCR failed: {exc}")
        return (await self._inspect(request, data))[0]

    async def _inspect(self, request: Any, data: bytes) -> tuple[Findings, bytes | None]:
        try:
            value, jobs = await self._lane.call(request, data, self.budget)
        except _Killed:
            reason = f"inspection stopped at its time budget ({self.budget:g} s)"
            return Findings(size=len(data), unscannable=(reason,)), None
        if not isinstance(value, Findings):
            raise InspectionFailed(f"inspection returned {type(value).__name__}")
        return value, jobs

    async def close(self) -> None:
        await self._lane.close()
        if self._ocr is not None:
            await self._ocr.close()


async def _receive(conn: multiprocessing.connection.Connection) -> tuple[bool, Any, bool]:
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
    os.set_blocking(fd, True)  # the reply may be larger than the pipe's buffer
    reply = conn.recv()
    if not isinstance(reply, tuple) or len(reply) != 3:
        raise EOFError("malformed reply")
    return bool(reply[0]), reply[1], bool(reply[2])
