"""Inspectors with known behaviour for the inspection-pool tests: they run in real
child processes, so they live in an importable module, not in a test function."""

from __future__ import annotations

import os
import time

from milter.inspect.findings import Findings


def slow_on_request(data: bytes) -> Findings:
    """Spins (CPU, no sleep a signal could cut short) when the data asks for it."""
    if data.startswith(b"SLOW"):
        end = time.monotonic() + 60
        while time.monotonic() < end:
            pass
    if data.startswith(b"CRASH"):
        os._exit(3)
    if data.startswith(b"RAISE"):
        raise ValueError("probe failure")
    return Findings(size=len(data), subject=f"pid {os.getpid()}")


def tagged(data: bytes) -> Findings:
    """A second inspector, to tell a reloaded policy's children from the old ones."""
    return Findings(size=len(data), subject="tagged")
