"""``milter quarantine ...``: the compliance officers' command line.

Every action that changes a message's fate, and every look at a held message, is
audited with who, what and why. Who is the authenticated OS user (``os_actor``):
never an argument or an environment variable a user can set, or the hash-chained
log would record whatever name they typed. Releasing and deleting are the
application's ``review_release`` and ``review_delete``, the same the review UI calls:
two officers for the classifications in ``review.two_person``, the policy checked
again for a release to another address, claimed first and sent once.

Subjects, addresses, file names and header values were written by the sender: every
one is shown through ``printable`` (tables and text) or ``json_dumps`` (``--json``),
so a held message cannot send escape sequences to the officer's terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import email
import email.policy
import os
import pwd
import sys
import time
from email.message import Message
from typing import Any

from milter.commands import CommandError, load_config
from milter.config import GatewayConfig, parse_duration
from milter.quarantine.store import (
    STATUSES,
    QuarantineError,
    QuarantineRecord,
    QuarantineStore,
    open_store,
)
from milter.text import json_dumps, printable


def _open(args: argparse.Namespace) -> tuple[GatewayConfig, QuarantineStore]:
    config = load_config(args)
    try:
        return config, open_store(config.quarantine)
    except QuarantineError as exc:
        raise CommandError(f"quarantine: {exc}") from None


def os_actor() -> str:
    """Who is running this command, as the system authenticated them.

    Through sudo (real uid 0 and ``SUDO_USER`` set, which sudo sets and only root can
    fake) the user who ran sudo; else the real user's name in the password database.
    ``$LOGNAME`` and ``$USER`` are ignored: anybody can set them.
    """
    uid = os.getuid()
    sudo = os.environ.get("SUDO_USER", "").strip()
    if uid == 0 and sudo and sudo != "root":
        try:
            return pwd.getpwnam(sudo).pw_name
        except KeyError:
            raise CommandError(f"SUDO_USER names no user of this system: {sudo!r}") from None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise CommandError(f"uid {uid} has no entry in the password database") from None


def _actor(args: argparse.Namespace) -> str:
    if getattr(args, "actor", None) is not None:
        raise CommandError(
            "--actor is no longer accepted: the audit log records the OS user "
            "(the sudo user when run through sudo)"
        )
    return os_actor()


def _record(store: QuarantineStore, qid: str) -> QuarantineRecord:
    rec = store.get(qid)
    if rec is None:
        raise CommandError(f"no quarantined message {qid}")
    return rec


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def parse_since(value: str, now: float | None = None) -> float:
    """``2026-11-01``, ``2026-11-01T08:00`` (UTC unless an offset is given) or ``7d`` ago."""
    text = value.strip()
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        pass
    else:
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return moment.timestamp()
    try:
        return (time.time() if now is None else now) - parse_duration(text)
    except ValueError:
        raise CommandError(
            f"--since: expected a date (2026-11-01) or an age (7d): {value}"
        ) from None


# -- list, show, export ------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    _, store = _open(args)
    with store:
        since = parse_since(args.since) if args.since else None
        try:
            records = store.list(
                status=args.status, since=since, sender=args.sender, rule=args.rule
            )
        except QuarantineError as exc:
            raise CommandError(str(exc)) from None
    if args.json:
        print(json_dumps([r.to_dict() for r in records], indent=1))
        return 0
    if not records:
        print("no messages", file=sys.stderr)
        return 0
    print(f"{'ID':<13} {'RECEIVED':<20} {'STATUS':<9} {'SENDER':<30} {'RULES':<20} SUBJECT")
    for r in records:
        # Escaped before cut to width, so the columns stay where they are.
        sender = printable(r.sender or "<>")[:30]
        rules = printable(",".join(r.rules))[:20]
        subject = printable(r.subject)[:60]
        rcpts = f"{len(r.recipients)} rcpt"
        print(
            f"{printable(r.id):<13} {_when(r.received_at):<20} {r.status:<9} {sender:<30} "
            f"{rules:<20} {subject} ({rcpts})"
        )
    return 0


def _parts(msg: Message) -> list[str]:
    """One line per MIME part: type, disposition, file name and decoded size."""
    lines = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if part.is_multipart():
            lines.append(f"  {printable(ctype)}")
            continue
        payload = part.get_payload(decode=True)
        size = len(payload) if isinstance(payload, bytes) else 0
        name = part.get_filename()
        disposition = part.get_content_disposition() or "inline"
        lines.append(
            f"  - {printable(ctype)} {printable(disposition)}"
            + (f' "{printable(name)}"' if name else "")
            + f" {size} bytes"
        )
    return lines


def _show(args: argparse.Namespace) -> int:
    actor = os_actor()
    _, store = _open(args)
    with store:
        rec = _record(store, args.id)
        try:
            data: bytes | None = store.read(args.id)
        except QuarantineError:
            data = None
        try:
            store.append_audit(actor, "view", rec.id, "quarantine show")
        except QuarantineError as exc:
            raise CommandError(str(exc)) from None
    if args.json:
        out = rec.to_dict()
        out["stored"] = data is not None
        print(json_dumps(out, indent=1))
        return 0
    print(
        f"Quarantine id:  {rec.id}   status: {rec.status}"
        + (f" (since {_when(rec.updated_at)})" if rec.updated_at else "")
    )
    print("Envelope:")
    d = rec.to_dict()  # where it came from, as the list's JSON says it
    print(
        f"  received      {_when(rec.received_at)} via {printable(d['frontend'])}"
        + (f", transaction {printable(rec.queue_id)}" if rec.queue_id else "")
    )
    client = f"[{printable(d['client_address'])}]"
    if d["client_name"]:
        client = f"{printable(d['client_name'])} {client}"
    if d["helo"]:
        client += f", HELO {printable(d['helo'])}"
    print(f"  client        {client}")
    if d["login"]:
        print(f"  login         {printable(d['login'])}")
    if d["queue_id"] != rec.queue_id:
        print(f"  MTA queue id  {printable(d['queue_id'])}")
    print(f"  sender        {printable(rec.sender or '<>')}")
    print(f"  held for      {printable(', '.join(rec.recipients))}")
    print(f"  route         {printable(rec.route)}")
    print(f"  size          {rec.size} bytes")
    print("Why:")
    classification = printable(rec.classification or "-")
    print(f"  classification {classification}; labels {printable(', '.join(rec.labels)) or '-'}")
    print(f"  rules          {printable(', '.join(rec.rules)) or '-'}")
    print(f"  SE 79/SE/2019  {printable(', '.join(rec.clauses)) or '-'}")
    print("Findings:")
    for line in json_dumps(dict(rec.findings), indent=2).splitlines():
        print(f"  {line}")
    if data is None:
        print("Message: no longer kept")
        return 0
    msg = email.message_from_bytes(data, policy=email.policy.default)
    print("Headers:")
    for key, value in msg.items():
        try:
            text = str(value)
        except (ValueError, TypeError, IndexError, AttributeError):
            text = repr(value)
        print(f"  {printable(key)}: {printable(text)}")
    print("Parts:")
    for line in _parts(msg):
        print(line)
    return 0


def _export(args: argparse.Namespace) -> int:
    actor = _actor(args)
    _, store = _open(args)
    with store:
        _record(store, args.id)
        try:
            data = store.read(args.id)
            store.append_audit(actor, "export", args.id, args.reason or "")
        except QuarantineError as exc:
            raise CommandError(str(exc)) from None
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


# -- release, delete, expire -------------------------------------------------------------


def _release(args: argparse.Namespace) -> int:
    from milter.actions.rewrite import apply
    from milter.app.outbound import Outbound
    from milter.app.release import review_release
    from milter.app.wiring import load_signer

    actor = _actor(args)
    config, store = _open(args)
    with store:
        outbound = Outbound(apply, load_signer(config))
        result = asyncio.run(
            review_release(
                config,
                store,
                outbound,
                args.id,
                actor=actor,
                reason=args.reason,
                to=tuple(args.to or ()),
            )
        )
    if result.status == "refused":
        raise CommandError(printable(result.message))
    print(printable(result.message))
    return 0


def _delete(args: argparse.Namespace) -> int:
    from milter.app.release import review_delete

    actor = _actor(args)
    _, store = _open(args)
    with store:
        result = review_delete(store, args.id, actor, args.reason)
    if result.status == "refused":
        raise CommandError(printable(result.message))
    print(printable(result.message))
    return 0


def _expire(args: argparse.Namespace) -> int:
    config, store = _open(args)
    with store:
        try:
            ids = store.expire(time.time(), config.quarantine.retention)
        except QuarantineError as exc:
            raise CommandError(str(exc)) from None
    days = config.quarantine.retention / 86400
    print(f"expired {len(ids)} message(s) held longer than {days:g} days")
    for qid in ids:
        print(qid)
    return 0


def _audit(args: argparse.Namespace) -> int:
    _, store = _open(args)
    with store:
        try:
            entries = store.audit_entries()
            problems = store.verify_audit() if args.verify else []
        except QuarantineError as exc:
            raise CommandError(str(exc)) from None
    if args.json:
        print(json_dumps([e.to_dict() for e in entries], indent=1))
    elif not args.verify:
        for e in entries:
            print(
                f"{e.seq:>6} {_when(e.at)} {printable(e.actor):<12} {e.action:<15} "
                f"{printable(e.qid):<13} {printable(e.reason)}"
            )
    if args.verify:
        for p in problems:
            print(f"TAMPERED: {printable(p)}", file=sys.stderr)
        if problems:
            return 1
        print(f"audit log intact: {len(entries)} entries", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    q = sub.add_parser("quarantine", help="held messages: list, show, release, delete, audit")
    qs = q.add_subparsers(dest="quarantine_command", metavar="COMMAND")
    qs.required = True

    p = qs.add_parser("list", help="held (or other) messages")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--since", help="a date (2026-11-01) or an age (7d)")
    p.add_argument("--sender", help="an address, or @domain")
    p.add_argument("--rule", help="only messages held by this rule")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)

    p = qs.add_parser("show", help="envelope, headers, parts and the findings behind a hold")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_show)

    p = qs.add_parser("export", help="the original message (.eml) to standard output")
    p.add_argument("id")
    p.add_argument("--reason", help="why it is exported (audited)")
    p.add_argument("--actor", help=argparse.SUPPRESS)  # refused: see os_actor
    p.set_defaults(func=_export)

    p = qs.add_parser("release", help="deliver a held message through its route, once")
    p.add_argument("id")
    p.add_argument("--reason", required=True)
    p.add_argument(
        "--to",
        action="append",
        metavar="ADDRESS",
        help="send a copy to these addresses, if the policy delivers there; the hold "
        "stays for its recipients (repeatable)",
    )
    p.add_argument("--actor", help=argparse.SUPPRESS)  # refused: see os_actor
    p.set_defaults(func=_release)

    p = qs.add_parser("delete", help="discard a message (the record and audit stay)")
    p.add_argument("id")
    p.add_argument("--reason", required=True)
    p.add_argument("--actor", help=argparse.SUPPRESS)  # refused: see os_actor
    p.set_defaults(func=_delete)

    p = qs.add_parser("expire", help="expire messages held beyond the retention")
    p.set_defaults(func=_expire)

    p = qs.add_parser("audit", help="the audit log; --verify checks its hash chain")
    p.add_argument("--verify", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_audit)
