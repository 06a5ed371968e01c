"""Milter protocol throughput: our asyncio server against libmilter (pymilter), no-op handler.

Run: ``.venv/bin/python -m bench.bench_milter_codec [--seconds S] [--concurrency 1 8]``.

Both filters run in their own process, keep the body (ours rebuilds and dot-stuffs
the whole message, the pymilter one only joins the body chunks: the least a
filter that inspects content does) and answer every message with "continue";
the same client (tests/milterproto/mta.py, sending what Postfix 3.x sends:
OPTNEG, CONNECT, HELO, MAIL, RCPT, headers, EOH, 64 KB body chunks, EOM, several
transactions per connection without ABORT) drives them, for a 5 KB and a 66 KB
message (bench/messages.py). It prints messages/s and the filter process's CPU time
per message (user + system, all threads, from /proc): with one Python client the
client may be the limit at high concurrency, the CPU figure is the filter's own cost.
pymilter is looked for in this
interpreter, then in $PYMILTER_PYTHON (default /tmp/pymilter-venv/bin/python);
without it that row is skipped. pymilter's C module is called ``milter`` too, so its
server runs isolated (``python -I``, outside the repository) to import the right one.
A tool, not a test: it prints figures, it does not judge.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.messages import report_message, small_message  # noqa: E402
from tests.milterproto.mta import Mta, split_message  # noqa: E402

SENDER = "pengirim@jakarta.go.id"
RECIPIENT = "penerima@example.org"
TRANSACTIONS_PER_CONNECTION = 50

OURS = """
import asyncio, sys
sys.path.insert(0, {root!r})
from milter.milterproto.server import MilterServer
from milter.milterproto.types import MilterResult

async def noop(tx):
    return MilterResult("continue")

async def main():
    server = MilterServer(["inet:127.0.0.1:{port}"], noop, max_message_size=50 << 20,
                          spool_threshold=1 << 20, spool_dir=None, timeout=60)
    await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

PYMILTER = """
import Milter

class Noop(Milter.Base):
    def __init__(self):
        self.chunks = []

    @Milter.noreply
    def connect(self, hostname, family, hostaddr):
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, hostname):
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, f, *args):
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, to, *args):
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name, value):
        return Milter.CONTINUE

    @Milter.noreply
    def eoh(self):
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk):
        self.chunks.append(chunk)
        return Milter.CONTINUE

    def eom(self):
        self.message = b"".join(self.chunks)
        self.chunks = []
        return Milter.CONTINUE

Milter.factory = Noop
Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.ADDRCPT
                 | Milter.DELRCPT)
print("ready", flush=True)
Milter.runmilter("noop", "inet:{port}@127.0.0.1", timeout=60)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pymilter_python() -> str | None:
    candidates = [
        sys.executable,
        os.environ.get("PYMILTER_PYTHON", "/tmp/pymilter-venv/bin/python"),
    ]
    for python in candidates:
        if not Path(python).exists():
            continue
        probe = subprocess.run(
            [python, "-I", "-c", "import Milter, milter; milter.setconn"],
            cwd="/tmp",
            capture_output=True,
        )
        if probe.returncode == 0:
            return python
    return None


def start(python: str, code: str, port: int, cwd: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [python, "-I", "-c", code], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("filter did not start")


async def client(address: str, message: bytes, deadline: float) -> int:
    headers, body = split_message(message)
    chunks = [body[i : i + 65535] for i in range(0, len(body), 65535)]
    done = 0
    while time.monotonic() < deadline:
        mta = await Mta.connect(address)
        await mta.negotiate()
        await mta.session()
        for _ in range(TRANSACTIONS_PER_CONNECTION):
            await mta.envelope(SENDER, [RECIPIENT])
            await mta.content(headers, chunks, {"i": "BENCH"})
            await mta.end_of_message({"i": "BENCH"})
            done += 1
            if time.monotonic() >= deadline:
                break
        mta.send(ord("Q"))
        await mta.close()
    return done


def cpu_seconds(pid: int) -> float:
    """User + system time of a process and all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    address: str, message: bytes, seconds: float, concurrency: int, pid: int
) -> tuple[float, float]:
    """Messages per second, and the filter's CPU milliseconds per message."""
    await client(address, message, time.monotonic() + min(1.0, seconds / 4))  # warm up
    cpu = cpu_seconds(pid)
    start_at = time.monotonic()
    deadline = start_at + seconds
    counts = await asyncio.gather(*(client(address, message, deadline) for _ in range(concurrency)))
    total = sum(counts)
    return total / (time.monotonic() - start_at), (cpu_seconds(pid) - cpu) * 1000 / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()

    messages = {"5 KB": small_message(), "66 KB": report_message()}
    filters: dict[str, tuple[str, str, str]] = {"asyncio (ours)": (sys.executable, OURS, str(ROOT))}
    python = pymilter_python()
    if python is None:
        print("pymilter: not importable here or in $PYMILTER_PYTHON; skipped")
    else:
        filters["pymilter/libmilter"] = (python, PYMILTER, "/tmp")

    print(f"{'filter':<20} {'message':>8} {'conc':>5} {'msg/s':>9} {'cpu ms/msg':>11}")
    for name, (exe, code, cwd) in filters.items():
        port = free_port()
        proc = start(exe, code.format(root=str(ROOT), port=port), port, cwd)
        try:
            for label, message in messages.items():
                for conc in args.concurrency:
                    rate, cpu = asyncio.run(
                        measure(f"inet:127.0.0.1:{port}", message, args.seconds, conc, proc.pid)
                    )
                    print(f"{name:<20} {label:>8} {conc:>5} {rate:>9.0f} {cpu:>11.3f}", flush=True)
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
