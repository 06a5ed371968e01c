"""``milter dkim keygen``: make a signing key and say what to publish in DNS."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from milter.actions.dkim import DEFAULT_DIRECTORY, DkimError, keygen
from milter.commands import CommandError


def _keygen(args: argparse.Namespace) -> int:
    try:
        path, record = keygen(args.domain, args.selector, args.dir)
    except DkimError as exc:
        raise CommandError(str(exc)) from None
    print(f"private key written to {path} (mode 0600); publish this record:", file=sys.stderr)
    print(record)
    return 0


def register(sub: Any) -> None:
    dkim = sub.add_parser("dkim", help="DKIM signing keys")
    dsub = dkim.add_subparsers(dest="dkim_command", metavar="COMMAND")
    dsub.required = True
    gen = dsub.add_parser("keygen", help="generate a key and print its DNS TXT record")
    gen.add_argument("--domain", required=True, help="signing domain (d=)")
    gen.add_argument("--selector", required=True, help="selector (s=)")
    gen.add_argument(
        "--dir",
        default=DEFAULT_DIRECTORY,
        help=f"where to write the key (default {DEFAULT_DIRECTORY})",
    )
    gen.set_defaults(func=_keygen)
