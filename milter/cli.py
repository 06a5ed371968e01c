"""The ``milter`` command: one entry point, each area registers its own subcommands.

Exit codes are a contract (DESIGN.md section 3): 0 success, 1 the thing checked is
invalid or an operation failed, 2 usage errors. Errors are one line, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from milter import __version__
from milter.config import ConfigError, GatewayConfig, default_config_path, load
from milter.yamlsource import SourceError

# Modules that contribute subcommands through ``register(subparsers)``. Each sets
# ``func`` on its parsers: a callable taking the parsed arguments, returning an exit code.
COMMAND_MODULES = (
    "milter.smtp.commands",
    "milter.inspect.commands",
    "milter.policy.commands",
    "milter.quarantine.commands",
    "milter.actions.commands",
)

Handler = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """An operation failed in a way the user should read as one line (exit 1)."""


def load_config(args: argparse.Namespace) -> GatewayConfig:
    """The gateway configuration named by ``-c``, ``$MILTER_CONFIG`` or the default path."""
    return load(args.config or default_config_path())


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
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler = args.func
    try:
        return func(args)
    except (ConfigError, SourceError, CommandError) as exc:
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
