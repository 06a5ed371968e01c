"""``milter report --weekly``: the agency figures of clause 3.b for the last whole week.

Printed per agency (every agency a head of agency account has) and over all senders.
With ``--send`` each head of agency gets a digest of their own agencies, and the
officers (``notices.officers``) the one of every agency: queued in the notice outbox
of the quarantine database first, so nothing is lost when the next hop is down (the
gateway's outbox keeps trying), then attempted once right away. A systemd timer
(``systemd/milter-report.timer``) runs it every Monday morning.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

from milter.app.report import ALL, AgencyWeek, agency_weeks, last_complete_week
from milter.commands import CommandError
from milter.commands.quarantine import _open
from milter.config import GatewayConfig
from milter.quarantine.store import QuarantineError, QuarantineStore
from milter.quarantine.users import users_of
from milter.text import json_dumps, printable

NOTICE_KIND = "weekly-report"


def _day(ts: float, tz: str) -> str:
    return dt.datetime.fromtimestamp(ts, ZoneInfo(tz)).strftime("%Y-%m-%d")


def _pairs(items: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{printable(k)} ({n})" for k, n in items) or "-"


def _print(rows: Sequence[AgencyWeek], start: float, end: float, tz: str) -> None:
    print(f"week {_day(start, tz)} .. {_day(end - 1, tz)} ({tz})")
    for r in rows:
        name = "all senders" if r.agency == ALL else printable(r.agency)
        print(f"\n{name}")
        print(f"  held {r.held}  released {r.released}  deleted {r.deleted}  rejected {r.rejected}")
        print(f"  top rules         {_pairs(r.top_rules)}")
        print(f"  top clauses       {_pairs(r.top_clauses)}")
        print(f"  top destinations  {_pairs(r.top_destinations)}")


def _digests(
    store: QuarantineStore, config: GatewayConfig, rows: Sequence[AgencyWeek]
) -> list[tuple[list[str], list[AgencyWeek], str]]:
    """(recipients, rows, who) of each digest: one per head, one for the officers."""
    by_agency = {r.agency: r for r in rows}
    out: list[tuple[list[str], list[AgencyWeek], str]] = []
    for user in users_of(store).list():
        if user.role != "head" or user.disabled:
            continue
        if not user.address:
            print(
                f"milter: report: head {printable(user.name)} has no mail address "
                "(user add --email); no digest",
                file=sys.stderr,
            )
            continue
        mine = [by_agency[a] for a in user.agencies if a in by_agency]
        out.append(([user.address], mine, f"head {user.name}"))
    if config.notices.officers:
        out.append((list(config.notices.officers), list(rows), "officers"))
    return out


async def _send_now(config: GatewayConfig, store: QuarantineStore) -> int:
    """One attempt at every due notice (ours among them); what fails stays queued."""
    from milter.app.notify import NoticeOutbox
    from milter.delivery import Deliverer, DeliveryResult
    from milter.message import Message

    deliverer = Deliverer(config)

    async def send(rcpts: list[str], data: bytes) -> DeliveryResult:
        utf8 = any(not a.isascii() for a in rcpts)
        return await deliverer.send(
            "upstream", "", rcpts, Message.from_content(data), smtputf8=utf8
        )

    outbox = NoticeOutbox(
        lambda: store,
        send,
        retry=config.notices.retry,
        give_up=config.notices.give_up,
        autostart=False,
    )
    try:
        return await outbox.run_once()
    finally:
        await deliverer.close()


def _send(
    store: QuarantineStore,
    config: GatewayConfig,
    rows: Sequence[AgencyWeek],
    period: tuple[float, float],
) -> None:
    from milter.actions.notices import NoticeError, weekly_report

    now = time.time()
    queued = 0
    for rcpts, mine, who in _digests(store, config, rows):
        try:
            data = weekly_report(
                config.notices,
                rcpts,
                period=period,
                agencies=[r.to_dict() for r in mine],
                now=now,
            )
        except NoticeError as exc:
            raise CommandError(f"notices: {exc}") from None
        store.enqueue_notice(NOTICE_KIND, "", rcpts, data, now=now)
        queued += 1
        print(f"digest for {printable(who)} queued to {printable(', '.join(rcpts))}")
    if queued:
        attempted = asyncio.run(_send_now(config, store))
        sent = len([n for n in store.outbox("queued") if n.kind == NOTICE_KIND])
        print(
            f"{queued} digest(s) queued; {attempted} notice(s) attempted now"
            + (f", {sent} still queued (the gateway's outbox retries them)" if sent else "")
        )


def _weekly(args: argparse.Namespace) -> int:
    if not args.weekly:
        raise CommandError("give --weekly (the only report so far)")
    config, store = _open(args)
    tz = config.notices.timezone
    with store:
        start, end = last_complete_week(time.time(), tz)
        try:
            rows = agency_weeks(store, None, start, end, tz=tz)
            if args.json:
                out: dict[str, Any] = {
                    "week_start": start,
                    "week_end": end,
                    "agencies": [r.to_dict() for r in rows],
                }
                print(json_dumps(out, indent=1))
            else:
                _print(rows, start, end, tz)
            if args.send:
                _send(store, config, rows, (start, end))
        except QuarantineError as exc:
            raise CommandError(str(exc)) from None
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("report", help="per-agency figures (clause 3.b); --send mails the digests")
    p.add_argument("--weekly", action="store_true", help="the last complete week (Monday-Sunday)")
    p.add_argument("--send", action="store_true", help="mail each head of agency and the officers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_weekly)
