"""The gateway's own retry queue: exactly once when a message has several ways out.

A before-queue gateway answers DATA once for the whole message. When its recipients go
different ways (the upstream and the sanapati route, or a hold and a delivery) and one
way defers after another accepted, a 451 would make the client send the message again
and everyone already served would get a second copy. So once any way accepted, the
pipeline answers 250 and hands what is left to this queue: the deferred recipients, the
route, the DSN parameters and the exact bytes that way must receive (rewritten and
signed as they were for the first attempt). The entry is durable before the 250 goes
out (``QuarantineStore.retry_add``: fsync'd spool file then committed row with SQLite,
one committed row with PostgreSQL, where every node can send it); when it cannot be
written the pipeline falls back to 451.

Each ``milter serve`` worker runs a sender (``RetryQueue``) that claims due entries the
way the notice outbox claims notices (``ClaimingSender``; a claim not settled within the
lease belongs to a dead worker and the entry is due again), attempts each through the
same ``Deliverer`` and route, and settles it: delivered (only a 2xx by the protocol
counts), deferred again with the next delay of ``queue.retry``, or failed for good on a
5xx or once ``queue.max_age`` has passed. A final failure earns the sender an RFC 3464
DSN, and an entry still waiting after ``queue.delay_notice_after`` one delay notice, both
only when the sender is internal (never backscatter to an outside or null sender).

Store calls run on a small executor of their own, within ``quarantine.timeout``
(``StoreCalls``): a database that does not answer costs the client a prompt 451 and
never takes the threads other messages' rewriting and signing need.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, TypeVar

from milter import log, metrics
from milter.actions.notices import FailedRecipient, Templates, dsn
from milter.app.notify import BATCH, LEASE, ClaimingSender
from milter.config import GatewayConfig
from milter.delivery import Deliverer, DeliveryResult, split_status
from milter.envelope import Dsn, new_id
from milter.message import Message
from milter.quarantine.store import (
    RETRY_FAILED,
    RETRY_QUEUED,
    RETRY_SENT,
    QuarantineStore,
    RetryEntry,
    StoreUnavailable,
)

T = TypeVar("T")

STORE_THREADS = 4


class StoreTimeout(StoreUnavailable):
    """The quarantine database did not answer within ``quarantine.timeout``."""


class StoreCalls:
    """Runs blocking store calls on a few threads of their own, each within a budget.

    A call that overruns is answered ``StoreTimeout`` at once; its thread finishes on
    its own, and ``late`` (when given) is called with the result should it succeed after
    all, so that a hold or queue entry nobody was told about can be taken back.
    """

    def __init__(self, budget: float, threads: int = STORE_THREADS) -> None:
        self.budget = budget
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store")

    async def __call__(
        self,
        fn: Callable[..., T],
        *args: Any,
        late: Callable[[T], None] | None = None,
        budget: float | None = None,
        **kwargs: Any,
    ) -> T:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), budget or self.budget)
        except TimeoutError:
            if late is not None:
                fut.add_done_callback(lambda f: _late(f, late))
            else:
                fut.add_done_callback(_retrieve)
            raise StoreTimeout(
                f"quarantine database did not answer within {budget or self.budget:g}s"
            ) from None

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the store threads without waiting (cleanup after a timeout)."""
        with contextlib.suppress(RuntimeError):  # shut down
            self._pool.submit(_logged, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _retrieve(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()


def _late(f: asyncio.Future[Any], late: Callable[[Any], None]) -> None:
    if f.cancelled() or f.exception() is not None:
        return
    try:
        late(f.result())
    except Exception as exc:
        log.failure("store-late-cleanup-failed", exc)


def _logged(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:
        log.failure("store-cleanup-failed", exc)


NoticeSubmit = Callable[[str, str, list[str], bytes], Awaitable[None]]


def backoff(schedule: Sequence[float], attempts: int) -> float:
    """The wait after the ``attempts``-th failed attempt: the schedule, then its last."""
    return schedule[min(max(attempts, 1), len(schedule)) - 1]


class RetryQueue(ClaimingSender):
    """The sender of one worker; ``store`` opens (once) the quarantine holding the queue."""

    name = "retry-queue"

    def __init__(
        self,
        config: GatewayConfig,
        store: Callable[[], QuarantineStore],
        deliverer: Deliverer,
        calls: StoreCalls,
        *,
        notify: NoticeSubmit | None = None,
        is_internal: Callable[[str], bool] | None = None,
        templates: Templates | None = None,
        clock: Callable[[], float] = time.time,
        lease: float = LEASE,
        autostart: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        self.schedule = tuple(config.queue.retry) or (300.0,)
        self.max_age = config.queue.max_age
        self.delay_notice_after = config.queue.delay_notice_after
        self._store = store
        self.deliverer = deliverer
        self.calls = calls
        self.notify = notify
        self.is_internal = is_internal
        self.templates = templates
        self.clock = clock
        self.lease = lease
        self.autostart = autostart
        self.poll = min(30.0, max(0.05, min(self.schedule)))

    # -- queueing (the pipeline) ----------------------------------------------------

    def entry(
        self,
        *,
        queue_id: str,
        sender: str,
        recipients: Sequence[str],
        route: str,
        size: int,
        smtputf8: bool,
        dsn_params: Dsn | None,
        info: dict[str, Any],
        error: str,
    ) -> RetryEntry:
        """A new entry, due after the first delay."""
        now = self.clock()
        params: dict[str, Any] = {}
        if dsn_params is not None:
            d = asdict(dsn_params)
            params = {
                "ret": d["ret"],
                "envid": d["envid"],
                "notify": {r: v for r, v in d["notify"].items() if r in recipients},
                "orcpt": {r: v for r, v in d["orcpt"].items() if r in recipients},
            }
        return RetryEntry(
            id=new_id(),
            queue_id=queue_id,
            sender=sender,
            recipients=tuple(recipients),
            route=route,
            created_at=now,
            next_attempt=now + self.schedule[0],
            size=size,
            smtputf8=smtputf8,
            dsn=params,
            info=info,
            last_error=error,
        )

    async def add(self, entry: RetryEntry, data: bytes) -> None:
        """Store ``entry`` durably (within the budget) and count it; raises when it
        cannot, and then leaves nothing behind that could still be sent."""
        store = await self.calls(self._store)

        def withdraw(_: None) -> None:
            store.retry_delete(
                entry.id, "gateway", "stored after the client was answered 451", action="withdraw"
            )

        await self.calls(store.retry_add, entry, data, late=withdraw)
        for _ in entry.recipients:
            metrics.RETRY_QUEUED.labels(entry.route).inc()
        log.event(
            "queued-for-retry",
            id=entry.queue_id,
            entry=entry.id,
            route=entry.route,
            to=list(entry.recipients),
            retry_at=entry.next_attempt,
            reply=entry.last_error,
        )
        if self.autostart:
            self.wake()

    async def withdraw(self, entry_ids: Sequence[str], why: str) -> None:
        """Take back entries whose 250 never reached the client (it sends again)."""
        store = await self.calls(self._store)
        for entry_id in entry_ids:
            try:
                await self.calls(store.retry_delete, entry_id, "gateway", why, action="withdraw")
            except Exception as exc:
                log.failure("queue-withdraw-failed", exc, entry=entry_id)

    # -- sending --------------------------------------------------------------------

    async def run_once(self) -> int:
        store = await self.calls(self._store)
        claimed = await self.calls(store.retry_claim, self.clock(), limit=BATCH, lease=self.lease)
        self._claims.update(e.claim for e in claimed)
        try:
            for entry in claimed:
                try:
                    await self._attempt(store, entry)
                except Exception as exc:  # its claim lapses after the lease: sent again
                    log.failure("retry-attempt-failed", exc, logging.WARNING, entry=entry.id)
        finally:
            self._claims.difference_update(e.claim for e in claimed)
        return len(claimed)

    async def _unclaim(self, claims: set[str]) -> None:
        store = await self.calls(self._store)
        await self.calls(store.retry_unclaim, claims, self.clock())

    async def _attempt(self, store: QuarantineStore, entry: RetryEntry) -> None:
        rcpts = list(entry.recipients)
        data = b""
        try:
            data = await self.calls(store.retry_read, entry.id)
            result = await self.deliverer.send(
                entry.route,
                entry.sender,
                rcpts,
                Message.from_content(data),
                smtputf8=entry.smtputf8,
                dsn=Dsn(
                    entry.dsn.get("ret", ""),
                    entry.dsn.get("envid", ""),
                    dict(entry.dsn.get("notify", {})),
                    dict(entry.dsn.get("orcpt", {})),
                ),
            )
        except Exception as exc:  # a local failure (route gone, bytes unreadable)
            text = f"{type(exc).__name__}: {exc}"
            result = DeliveryResult(False, refused={a: (451, text) for a in rcpts}, code=451)
            result.message = text
        now = self.clock()
        accepted, permanent, temporary = _sort(rcpts, result)
        reply = f"{result.code} {result.message}".strip()
        if accepted:
            metrics.RETRIES.labels(entry.route, "delivered").inc()
            log.event(
                "retry-delivered",
                id=entry.queue_id,
                entry=entry.id,
                route=entry.route,
                to=accepted,
                attempts=entry.attempts,
                reply=reply,
            )
        failed = dict(permanent)
        too_old = now - entry.created_at >= self.max_age
        if temporary and too_old:
            failed.update(temporary)
            temporary = {}
        if failed:
            metrics.RETRIES.labels(entry.route, "failed").inc()
            reason = "expired" if too_old else "refused"
            metrics.RETRY_FINAL_FAILURES.labels(entry.route, reason).inc()
            log.event(
                "retry-failed",
                logging.ERROR,
                id=entry.queue_id,
                entry=entry.id,
                route=entry.route,
                to=sorted(failed),
                attempts=entry.attempts,
                reason="max_age" if too_old else "refused",
                reply=reply,
            )
            await self._report(entry, data, failed, accepted, delayed_until=None)
        if not temporary:
            status = RETRY_FAILED if failed and not accepted else RETRY_SENT
            await self.calls(
                store.retry_settle, entry.id, entry.claim, status=status, now=now, error=reply
            )
            return
        metrics.RETRIES.labels(entry.route, "deferred").inc()
        notified: bool | None = None
        if not entry.delay_notified and now - entry.created_at >= self.delay_notice_after:
            until = entry.created_at + self.max_age
            await self._report(entry, data, temporary, accepted, delayed_until=until)
            notified = True
        # The first delay was waited before the first retry: the next one follows it.
        wait = backoff(self.schedule, entry.attempts + 1)
        when = min(now + wait, max(now, entry.created_at + self.max_age))
        await self.calls(
            store.retry_settle,
            entry.id,
            entry.claim,
            status=RETRY_QUEUED,
            now=now,
            error=reply,
            next_attempt=when,
            recipients=[a for a in rcpts if a in temporary],
            delay_notified=notified,
        )
        log.event(
            "retry-deferred",
            logging.WARNING,
            id=entry.queue_id,
            entry=entry.id,
            route=entry.route,
            to=sorted(temporary),
            attempts=entry.attempts,
            retry_in=round(when - now, 1),
            reply=reply,
        )

    async def _report(
        self,
        entry: RetryEntry,
        data: bytes,
        failed: dict[str, tuple[int, str]],
        accepted: list[str],
        *,
        delayed_until: float | None,
    ) -> None:
        """A DSN (final failure) or delay notice to the sender, when internal."""
        if self.notify is None or self.is_internal is None:
            return
        sender = entry.sender
        if not sender or not self.is_internal(sender):
            log.event(
                "retry-notice-skipped",
                id=entry.queue_id,
                entry=entry.id,
                reason="null sender" if not sender else "external sender",
            )
            return
        entries = []
        for address, (code, text) in sorted(failed.items()):
            status, _ = split_status(text)
            if not status and delayed_until is not None:
                status = "4.4.7"
            elif not status:
                status = "5.4.7" if code < 500 else "5.0.0"
            elif delayed_until is None and status.startswith("4"):
                status = "5" + status[1:]  # given up: a permanent failure now
            entries.append(FailedRecipient(address, status, f"{code} {text}".strip()))
        original = data or f"Subject: {entry.info.get('subject', '')}\r\n".encode()
        try:
            report = dsn(
                self.config.notices,
                original=original,
                sender=sender,
                failed=entries,
                reporting_mta=self.config.hostname,
                queue_id=entry.queue_id,
                arrival=entry.created_at,
                delivered=accepted,
                templates=self.templates,
                delayed_until=delayed_until,
            )
            await self.notify("dsn", sender, [sender], report)
        except Exception as exc:
            log.failure("retry-notice-failed", exc, logging.WARNING, entry=entry.id)


def _sort(
    rcpts: list[str], result: DeliveryResult
) -> tuple[list[str], dict[str, tuple[int, str]], dict[str, tuple[int, str]]]:
    """(accepted, refused for good, deferred) recipients of one attempt."""
    accepted: list[str] = []
    permanent: dict[str, tuple[int, str]] = {}
    temporary: dict[str, tuple[int, str]] = {}
    for a in rcpts:
        if a in result.refused:
            code, text = result.refused[a]
            if not result.ok and result.status and not split_status(text)[0]:
                text = f"{result.status} {text}"  # the whole transaction's status
            (permanent if code >= 500 else temporary)[a] = (code, text)
        elif result.ok and 200 <= result.code < 300:
            accepted.append(a)
        else:
            code = result.code if result.code >= 400 else 451
            text = f"{result.status} {result.message}" if result.status else result.message
            (permanent if code >= 500 else temporary)[a] = (code, text)
    return accepted, permanent, temporary


__all__ = [
    "RETRY_QUEUED",
    "RetryQueue",
    "StoreCalls",
    "StoreTimeout",
    "backoff",
]
