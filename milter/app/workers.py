"""The running process: its front-ends over one pipeline, and the worker supervisor.

``run`` starts whatever the configuration asks for in this process (the SMTP proxy on
``listen``, the milter-protocol front-end on ``milter.listen``) over one pipeline, so
both see the same policy, quarantine, delivery pool and metrics, and stops them together
on SIGTERM (transactions in flight finish). With ``workers: N`` the supervisor forks N
such processes that each bind with SO_REUSEPORT, so the kernel spreads connections over
the cores; it forwards signals and replaces a worker that dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import tempfile
import time
from collections.abc import Mapping
from types import FrameType

from milter import log, metrics
from milter.app import loop as event_loop
from milter.app.wiring import Components, build_components, make_pipeline, reload_policy
from milter.config import GatewayConfig

# A worker that keeps dying this often is broken, not unlucky: stop, and let the
# service manager (which sees a non-zero exit) decide.
FAILURE_WINDOW = 60.0


async def run(
    config: GatewayConfig,
    components: Components,
    *,
    reuse_port: bool = False,
    unix_sockets: Mapping[str, socket.socket] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT; SIGHUP reloads the policy."""
    from milter.milterproto.frontend import milter_server
    from milter.smtp.proxy import Gateway

    pipeline = make_pipeline(config, components)
    gateway = Gateway(config, pipeline) if config.listen else None
    milter = milter_server(config, pipeline) if config.milter.listen else None
    # Signals first: starting the inspection processes takes a moment, and a SIGTERM
    # that arrives meanwhile must stop this worker, not be lost.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_policy, config, pipeline)
    try:
        await pipeline.start()
        if gateway is not None:
            await gateway.start(reuse_port=reuse_port)
        if milter is not None:
            await milter.start(reuse_port=reuse_port, unix_sockets=unix_sockets)
    except BaseException:
        if gateway is not None:
            await gateway.shutdown(0, close_pipeline=False)
        if milter is not None:
            await milter.shutdown(0)
        await pipeline.close()
        raise
    log.event(
        "listening",
        addresses=[f"{h}:{p}" for h, p in gateway.bound()] if gateway else [],
        milter=milter.bound() if milter else [],
        upstream=config.upstream.display_url,
        pid=os.getpid(),
        policy=list(config.policy),
        event_loop=event_loop.loop_name(),
    )
    await stop.wait()
    sessions = len(gateway.sessions) if gateway else 0
    log.event("stopping", pid=os.getpid(), sessions=sessions)
    grace = config.shutdown_grace
    await asyncio.gather(
        *([gateway.shutdown(grace, close_pipeline=False)] if gateway else []),
        *([milter.shutdown(grace)] if milter else []),
    )
    await pipeline.close()


def supervise(config: GatewayConfig) -> int:
    """Fork the workers, forward signals, replace a worker that dies unexpectedly.

    Returns 0 after an orderly stop and 1 when workers kept failing, so systemd's
    ``Restart=on-failure`` brings the service back.
    """
    probe = metrics.serve(*config.metrics, config, start_probe=False) if config.metrics else None
    children: dict[int, int] = {}
    stopping = False
    gave_up = False
    # A unix socket path can be bound once: bound here, every worker inherits it.
    unix_sockets: dict[str, socket.socket] = {}
    if config.milter.listen:
        from milter.milterproto.server import bind_unix, unix_paths

        for path in unix_paths(config.milter.listen):
            unix_sockets[path] = bind_unix(path)

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            # The supervisor's handlers forward signals to its children; in a worker,
            # until its event loop takes over, SIGTERM must stop it (not be forwarded to
            # its siblings and lost) and SIGHUP is moot (the policy is read at start).
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            code = 0
            try:
                components = build_components(config)
                event_loop.run(run(config, components, reuse_port=True, unix_sockets=unix_sockets))
            except BaseException as exc:
                log.event("worker-failed", 40, error=f"{type(exc).__name__}: {exc}")
                code = 1
            os._exit(code)
        children[pid] = slot

    def forward(signum: int, _frame: FrameType | None) -> None:
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
    if probe is not None:
        probe.start()  # after the fork, so that no worker inherits the probe's thread
    failures: list[float] = []
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        slot = children.pop(pid, -1)
        metrics.process_exited(pid)
        if slot < 0 or stopping:
            continue
        now = time.monotonic()
        failures = [t for t in failures if now - t < FAILURE_WINDOW] + [now]
        if len(failures) > 5 * config.workers:
            log.event("workers-failing", 40, status=status)
            gave_up = True
            forward(signal.SIGTERM, None)
            continue
        log.event("worker-replaced", 30, pid=pid, status=status)
        spawn(slot)
    for path, sock in unix_sockets.items():
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if directory.startswith(tempfile.gettempdir()):
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
    return 1 if gave_up else 0
