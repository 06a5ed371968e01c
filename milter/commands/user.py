"""``milter user ...``: the accounts of the review UI, kept in the quarantine database.

A password is never an argument (it would show in ``ps`` and in shell history): it is
the first line of standard input when that is not a terminal (for scripts), else
typed twice at a prompt. Every change is audited with the OS user who made it.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from milter.commands import CommandError
from milter.commands.quarantine import _open, os_actor
from milter.quarantine.store import QuarantineError
from milter.quarantine.users import ROLES, users_of
from milter.text import json_dumps, printable


def read_password() -> str:
    """The new password: stdin's first line, or typed twice at the terminal."""
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        password = line.removesuffix("\n").removesuffix("\r")
        if not password:
            raise CommandError("no password on standard input")
        return password
    try:
        first = getpass.getpass("Password: ")
        second = getpass.getpass("Again: ")
    except EOFError:
        raise CommandError("no password given") from None
    if first != second:
        raise CommandError("the two passwords differ")
    return first


def _add(args: argparse.Namespace) -> int:
    actor = os_actor()
    if args.role == "head" and not args.agency:
        raise CommandError("a head of agency needs at least one --agency DOMAIN")
    password = read_password()
    _, store = _open(args)
    with store:
        try:
            user = users_of(store).add(
                args.name, args.role, password, args.agency or (), email=args.email or ""
            )
            detail = f"{user.role}" + (f" of {', '.join(user.agencies)}" if user.agencies else "")
            store.append_audit(actor, "user-add", "", f"{user.name}: {detail}")
        except QuarantineError as exc:
            raise CommandError(str(exc)) from None
    print(f"user {printable(user.name)} added: {printable(detail)}")
    return 0


def _list(args: argparse.Namespace) -> int:
    _, store = _open(args)
    with store:
        try:
            users = users_of(store).list()
        except QuarantineError as exc:
            raise CommandError(str(exc)) from None
    if args.json:
        print(json_dumps([u.to_dict() for u in users], indent=1))
        return 0
    if not users:
        print("no users", file=sys.stderr)
        return 0
    print(f"{'NAME':<24} {'ROLE':<8} {'STATE':<9} {'EMAIL':<30} AGENCIES")
    for u in users:
        state = "disabled" if u.disabled else "active"
        agencies = printable(", ".join(u.agencies)) or "-"
        email = printable(u.email) or "-"
        print(f"{printable(u.name):<24} {u.role:<8} {state:<9} {email:<30} {agencies}")
    return 0


def _disable(args: argparse.Namespace) -> int:
    actor = os_actor()
    _, store = _open(args)
    with store:
        try:
            users = users_of(store)
            users.disable(args.name)
            store.append_audit(actor, "user-disable", "", args.name.strip().lower())
        except QuarantineError as exc:
            raise CommandError(str(exc)) from None
    print(f"user {printable(args.name)} disabled")
    return 0


def _passwd(args: argparse.Namespace) -> int:
    actor = os_actor()
    _, store = _open(args)
    with store:
        try:
            users = users_of(store)
            if users.get(args.name) is None:
                raise CommandError(f"no user {printable(args.name)}")
            users.set_password(args.name, read_password())
            store.append_audit(actor, "user-passwd", "", args.name.strip().lower())
        except QuarantineError as exc:
            raise CommandError(str(exc)) from None
    print(f"password of {printable(args.name)} changed")
    return 0


def register(sub: Any) -> None:
    u = sub.add_parser("user", help="accounts of the review UI: add, list, disable, passwd")
    us = u.add_subparsers(dest="user_command", metavar="COMMAND")
    us.required = True

    p = us.add_parser("add", help="a new account; the password from stdin or prompted")
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument(
        "--agency",
        action="append",
        metavar="DOMAIN",
        help="a sender domain of the head's agency, subdomains included (repeatable)",
    )
    p.add_argument("--email", metavar="ADDRESS", help="where the weekly digest goes (heads)")
    p.set_defaults(func=_add)

    p = us.add_parser("list", help="every account, with role and agencies")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)

    p = us.add_parser("disable", help="refuse every later login of an account")
    p.add_argument("name")
    p.set_defaults(func=_disable)

    p = us.add_parser("passwd", help="set an account's password (stdin or prompted)")
    p.add_argument("name")
    p.set_defaults(func=_passwd)
