"""``milter queue ...``: the gateway's retry queue, for the operators.

The queue holds recipients the gateway took responsibility for (it answered 250
because another way out of their message had accepted it) while their own next hop
deferred (``milter.app.retryqueue``). ``list`` and ``show`` read it; ``retry`` makes
entries due now (the running workers pick them up at their next look, within
``queue.retry``'s shortest delay and at most 30 s); ``delete`` removes an entry for
good, recorded in the quarantine's hash-chained audit log with the real OS user.

Addresses, subjects and errors come from senders and next hops: every one is shown
through ``printable`` (text) or ``json_dumps`` (``--json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import os
import time
from typing import Any

from milter.commands import CommandError, load_config
from milter.quarantine.store import (
    RETRY_STATUSES,
    NotFound,
    QuarantineError,
    QuarantineStore,
    RetryEntry,
    StateConflict,
    open_store,
)
from milter.text import json_dumps, printable


def _open(args: argparse.Namespace) -> QuarantineStore:
    config = load_config(args)
    try:
        return open_store(config.quarantine)
    except QuarantineError as exc:
        raise CommandError(f"quarantine: {exc}") from None


def _actor() -> str:
    """Who acts: the real user behind sudo, else the process's user (never an argument)."""
    sudo = os.environ.get("SUDO_USER")
    if sudo:
        return sudo
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _entry(store: QuarantineStore, entry_id: str) -> RetryEntry:
    entry = store.retry_get(entry_id)
    if entry is None:
        raise CommandError(f"no queue entry {printable(entry_id)}")
    return entry


def _list(args: argparse.Namespace) -> int:
    with _open(args) as store:
        entries = store.retry_list(args.status)
    if args.json:
        print(json_dumps([e.to_dict() for e in entries], indent=2))
        return 0
    if not entries:
        print("retry queue is empty" if args.status is None else f"no {args.status} entries")
        return 0
    print(f"{'ID':<14} {'CREATED':<21} {'NEXT':<21} {'TRIES':>5} {'ROUTE':<10} RECIPIENTS")
    for e in entries:
        print(
            f"{e.id:<14} {_when(e.created_at):<21} {_when(e.next_attempt):<21} "
            f"{e.attempts:>5} {printable(e.route):<10} "
            f"{printable(', '.join(e.recipients))}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    with _open(args) as store:
        entry = _entry(store, args.id)
    if args.json:
        print(json_dumps(entry.to_dict(), indent=2))
        return 0
    info: dict[str, Any] = dict(entry.info)
    lines = [
        ("id", entry.id),
        ("status", entry.status),
        ("transaction", entry.queue_id),
        ("sender", entry.sender or "<>"),
        ("recipients", ", ".join(entry.recipients)),
        ("route", entry.route),
        ("subject", str(info.get("subject", ""))),
        ("all recipients", ", ".join(str(a) for a in info.get("recipients", [])) or "-"),
        ("bcc", ", ".join(str(a) for a in info.get("bcc", [])) or "-"),
        ("rewrites", "; ".join(str(r) for r in info.get("rewrites", [])) or "-"),
        ("size", str(entry.size)),
        ("created", _when(entry.created_at)),
        ("next attempt", _when(entry.next_attempt)),
        ("attempts", str(entry.attempts)),
        ("delay notice", "sent" if entry.delay_notified else "-"),
        ("last error", entry.last_error or "-"),
    ]
    for name, value in lines:
        print(f"{name + ':':<16}{printable(value)}")
    return 0


def _retry(args: argparse.Namespace) -> int:
    if not args.all and not args.id:
        raise CommandError("name an entry, or --all")
    if args.all and args.id:
        raise CommandError("name an entry or --all, not both")
    with _open(args) as store:
        if args.id:
            entry = _entry(store, args.id)
            if store.retry_now(entry.id, time.time()) == 0:
                raise CommandError(f"queue entry {entry.id} is {entry.status}, not queued")
            print(f"{entry.id}: due now")
            return 0
        n = store.retry_now(None, time.time())
    print(f"{n} entr{'y' if n == 1 else 'ies'} due now")
    return 0


def _delete(args: argparse.Namespace) -> int:
    reason = args.reason.strip()
    if not reason:
        raise CommandError("--reason must say why")
    with _open(args) as store:
        try:
            entry = store.retry_delete(args.id, _actor(), reason, action="queue-delete")
        except NotFound:
            raise CommandError(f"no queue entry {printable(args.id)}") from None
        except StateConflict as exc:
            raise CommandError(
                f"queue entry {exc.qid} is {exc.status}: only a queued entry can be deleted"
            ) from None
    print(f"{entry.id}: deleted ({printable(', '.join(entry.recipients))} will not get it)")
    return 0


def register(sub: Any) -> None:
    q = sub.add_parser("queue", help="the gateway's retry queue: list, show, retry, delete")
    qs = q.add_subparsers(dest="queue_command", metavar="COMMAND")
    qs.required = True

    p = qs.add_parser("list", help="entries still to be sent (or with --status)")
    p.add_argument("--status", choices=RETRY_STATUSES)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)

    p = qs.add_parser("show", help="one entry: envelope, route, attempts, last error")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_show)

    p = qs.add_parser("retry", help="make an entry (or --all) due now")
    p.add_argument("id", nargs="?")
    p.add_argument("--all", action="store_true")
    p.set_defaults(func=_retry)

    p = qs.add_parser("delete", help="remove an entry for good (audited)")
    p.add_argument("id")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=_delete)
