"""``milter [-c CONFIG] inspect [--json] FILE.eml``: what the inspector sees, without a verdict.

With a configuration, markings are read with the configured policy's levels, aliases and
Purview label GUIDs and within the configured limits: exactly what ``milter check`` and
the gateway see, so the two commands never disagree about a message's classification.
Without one, the inspector's default scheme and limits apply.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from milter.commands import CommandError, load_config
from milter.config import InspectLimits
from milter.inspect import DEFAULT_SCHEME, LabelScheme, inspect_message
from milter.inspect.report import to_json, to_text
from milter.policy.engine import Policy


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
    scheme: LabelScheme = DEFAULT_SCHEME
    if args.config:
        config = load_config(args)
        limits = config.inspect
        if config.policy:
            scheme = Policy.load(list(config.policy), routes=list(config.routes)).scheme
    try:
        with open(args.file, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise CommandError(f"{args.file}: {exc.strerror or exc}") from None
    findings = inspect_message(data, scheme=scheme, limits=limits)
    if args.json:
        json.dump(to_json(findings), sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(to_text(findings))
    return 0
