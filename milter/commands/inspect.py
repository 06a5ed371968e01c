"""``milter inspect [--json] FILE.eml``: what the inspector sees, without any policy."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from milter.commands import CommandError, load_config
from milter.config import InspectLimits
from milter.inspect import inspect_message
from milter.inspect.report import to_json, to_text


def register(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="print the findings for a message (labels, classification, parts, detectors)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("file", metavar="FILE.eml", help="the message to inspect")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    limits = InspectLimits()
    if args.config:
        limits = load_config(args).inspect
    try:
        with open(args.file, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise CommandError(f"{args.file}: {exc.strerror or exc}") from None
    findings = inspect_message(data, limits=limits)
    if args.json:
        json.dump(to_json(findings), sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(to_text(findings))
    return 0
