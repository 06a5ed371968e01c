"""Inspector benchmark: full inspection latency of the report message, and corpus throughput.

Run: ``.venv/bin/python -m bench.bench_inspect [--corpus DIR] [--rounds N]``. One process,
one thread, so the figures are per core. A tool, not a test: it prints, it does not judge.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
import tracemalloc
from pathlib import Path

from bench.messages import big_message, report_message, small_message
from milter.inspect import inspect_message

DEFAULT_CORPUS = "/work/shared/corpus/real"


def latency(data: bytes, rounds: int) -> tuple[float, float]:
    """Median and 99th percentile milliseconds of ``inspect_message(data)``."""
    for _ in range(min(20, rounds)):
        inspect_message(data)
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        inspect_message(data)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def corpus_rate(folder: Path) -> tuple[int, float]:
    files = [p.read_bytes() for p in sorted(folder.rglob("*.eml")) if p.is_file()]
    start = time.perf_counter()
    for data in files:
        inspect_message(data)
    return len(files), len(files) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", default=DEFAULT_CORPUS, help="folder of .eml files")
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--big", action="store_true", help="also the 25 MB message (memory)")
    args = parser.parse_args()
    for name, data in (("report", report_message()), ("small", small_message())):
        med, p99 = latency(data, args.rounds)
        print(f"{name:7s} {len(data):7d} B  median {med:6.2f} ms  p99 {p99:6.2f} ms")
    folder = Path(args.corpus)
    if folder.is_dir():
        count, rate = corpus_rate(folder)
        print(f"corpus  {count} messages  {rate:8.1f} messages/s  ({folder})")
    else:
        print(f"corpus  {folder} not found, skipped")
    if args.big:
        data = big_message()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        findings = inspect_message(data)
        took = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        inspect_message(data)
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(
            f"big     {len(data) >> 20} MB  {took * 1000:.0f} ms  peak RSS {peak >> 10} MB "
            f"(was {before >> 10} MB)  tracemalloc peak {traced >> 20} MB  "
            f"parts {len(findings.parts)}"
        )


if __name__ == "__main__":
    main()
