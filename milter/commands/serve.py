"""``milter serve`` and ``milter config check``: the gateway's process, and its dry run.

The process itself (front-ends, workers, signals) is ``milter.app.workers``; this is
the command line around it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

from milter.app import loop as event_loop
from milter.commands import CommandError, load_config


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the gateway until SIGTERM (SIGHUP reloads policy)")
    p.set_defaults(func=serve)
    cfg = sub.add_parser("config", help="the gateway configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="COMMAND")
    cfg_sub.required = True
    check = cfg_sub.add_parser(
        "check", help="validate the configuration, its policy, quarantine and keys; serve nothing"
    )
    check.set_defaults(func=config_check)


def config_check(args: argparse.Namespace) -> int:
    """What ``serve`` validates before binding, for ExecStartPre and for humans."""
    from milter.app.wiring import build_components

    config = load_config(args)
    build_components(config).close()
    policy = f"{len(config.policy)} policy file(s)" if config.policy else "no policy (pass-through)"
    fronts = [f"smtp {', '.join(f'{h}:{p}' for h, p in config.listen)}"] if config.listen else []
    if config.milter.listen:
        fronts.append(f"milter {', '.join(config.milter.listen)}")
    print(
        f"{config.path}: ok ({policy}, {'; '.join(fronts)}, upstream {config.upstream.display_url})"
    )
    return 0


def serve(args: argparse.Namespace) -> int:
    config = load_config(args)
    if config.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Counters of several processes are summed through files in one directory,
        # chosen before the metrics library is imported: start afresh with it set.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="milter-metrics-")
        os.execv(sys.executable, [sys.executable, "-m", "milter", *sys.argv[1:]])
    from milter import log
    from milter.app.wiring import build_components
    from milter.app.workers import run, supervise

    log.setup(config.log_level)
    components = build_components(config)  # fails here, before binding, if invalid
    if config.workers == 1:
        if config.metrics:
            from milter import metrics

            metrics.serve(*config.metrics, config, store=components.store)
        try:
            event_loop.run(run(config, components))
        except OSError as exc:
            raise CommandError(f"cannot listen: {exc.strerror or exc}") from None
        return 0
    components.close()  # each worker opens its own: database handles do not cross fork()
    return supervise(config)
