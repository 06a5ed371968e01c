"""The ``milter`` command: one entry point over the subcommands in ``milter.commands``.

Exit codes are a contract (DESIGN.md section 3): 0 success, 1 the thing checked is
invalid or an operation failed, 2 usage errors. Errors are one line, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from milter import __version__
from milter.commands import dkim, init, inspect, policy, quarantine, report, review, serve, user
from milter.commands import queue as retry_queue
from milter.config import ConfigError, default_config_path
from milter.errors import UserError
from milter.yamlsource import SourceError

# Each module adds its subcommands through ``register(subparsers)`` and sets ``func`` on
# its parsers: a callable taking the parsed arguments, returning an exit code.
COMMAND_MODULES = (
    serve,
    inspect,
    policy,
    quarantine,
    dkim,
    init,
    review,
    retry_queue,
    user,
    report,
)

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="milter", description="Outbound mail policy gateway (SE 79/SE/2019)."
    )
    parser.add_argument(
        "-c",
        "--config",
        help=f"gateway configuration (default: $MILTER_CONFIG, then {default_config_path()})",
    )
    parser.add_argument("--version", action="version", version=f"milter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler = args.func
    try:
        return func(args)
    except (ConfigError, SourceError, UserError) as exc:
        print(f"milter: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the promise: one clear line, never a traceback
        print(f"milter: {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
