"""``milter serve``: run the gateway until SIGTERM; SIGHUP reloads the policy.

With ``workers: N`` a small supervisor forks N processes that each bind the
listening addresses with SO_REUSEPORT, so the kernel spreads connections over
every core; it forwards signals and replaces a worker that dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from milter.config import GatewayConfig


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
    from milter.cli import load_config

    config = load_config(args)
    build_components(config).close()
    policy = f"{len(config.policy)} policy file(s)" if config.policy else "no policy (pass-through)"
    print(f"{config.path}: ok ({policy}, upstream {config.upstream.url})")
    return 0


def serve(args: argparse.Namespace) -> int:
    from milter.cli import CommandError, load_config

    config = load_config(args)
    if config.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Counters of several processes are summed through files in one directory,
        # chosen before the metrics library is imported: start afresh with it set.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="milter-metrics-")
        os.execv(sys.executable, [sys.executable, "-m", "milter", *sys.argv[1:]])
    from milter import log

    log.setup(config.log_level)
    components = build_components(config)  # fails here, before binding, if invalid
    if config.workers == 1:
        if config.metrics:
            from milter import metrics

            metrics.serve(*config.metrics)
        try:
            asyncio.run(run(config, components))
        except OSError as exc:
            raise CommandError(f"cannot listen: {exc.strerror or exc}") from None
        return 0
    components.close()  # each worker opens its own: database handles do not cross fork()
    return supervise(config)


@dataclass
class Components:
    """What the pipeline needs besides the event loop, loaded and validated up front."""

    policy: Any = None  # milter.policy.engine.Policy
    store: Any = None  # milter.quarantine.store.QuarantineStore

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def build_components(config: GatewayConfig) -> Components:
    """Load the policy, open the quarantine, read the keys and notice templates: every
    mistake is reported here, as one line, before a socket is bound."""
    from milter.cli import CommandError

    out = Components()
    if config.policy:
        from milter.actions.notices import NoticeError, Templates
        from milter.policy.engine import Policy, PolicyError
        from milter.quarantine.store import QuarantineError, open_store

        try:
            out.policy = Policy.load(config.policy, routes=set(config.routes))
        except PolicyError as exc:
            raise CommandError(
                str(exc).splitlines()[0]
                + (f" (and {len(exc.errors) - 1} more)" if len(exc.errors) > 1 else "")
            ) from None
        try:
            Templates.load(config.notices.templates)
        except NoticeError as exc:
            raise CommandError(f"notices: {exc}") from None
        try:
            out.store = open_store(config.quarantine)
        except (QuarantineError, OSError) as exc:
            raise CommandError(f"quarantine: {exc}") from None
    if config.dkim:
        from milter.actions.dkim import DkimError, load_keys

        try:
            load_keys(config.dkim)
        except DkimError as exc:
            out.close()
            raise CommandError(f"dkim: {exc}") from None
    return out


def inspector_for(policy: Any, config: GatewayConfig) -> Any:
    """The inspector, reading labels with the policy's own levels and aliases."""
    from functools import partial

    from milter.inspect import inspect_message

    return partial(inspect_message, scheme=policy.scheme, limits=config.inspect)


def make_pipeline(config: GatewayConfig, components: Components) -> Any:
    from milter.delivery import Deliverer
    from milter.pipeline import Pipeline

    deliverer = Deliverer(config)
    kwargs: dict[str, Any] = {}
    if components.policy is not None:
        from milter.actions.rewrite import apply
        from milter.notify import GatewayNotifier

        kwargs["policy"] = components.policy
        kwargs["inspector"] = inspector_for(components.policy, config)
        kwargs["store"] = components.store
        kwargs["rewrite"] = apply
        kwargs["notifier"] = GatewayNotifier(config, components.policy, deliverer)
    if config.dkim:
        from milter.actions.dkim import signer

        kwargs["sign"] = signer(config.dkim)
    return Pipeline(config, deliverer, **kwargs)


def reload_policy(config: GatewayConfig, pipeline: Any) -> None:
    """SIGHUP: a bad policy leaves the running one in place, logged and counted."""
    from milter import log, metrics
    from milter.policy.engine import Policy, PolicyError

    if not config.policy:
        return
    try:
        policy = Policy.load(config.policy, routes=set(config.routes))
    except PolicyError as exc:
        metrics.POLICY_RELOADS.labels("error").inc()
        log.event("policy-reload-failed", 40, errors=str(exc).splitlines())
        return
    pipeline.use_policy(policy, inspector_for(policy, config))
    metrics.POLICY_RELOADS.labels("ok").inc()
    log.event("policy-reloaded", files=list(config.policy))


async def run(config: GatewayConfig, components: Components, *, reuse_port: bool = False) -> None:
    from milter import log
    from milter.smtp.proxy import Gateway

    gateway = Gateway(config, make_pipeline(config, components))
    await gateway.start(reuse_port=reuse_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_policy, config, gateway.pipeline)
    log.event(
        "listening",
        addresses=[f"{h}:{p}" for h, p in gateway.bound()],
        upstream=config.upstream.url,
        pid=os.getpid(),
        policy=list(config.policy),
    )
    await stop.wait()
    log.event("stopping", pid=os.getpid(), sessions=len(gateway.sessions))
    await gateway.shutdown(config.shutdown_grace)


def supervise(config: GatewayConfig) -> int:
    """Fork the workers, forward signals, replace a worker that dies unexpectedly."""
    from milter import log

    if config.metrics:
        from milter import metrics

        metrics.serve(*config.metrics)
    children: dict[int, int] = {}
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                components = build_components(config)
                asyncio.run(run(config, components, reuse_port=True))
            except BaseException as exc:
                log.event("worker-failed", 40, error=f"{type(exc).__name__}: {exc}")
                code = 1
            os._exit(code)
        children[pid] = slot

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for slot in range(config.workers):
        spawn(slot)
    failures: list[float] = []
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children or stopping:
            children.pop(pid, None)
            continue
        slot = children.pop(pid)
        if stopping:
            continue
        failures = [t for t in failures if time.monotonic() - t < 60] + [time.monotonic()]
        if len(failures) > 5 * config.workers:
            log.event("workers-failing", 40, status=status)
            forward(signal.SIGTERM, None)
            stopping = True
            continue
        log.event("worker-replaced", 30, pid=pid, status=status)
        spawn(slot)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if directory.startswith(tempfile.gettempdir()):
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
    return 0
