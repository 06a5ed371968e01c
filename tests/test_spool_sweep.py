"""Spool files left by a killed process are swept when the gateway starts."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from milter.message import SPOOL_PREFIX, SpoolWriter, process_started, sweep_spool
from tests.conftest import Sink

HOUR = 3600.0


def aged(path: Path, seconds: float, content: bytes = b"Subject: left behind\r\n\r\n") -> Path:
    """A file whose last write was ``seconds`` ago (negative: in the future)."""
    path.write_bytes(content)
    when = time.time() - seconds
    os.utime(path, (when, when))
    return path


def spool_leftover(directory: Path) -> Path:
    """A spool file named exactly as ``SpoolWriter`` names them."""
    fd, name = tempfile.mkstemp(prefix=SPOOL_PREFIX, dir=directory)
    os.close(fd)
    return aged(Path(name), HOUR)


def swept_events(log: str) -> list[dict[str, Any]]:
    out = []
    for line in log.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == "spool-swept":
                out.append(record)
    return out


def test_gateway_start_removes_its_stale_spool_files_only(
    tmp_path: Path, sink: Sink, gateway_factory: Any
) -> None:
    spool = tmp_path / "spool-data"
    spool.mkdir()
    stale = [spool_leftover(spool) for _ in range(3)]
    others = [
        aged(spool / "notes.txt", HOUR),  # not the gateway's prefix
        aged(spool / "xmsg-abcd1234", HOUR),  # the prefix, but not at the start
        aged(spool / "msg-Q1.eml", HOUR),  # not a tempfile suffix
        aged(spool / "msg-inuse123", -60),  # written after the start: in use
    ]
    (spool / "msg-subdir12").mkdir()  # a directory is never touched
    outside = spool_leftover(tmp_path)  # the gateway's name, another directory

    gw = gateway_factory(
        upstream=f"smtp://127.0.0.1:{sink.port}",
        spool_dir=str(spool),
        spool_threshold="1KB",
    )

    # The sweep runs before the gateway listens: once it accepts, it is done.
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in others)
    assert (spool / "msg-subdir12").is_dir() and outside.exists()
    [event] = swept_events(gw.log())
    assert event["removed"] == 3 and event["directory"] == str(spool)
    assert event["level"] == "warning"


def test_workers_sweep_what_was_left_before_the_supervisor_started(
    tmp_path: Path, sink: Sink, gateway_factory: Any
) -> None:
    # Forked workers judge by their supervisor's start, not their own, so that a
    # replacement worker spares its siblings' files; leftovers still go.
    spool = tmp_path / "spool-data"
    spool.mkdir()
    stale = [spool_leftover(spool) for _ in range(3)]
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}", spool_dir=str(spool), workers=2)
    deadline = time.monotonic() + 15
    while sum(e["removed"] for e in swept_events(gw.log())) < 3:
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.02)
    assert [p for p in stale if p.exists()] == []
    assert sum(e["removed"] for e in swept_events(gw.log())) == 3


def test_nothing_to_sweep_logs_nothing(tmp_path: Path, sink: Sink, gateway_factory: Any) -> None:
    spool = tmp_path / "spool-data"
    spool.mkdir()
    kept = aged(spool / "README", HOUR)
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}", spool_dir=str(spool))
    assert kept.exists()
    assert swept_events(gw.log()) == []


def test_sweep_spares_files_written_since_the_cutoff(tmp_path: Path) -> None:
    # A spool file really written by SpoolWriter, still being received.
    writer = SpoolWriter(threshold=10, directory=str(tmp_path))
    writer.write(b"x" * 100)
    live = [p for p in tmp_path.iterdir() if p.name.startswith(SPOOL_PREFIX)]
    assert len(live) == 1
    old = spool_leftover(tmp_path)
    try:
        assert sweep_spool(str(tmp_path), before=time.time() - 60) == 1
        assert not old.exists() and live[0].exists()
        message = writer.finish(0)
        assert message.content() == b"x" * 100
    finally:
        writer.discard()


def test_sweep_of_no_directory_or_a_missing_one_removes_nothing(tmp_path: Path) -> None:
    # No spool_dir: spool files go to the system's temporary directory, which other
    # programs share, and nothing is swept there.
    assert sweep_spool("") == 0
    assert sweep_spool(str(tmp_path / "missing")) == 0


def test_process_start_is_in_the_past_and_a_parent_started_first() -> None:
    mine = process_started()
    assert mine <= time.time()
    assert process_started(os.getppid()) <= mine


def test_an_unknown_process_start_sweeps_nothing(tmp_path: Path) -> None:
    # A supervisor whose start cannot be read: no file is known to predate it.
    old = spool_leftover(tmp_path)
    assert sweep_spool(str(tmp_path), before=process_started(2**22 + 12345)) == 0
    assert old.exists()
