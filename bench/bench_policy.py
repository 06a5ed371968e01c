"""Policy benchmark: mean time to evaluate the shipped policy on one message's findings.

Run: ``.venv/bin/python -m bench.bench_policy [--rounds N]``. Inspection happens once,
outside the timing; what is measured is ``Policy.evaluate`` alone, the cost the
policy adds to every message. The report message goes from an external sender to
an external recipient, so every rule is evaluated and nothing stops early; a
classified variant to a mix of recipients shows the per-recipient cost. A tool, not
a test: it prints figures, it does not judge.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from milter.envelope import Envelope  # noqa: E402
from milter.inspect import inspect_message  # noqa: E402
from milter.inspect.findings import Findings  # noqa: E402
from milter.policy.engine import Policy  # noqa: E402

SHIPPED = ROOT / "policies" / "se-79-2019.yaml"


def report_bytes() -> tuple[str, bytes]:
    """The inspection benchmark's report message, when that generator is available."""
    try:
        messages = importlib.import_module("bench.messages")
        make: Callable[[], bytes] = messages.report_message
        return "report_message()", make()
    except (ImportError, AttributeError):
        text = "Laporan kegiatan dinas. " * 2000
        body = f"From: a@example.com\r\nTo: b@example.org\r\nSubject: Laporan\r\n\r\n{text}\r\n"
        return "plain 48 KB text (bench.messages unavailable)", body.encode()


def timed(policy: Policy, envelope: Envelope, findings: Findings, rounds: int) -> list[float]:
    for _ in range(min(200, rounds)):
        policy.evaluate(envelope, findings)
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        policy.evaluate(envelope, findings)
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5000)
    args = parser.parse_args()

    start = time.perf_counter()
    policy = Policy.load([str(SHIPPED)], routes=["sanapati"])
    load_ms = (time.perf_counter() - start) * 1000
    name, data = report_bytes()
    findings = inspect_message(data, scheme=policy.scheme)
    print(f"policy: {SHIPPED.name}, {len(policy.rules)} rules, loaded in {load_ms:.1f} ms")
    print(
        f"message: {name}, {len(data)} bytes, {len(findings.parts)} parts, "
        f"{len(findings.text)} chars of text, classification {findings.classification}"
    )

    cases = [
        (
            "external -> external",
            findings,
            Envelope("pengirim@example.com", ("penerima@example.org",)),
        ),
        (
            "RAHASIA, 4 mixed recipients",
            replace(findings, classification="RAHASIA"),
            Envelope(
                "staf@jakarta.go.id",
                (
                    "a@gmail.com",
                    "b@dinas.jakarta.go.id",
                    "c@bssn.sanapati.net",
                    "d@kemendagri.go.id",
                ),
            ),
        ),
    ]
    for label, f, env in cases:
        samples = timed(policy, env, f, args.rounds)
        samples.sort()
        actions = ", ".join(
            f"{r.action}/{r.route}" if r.route else r.action
            for r in policy.evaluate(env, f).recipients
        )
        print(
            f"{label:32s} mean {statistics.fmean(samples):7.1f} us  "
            f"median {statistics.median(samples):7.1f} us  "
            f"p99 {samples[int(len(samples) * 0.99)]:7.1f} us  ({actions})"
        )


if __name__ == "__main__":
    main()
