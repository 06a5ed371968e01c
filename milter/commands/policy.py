"""``milter policy validate`` and ``milter check``: policies an administrator can trust.

``check`` runs the real inspector and the real engine on a message without sending
anything, and explains the verdict rule by rule, so what an administrator sees
before a reload is exactly what the gateway will do after it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from typing import Any

from milter.commands import CommandError, load_config
from milter.config import GatewayConfig
from milter.envelope import Envelope
from milter.inspect import inspect_message
from milter.inspect.findings import Findings
from milter.policy.engine import Policy, PolicyError
from milter.policy.verdict import Verdict, rewrite_to_dict


def register(sub: Any) -> None:
    policy = sub.add_parser("policy", help="work with policy files")
    psub = policy.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    psub.required = True
    v = psub.add_parser(
        "validate", help="check policy files; print file:line:col: message for every error"
    )
    v.add_argument("files", nargs="+", metavar="P", help="policy files, in layering order")
    v.set_defaults(func=validate)

    c = sub.add_parser(
        "check", help="the verdict for a message, explained rule by rule, without sending anything"
    )
    c.add_argument(
        "--policy",
        action="append",
        metavar="P",
        help="policy file (repeat to layer); default: the configuration's policy",
    )
    c.add_argument(
        "--from", dest="sender", metavar="A", help="envelope sender (default: the From header)"
    )
    c.add_argument(
        "--to",
        action="append",
        metavar="A",
        help="envelope recipient, repeatable (default: To, Cc and Bcc)",
    )
    c.add_argument("--json", action="store_true", help="print the verdict as JSON")
    c.add_argument("file", metavar="FILE.eml", help="the message")
    c.set_defaults(func=check)


def validate(args: argparse.Namespace) -> int:
    routes = list(load_config(args).routes) if args.config else None
    try:
        Policy.load(args.files, routes=routes)
    except PolicyError as exc:
        for err in exc.errors:
            print(err)
        return 1
    for f in args.files:
        print(f"{f}: ok")
    return 0


def _load(args: argparse.Namespace) -> tuple[Policy, GatewayConfig | None]:
    config = load_config(args) if args.config or not args.policy else None
    if args.policy:
        paths = list(args.policy)
    elif config is not None and config.policy:
        paths = list(config.policy)
    else:
        raise CommandError("no policy: give --policy or list policy: in the configuration")
    routes = list(config.routes) if config is not None else None
    return Policy.load(paths, routes=routes), config


def envelope_for(data: bytes, sender: str | None, recipients: list[str] | None) -> Envelope:
    """The envelope given on the command line, else the one the headers suggest."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(data)

    def addresses(*names: str) -> list[str]:
        values = [str(v) for n in names for v in headers.get_all(n, [])]
        return [a for _, a in getaddresses(values) if "@" in a]

    if sender is None:
        found = addresses("From")
        sender = found[0] if found else ""
    rcpts = recipients or addresses("To", "Cc", "Bcc")
    if not rcpts:
        raise CommandError("no recipients: the message has no To, Cc or Bcc; give --to")
    unique = list(dict.fromkeys(rcpts))
    return Envelope(mail_from=sender, rcpt_tos=tuple(unique))


def _findings_json(findings: Findings) -> dict[str, Any]:
    try:
        report = importlib.import_module("milter.inspect.report")
    except ModuleNotFoundError:
        return findings.to_dict()
    to_json: Callable[[Findings], dict[str, Any]] = report.to_json
    return to_json(findings)


def check(args: argparse.Namespace) -> int:
    policy, config = _load(args)
    try:
        with open(args.file, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise CommandError(f"{args.file}: {exc.strerror or exc}") from None
    envelope = envelope_for(data, args.sender, args.to)
    findings = inspect_message(
        data, scheme=policy.scheme, limits=config.inspect if config is not None else None
    )
    verdict = policy.evaluate(envelope, findings)
    if args.json:
        json.dump(
            verdict.to_dict(_findings_json(findings)), sys.stdout, ensure_ascii=False, indent=2
        )
        sys.stdout.write("\n")
    else:
        sys.stdout.write(explain(envelope, findings, verdict))
    return 0


def explain(envelope: Envelope, findings: Findings, verdict: Verdict) -> str:
    """The verdict in words: per recipient, then every rule with the findings it used."""
    lines = [
        f"From:           {envelope.mail_from or '<>'}",
        f"Subject:        {findings.subject}",
        f"Classification: {verdict.classification or 'none (unlabelled)'}",
        "",
        "Recipients:",
    ]
    for r in verdict.recipients:
        what = f"deliver via {r.route}" if r.action == "deliver" else r.action
        by = f"  by {', '.join(r.rules)}" if r.rules else ""
        clause = f"  (clause {'; '.join(r.clauses)})" if r.clauses else ""
        lines.append(f"  {r.address}: {what}{by}{clause}")
        if r.reject_text:
            lines.append(f"      reply: {r.reject_text}")
        for rw in r.rewrites:
            args = ", ".join(
                f"{k}={v!r}"
                for k, v in rewrite_to_dict(rw).items()
                if v is not None and k not in ("kind", "rule")
            )
            lines.append(f"      {rw.kind} {args}  [{rw.rule}]")
        if r.bcc:
            lines.append(f"      bcc {', '.join(r.bcc)}")
    lines += ["", "Rules:"]
    for res in verdict.rules:
        mark = "MATCH" if res.matched else "no   "
        mode = "" if res.mode == "enforce" else f" [{res.mode}]"
        who = f" for {res.recipient}" if res.recipient else ""
        clause = f" (clause {res.clause})" if res.clause else ""
        lines.append(f"  {mark} {res.name}{mode}{who}{clause}")
        lines.extend(f"          - {reason}" for reason in res.reasons)
    if verdict.audit:
        lines += ["", f"Audit/test rules matched: {', '.join(verdict.audit)}"]
    if verdict.notify:
        lines += ["", "Notify:"]
        for n in verdict.notify:
            lines.append(f"  {', '.join(n.targets)} about {n.rule}")
    return "\n".join(lines) + "\n"
