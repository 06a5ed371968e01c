"""Postfix with the gateway against Postfix alone, in one run.

    .venv/bin/python -m bench.bench_postfix --count 500

A private Postfix (tests/postfixlab.py, loopback only) relays to Postfix's
smtp-sink; Postfix's smtp-source sends the 66 KB report message (bench/messages.py)
to it, over reused connections, a fixed count:

  (a) Postfix alone,
  (b) Postfix with the gateway as ``smtpd_milters`` (examples/postfix/milter.*),
  (c) Postfix with the gateway as before-queue ``smtpd_proxy_filter``
      (examples/postfix/proxy.*),

the gateway with the shipped policy, full inspection and ``workers: 2``. Printed
per setup: messages/s accepted by Postfix's smtpd (smtp-source's own rate) and
delivered to the sink (``status=sent`` lines in Postfix's log, counted until all
have arrived), and the ratios (b)/(a) and (c)/(a). A setup the gateway cannot run
(the milter front-end not there yet) is reported as not available. Needs root
(Postfix runs as a private instance). A tool, not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.messages import report_message  # noqa: E402
from bench.run import RECIPIENT, SENDER, start_sink, stop, tool  # noqa: E402
from tests.postfixlab import PostfixLab, free_port, have_postfix, wait_until  # noqa: E402

OUT = ROOT / "bench" / "out"
RECIPES = ROOT / "examples" / "postfix"
POLICY = ROOT / "policies" / "se-79-2019.yaml"


class NotAvailable(Exception):
    """The gateway refused this setup (e.g. a configuration key it does not know)."""


@dataclass
class Result:
    label: str
    accepted: float | None = None     # messages/s through Postfix's smtpd
    delivered: float | None = None    # messages/s arriving at the sink
    note: str = ""


def smtp_source(port: int, path: Path, count: int, sessions: int, timeout: float) -> float:
    """Messages per second accepted at ``port``, by smtp-source with connection reuse."""
    t0 = time.perf_counter()
    r = subprocess.run(
        [tool("smtp-source"), "-d", "-s", str(sessions), "-m", str(count), "-F", str(path),
         "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {r.stderr.decode(errors='replace')[-500:]}")
    return count / (time.perf_counter() - t0)


def sent_to_sink(lab: PostfixLab, sink_port: int) -> int:
    rx = re.compile(rf"to=<{re.escape(RECIPIENT)}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                    rf"{sink_port},.* status=sent")
    return sum(1 for line in lab.log().splitlines() if rx.search(line))


def start_gateway(cfg_lines: list[str], tag: str, port: int) -> subprocess.Popen[bytes]:
    cfg = OUT / f"gateway-postfix-{tag}.yaml"
    cfg.write_text("\n".join(cfg_lines) + "\n")
    log_path = OUT / f"gateway-postfix-{tag}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - lives with the process
    proc = subprocess.Popen([sys.executable, "-m", "milter", "-c", str(cfg), "serve"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def up() -> bool:
        if proc.poll() is not None:
            text = log_path.read_text(errors="replace").strip()
            raise NotAvailable(text.splitlines()[-1] if text else f"exit {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return True
        except OSError:
            return False

    try:
        wait_until(f"the gateway on port {port}", up, 30)
    except TimeoutError:
        stop(proc)
        raise
    return proc


def gateway_lines(var: Path, reinject_port: int, sink_port: int) -> list[str]:
    return [
        "hostname: bench.jakarta.go.id",
        'clients: ["127.0.0.0/8"]',
        f"upstream: smtp://127.0.0.1:{reinject_port}",
        f"routes: {{sanapati: 'smtp://127.0.0.1:{sink_port}'}}",
        f"policy: {POLICY}",
        "workers: 2",
        "max_message_size: 60MB",
        "max_connections_per_client: 1000",
        f"spool_dir: {var}/tmp",
        f"quarantine: {{database: 'sqlite:///{var}/q.sqlite3', spool: '{var}/spool'}}",
    ]


def run_setup(label: str, sink_port: int, path: Path, args: argparse.Namespace,
              configure: Callable[[PostfixLab, dict[str, int | str], list[subprocess.Popen[bytes]]],
                                  None] | None) -> Result:
    lab = PostfixLab(relay_port=sink_port, name="bench")
    ports: dict[str, int | str] = {"submission": f"127.0.0.1:{lab.smtpd_port}",
                                   "inet:127.0.0.1:8890": free_port(),
                                   "127.0.0.1:2525": free_port(),
                                   "127.0.0.1:10025": free_port()}
    # Bench load: 20 sessions from one client, no per-client limits in the way.
    lab.set_main({"smtpd_client_connection_count_limit": "0", "default_process_limit": "200",
                  "smtp_destination_concurrency_limit": "40"})
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if configure is not None:
            try:
                configure(lab, ports, procs)
            except NotAvailable as exc:
                return Result(label, note=f"not available: {exc}")
        lab.start()
        # Warm-up (gateway workers, Postfix processes), then the measured run.
        warm = min(100, args.count)
        smtp_source(lab.smtpd_port, path, warm, args.sessions, args.timeout)
        wait_until("the warm-up at the sink", lambda: sent_to_sink(lab, sink_port) >= warm,
                   args.timeout)
        base = sent_to_sink(lab, sink_port)
        t0 = time.perf_counter()
        accepted = smtp_source(lab.smtpd_port, path, args.count, args.sessions, args.timeout)
        wait_until("all messages at the sink",
                   lambda: sent_to_sink(lab, sink_port) >= base + args.count, args.timeout,
                   lambda: lab.log()[-2000:])
        delivered = args.count / (time.perf_counter() - t0)
        return Result(label, accepted, delivered)
    finally:
        lab.cleanup()
        for p in procs:
            stop(p)


def milter_setup(sink_port: int) -> Callable[..., None]:
    def configure(lab: PostfixLab, ports: dict[str, int | str],
                  procs: list[subprocess.Popen[bytes]]) -> None:
        var = OUT / "var-postfix-milter"
        shutil.rmtree(var, ignore_errors=True)
        var.mkdir(parents=True)
        milter_port = int(ports["inet:127.0.0.1:8890"])
        procs.append(start_gateway(
            ["listen: []", f'milter: {{listen: ["inet:127.0.0.1:{milter_port}"]}}',
             *gateway_lines(var, int(ports["127.0.0.1:10025"]), sink_port)],
            "milter", milter_port))
        lab.set_main((RECIPES / "milter.main.cf").read_text(), ports)
        lab.add_master((RECIPES / "milter.master.cf").read_text(), ports)
    return configure


def proxy_setup(sink_port: int) -> Callable[..., None]:
    def configure(lab: PostfixLab, ports: dict[str, int | str],
                  procs: list[subprocess.Popen[bytes]]) -> None:
        var = OUT / "var-postfix-proxy"
        shutil.rmtree(var, ignore_errors=True)
        var.mkdir(parents=True)
        gw_port = int(ports["127.0.0.1:2525"])
        procs.append(start_gateway(
            [f'listen: ["127.0.0.1:{gw_port}"]',
             *gateway_lines(var, int(ports["127.0.0.1:10025"]), sink_port)],
            "proxy", gw_port))
        lab.set_main((RECIPES / "proxy.main.cf").read_text(), ports)
        master = (RECIPES / "proxy.master.cf").read_text()
        # The recipe limits one client to 10 connections; the load comes from one.
        master = master.replace("smtpd_client_connection_count_limit=10",
                                "smtpd_client_connection_count_limit=0")
        lab.add_master(master, ports)
    return configure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=500, help="messages per setup")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per step, at most")
    args = ap.parse_args()
    if not have_postfix():
        sys.exit("Postfix not found: install Debian's postfix package (make deps does)")
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark starts a private Postfix instance")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "report-postfix.eml"
    data = report_message().replace(b"\r\n", b"\n")
    path.write_bytes(data)          # smtp-source adds the CRs
    sink, sink_port = start_sink()
    try:
        results = [
            run_setup("(a) Postfix alone", sink_port, path, args, None),
            run_setup("(b) Postfix + gateway (milter)", sink_port, path, args,
                      milter_setup(sink_port)),
            run_setup("(c) Postfix + gateway (proxy)", sink_port, path, args,
                      proxy_setup(sink_port)),
        ]
    finally:
        sink.terminate()
        sink.wait(5)
    print(f"\nPostfix {args.count} x {len(data) // 1024} KB report message, {args.sessions} "
          f"sessions, shipped policy, gateway workers: 2, {os.cpu_count()} cores")
    print(f"{'setup':34} {'accepted/s':>11} {'delivered/s':>12} {'accepted, delivered vs (a)':>28}")
    base = results[0]
    for r in results:
        if r.accepted is None or r.delivered is None:
            print(f"{r.label:34} {r.note}")
            continue
        ratio = ""
        if r is not base and base.accepted and base.delivered:
            ratio = (f"{r.accepted / base.accepted:9.1%} {r.delivered / base.delivered:10.1%}")
        print(f"{r.label:34} {r.accepted:11.1f} {r.delivered:12.1f} {ratio}")


if __name__ == "__main__":
    main()
