"""Gateway throughput and memory, measured against the direct path in one run.

    make bench            (or: .venv/bin/python bench/run.py --count 2000)

Starts Postfix's smtp-sink, sends the same messages with Postfix's smtp-source
(20 concurrent sessions reusing connections, a fixed count) first straight to the
sink and then through ``milter serve`` (workers: 2), and prints messages/s for
both and their ratio, the p50/p99 latency the gateway adds (a sequential probe),
and the peak RSS of a gateway process relaying one 25 MB message. With the shipped
policy present it also runs the report message through the gateway with the
policy enforced and full inspection (external sender and recipient, so every rule
is evaluated and the mail is delivered). A tool, not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.messages import big_message, jpeg, report_message, small_message  # noqa: E402
from tests.conftest import free_port, wait_port  # noqa: E402

OUT = ROOT / "bench" / "out"
SENDER = "pengirim@example.com"
RECIPIENT = "penerima@example.org"


def hundred_kb_message() -> bytes:
    """The report message with a photo attached as well: about 100 KB, PDF and docx."""
    import email
    import email.policy
    from email.mime.image import MIMEImage

    msg = email.message_from_bytes(report_message(), policy=email.policy.compat32)
    photo = MIMEImage(jpeg(320, 280, seed=11), "jpeg")
    photo.add_header("Content-Disposition", "attachment", filename="foto-kegiatan.jpg")
    msg.attach(photo)
    return msg.as_bytes()


def tool(name: str) -> str:
    path = shutil.which(name) or f"/usr/sbin/{name}"
    if not Path(path).exists():
        sys.exit(f"{name} not found: install Debian's postfix package (make bench does)")
    return path


def start_sink() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    user = ["-u", "root"] if os.geteuid() == 0 else []
    proc = subprocess.Popen(
        [tool("smtp-sink"), *user, f"127.0.0.1:{port}", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc=proc)
    return proc, port


def start_gateway(
    upstream_port: int, workers: int, policy: bool = False, tag: str = ""
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    var = OUT / f"var{tag}"
    shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True)
    lines = [
        f'listen: ["127.0.0.1:{port}"]',
        "hostname: bench.jakarta.go.id",
        'clients: ["127.0.0.0/8"]',
        f"upstream: smtp://127.0.0.1:{upstream_port}",
        f"workers: {workers}",
        "max_message_size: 60MB",
        "max_connections_per_client: 1000",
        f"spool_dir: {var}/tmp",
        f"quarantine: {{database: 'sqlite:///{var}/q.sqlite3', spool: '{var}/spool'}}",
    ]
    if policy:
        lines += [
            f"policy: {ROOT}/policies/se-79-2019.yaml",
            f"routes: {{sanapati: 'smtp://127.0.0.1:{upstream_port}'}}",
        ]
    cfg = OUT / f"gateway{tag}.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    log = open(OUT / f"gateway{tag}.log", "wb")  # noqa: SIM115 - lives with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "milter", "-c", str(cfg), "serve"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    wait_port(port, proc=proc)
    time.sleep(0.5 if workers > 1 else 0.1)  # let every worker bind
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def smtp_source(port: int, path: Path, count: int, sessions: int) -> float:
    """Messages per second, by Postfix's smtp-source with connection reuse."""
    t0 = time.perf_counter()
    subprocess.run(
        [
            tool("smtp-source"),
            "-d",
            "-s",
            str(sessions),
            "-m",
            str(count),
            "-F",
            str(path),
            "-f",
            SENDER,
            "-t",
            RECIPIENT,
            f"127.0.0.1:{port}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=600,
    )
    return count / (time.perf_counter() - t0)


def best_of(
    repeat: int, direct_port: int, gateway_port: int, path: Path, *, count: int, sessions: int
) -> tuple[float, float]:
    """The best rate of each path over interleaved runs: what the machine can do when
    nothing else disturbs it, measured in the same conditions for both paths."""
    direct, via = 0.0, 0.0
    for _ in range(repeat):
        direct = max(direct, smtp_source(direct_port, path, count, sessions))
        via = max(via, smtp_source(gateway_port, path, count, sessions))
    return direct, via


Row = tuple[str, float, float, float, float]


def measure(
    label: str,
    direct_port: int,
    gateway_port: int,
    *,
    path: Path,
    data: bytes,
    args: argparse.Namespace,
    count: int,
) -> Row:
    """One table row: both rates (after a warm-up of the gateway) and the latency the
    gateway adds at the median and the 99th percentile."""
    smtp_source(gateway_port, path, min(200, count), args.sessions)
    direct, via = best_of(
        args.repeat, direct_port, gateway_port, path, count=count, sessions=args.sessions
    )
    lat_direct = probe(direct_port, data, args.probe)
    lat_gw = probe(gateway_port, data, args.probe)
    return (
        label,
        direct,
        via,
        pct(lat_gw, 0.5) - pct(lat_direct, 0.5),
        pct(lat_gw, 0.99) - pct(lat_direct, 0.99),
    )


def probe(port: int, data: bytes, count: int) -> list[float]:
    """Per-message latency in ms of a sequential client over one connection."""
    out = []
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.ehlo("probe.example.com")
        for _ in range(count):
            t0 = time.perf_counter()
            s.sendmail(SENDER, [RECIPIENT], data)
            out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def worker_pids(parent: int) -> list[int]:
    try:
        kids = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        kids = []
    return [int(k) for k in kids] or [parent]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def big_relay(sink_port: int, big: bytes, *, policy: bool) -> tuple[str, float, float, float]:
    """(mode, seconds, peak RSS MB, idle peak MB) of one fresh gateway relaying ``big``."""
    gw, gw_port = start_gateway(
        sink_port, workers=1, policy=policy, tag="-bigpolicy" if policy else "-big"
    )
    try:
        before = max(peak_rss_mb(p) for p in worker_pids(gw.pid))
        t0 = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", gw_port, timeout=300) as s:
            s.sendmail(SENDER, [RECIPIENT], big)
        seconds = time.perf_counter() - t0
        peak = max(peak_rss_mb(p) for p in worker_pids(gw.pid))
    finally:
        stop(gw)
    return ("SE 79 policy" if policy else "pass-through", seconds, peak, before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000, help="messages per measurement")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3, help="runs per path; the best counts")
    ap.add_argument("--probe", type=int, default=200, help="sequential latency samples")
    ap.add_argument("--no-policy", action="store_true", help="skip the policy-enforced run")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    # CRLF, as a mail server sends them (the generators write LF, like most libraries).
    messages = {
        name: data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        for name, data in (
            ("5 KB", small_message()),
            ("report", report_message()),
            ("100 KB", hundred_kb_message()),
        )
    }
    files = {}
    for name, data in messages.items():
        path = OUT / f"{name.replace(' ', '')}.eml"
        path.write_bytes(data.replace(b"\r\n", b"\n"))  # smtp-source adds the CRs
        files[name] = path

    sink, sink_port = start_sink()
    rows = []
    try:
        gw, gw_port = start_gateway(sink_port, workers=2)
        try:
            for name, path in files.items():
                size = len(messages[name]) // 1024
                smtp_source(sink_port, path, min(200, args.count), args.sessions)  # warm-up
                rows.append(
                    measure(
                        f"{name} ({size} KB), pass-through",
                        sink_port,
                        gw_port,
                        path=path,
                        data=messages[name],
                        args=args,
                        count=args.count,
                    )
                )
        finally:
            stop(gw)
        if not args.no_policy and (ROOT / "policies" / "se-79-2019.yaml").exists():
            gw, gw_port = start_gateway(sink_port, workers=2, policy=True, tag="-policy")
            try:
                for name in ("5 KB", "report"):
                    size = len(messages[name]) // 1024
                    rows.append(
                        measure(
                            f"{name} ({size} KB), SE 79 policy",
                            sink_port,
                            gw_port,
                            path=files[name],
                            data=messages[name],
                            args=args,
                            count=max(200, args.count // (2 if name == "5 KB" else 4)),
                        )
                    )
            finally:
                stop(gw)

        big = big_message(25 << 20).replace(b"\n", b"\r\n")
        big_rows = [big_relay(sink_port, big, policy=False)]
        if not args.no_policy and (ROOT / "policies" / "se-79-2019.yaml").exists():
            big_rows.append(big_relay(sink_port, big, policy=True))
    finally:
        sink.terminate()
        sink.wait(5)

    print(
        f"\nmilter gateway benchmark: {args.count} messages, {args.sessions} sessions, "
        f"connections reused, workers: 2, {os.cpu_count()} cores"
    )
    print(
        f"{'message, mode':34} {'direct/s':>10} {'gateway/s':>10} {'ratio':>7} "
        f"{'+p50 ms':>8} {'+p99 ms':>8}"
    )
    for label, direct, via, p50, p99 in rows:
        print(f"{label:34} {direct:10.0f} {via:10.0f} {via / direct:7.1%} {p50:8.2f} {p99:8.2f}")
    for mode, seconds, peak, before in big_rows:
        print(
            f"25 MB message through the gateway ({mode}, workers: 1): {seconds:.2f} s, "
            f"peak RSS {peak:.0f} MB (idle peak before: {before:.0f} MB)"
        )


if __name__ == "__main__":
    main()
