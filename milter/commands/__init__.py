"""The ``milter`` subcommands, one module per area; ``milter.cli`` registers them all.

Commands are thin: they parse arguments, call the application layer (``milter.app``)
or a core package, and print. What they share lives here.
"""

from __future__ import annotations

import argparse

from milter.config import GatewayConfig, default_config_path, load
from milter.errors import UserError


class CommandError(UserError):
    """An operation failed in a way the user should read as one line (exit 1)."""


def load_config(args: argparse.Namespace) -> GatewayConfig:
    """The gateway configuration named by ``-c``, ``$MILTER_CONFIG`` or the default path."""
    return load(args.config or default_config_path())
