"""The systemd units: hardened below an exposure of 2.0, valid, and matching the package.

Exposure figures come from ``systemd-analyze security --offline=true``, which scores a
unit file without a running systemd; the tests parse the number it prints, so a unit
that loses its hardening fails here rather than in production. The weakened copies
show the measurement can fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

UNITS = ROOT / "systemd"
SERVICES = sorted(p.name for p in UNITS.glob("*.service"))
TIMERS = sorted(p.name for p in UNITS.glob("*.timer"))
ANALYZE = shutil.which("systemd-analyze")
MAX_EXPOSURE = 2.0
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")

# What every service must switch on; each is a line of systemd-analyze's table that
# must carry a check mark (a directive present but ineffective would not).
REQUIRED = (
    "SystemCallFilter=~@privileged",
    "SystemCallFilter=~@resources",
    "SystemCallFilter=~@mount",
    "SystemCallArchitectures=",
    "ProtectClock=",
    "ProtectKernelLogs=",
    "ProtectKernelModules=",
    "ProtectKernelTunables=",
    "ProtectControlGroups=",
    "ProtectHostname=",
    "RestrictSUIDSGID=",
    "MemoryDenyWriteExecute=",
    "ProtectSystem=",
    "ProtectHome=",
    "PrivateTmp=",
    "PrivateDevices=",
    "NoNewPrivileges=",
    "RestrictNamespaces=~user",
    "RestrictRealtime=",
    "LockPersonality=",
    "User=/DynamicUser=",
    "CapabilityBoundingSet=~CAP_SYS_ADMIN",
    "AmbientCapabilities=",
)


def directives(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, repeated keys kept (systemd's
    SystemCallFilter= lines accumulate, which configparser cannot represent)."""
    out: list[tuple[str, str, str]] = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(path: Path, key: str) -> list[str]:
    return [v for _, k, v in directives(path) if k == key]


def security(path: Path) -> tuple[float, dict[str, bool]]:
    """The overall exposure, and for each row of the table whether it is a check mark."""
    assert ANALYZE is not None
    proc = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert found, proc.stdout
    rows = {}
    for line in proc.stdout.splitlines():
        mark, _, rest = line.partition(" ")
        if mark in ("✓", "✗") and rest:
            rows[rest.split()[0]] = mark == "✓"
    return float(found.group(1)), rows


def weakened(tmp_path: Path, name: str, *drop: str) -> Path:
    """A copy of unit ``name`` without the lines setting ``drop`` keys."""
    text = (UNITS / name).read_text()
    kept = [ln for ln in text.splitlines() if ln.partition("=")[0].strip() not in drop]
    copy = tmp_path / name
    copy.write_text("\n".join(kept) + "\n")
    return copy


def test_every_unit_the_deployment_needs_is_there() -> None:
    assert SERVICES == [
        "milter-expire.service",
        "milter-report.service",
        "milter-review.service",
        "milter.service",
    ]
    assert TIMERS == ["milter-expire.timer", "milter-report.timer"]
    assert values(UNITS / "milter-review.service", "ExecStart") == ["/usr/bin/milter review"]
    assert values(UNITS / "milter-report.service", "ExecStart") == [
        "/usr/bin/milter report --weekly --send"
    ]
    for timer in TIMERS:
        assert (UNITS / timer.replace(".timer", ".service")).exists()
        assert values(UNITS / timer, "Persistent") == ["true"]


@needs_analyze
@pytest.mark.parametrize("name", SERVICES)
def test_exposure_is_below_two(name: str) -> None:
    exposure, rows = security(UNITS / name)
    assert exposure < MAX_EXPOSURE, f"{name}: exposure {exposure}"
    missing = [r for r in REQUIRED if not rows.get(r)]
    assert not missing, f"{name}: not in force: {missing}"


@needs_analyze
@pytest.mark.parametrize("drop", [("SystemCallFilter",), ("CapabilityBoundingSet",)])
def test_losing_a_major_protection_crosses_the_threshold(tmp_path: Path, drop: tuple[str]) -> None:
    exposure, _ = security(weakened(tmp_path, "milter.service", *drop))
    assert exposure > MAX_EXPOSURE


@needs_analyze
@pytest.mark.parametrize(
    ("drop", "row"),
    [
        ("ProtectSystem", "ProtectSystem="),
        ("MemoryDenyWriteExecute", "MemoryDenyWriteExecute="),
        ("ProtectClock", "ProtectClock="),
        ("RestrictSUIDSGID", "RestrictSUIDSGID="),
        ("ProtectKernelLogs", "ProtectKernelLogs="),
    ],
)
def test_each_protection_is_measured(tmp_path: Path, drop: str, row: str) -> None:
    """Removing one directive turns its row into a cross: the figure above is the sum
    of what these units actually set, not a number that happens to be low."""
    base, _ = security(UNITS / "milter.service")
    exposure, rows = security(weakened(tmp_path, "milter.service", drop))
    assert rows[row] is False
    assert exposure >= base


def _verify(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, "verify", "--no-pager", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def staged_units(tmp_path: Path) -> list[Path]:
    """The units, with /usr/bin/milter (which exists only once the package is
    installed: test_packaging verifies the installed files) pointed at this checkout's
    entry point, so verify checks everything else."""
    milter = Path(sys.executable).with_name("milter")
    assert milter.exists()
    out = []
    for src in sorted(UNITS.glob("milter*")):
        dst = tmp_path / src.name
        dst.write_text(src.read_text().replace("/usr/bin/milter", str(milter)))
        out.append(dst)
    return out


@needs_analyze
def test_units_verify_clean(tmp_path: Path) -> None:
    proc = _verify(staged_units(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""


@needs_analyze
def test_verify_reports_a_mistake(tmp_path: Path) -> None:
    units = staged_units(tmp_path)
    service = tmp_path / "milter.service"
    service.write_text(service.read_text().replace("ProtectSystem=", "ProtectSytem="))
    proc = _verify(units)
    assert "ProtectSytem" in proc.stderr


def test_units_match_the_package() -> None:
    """Paths and names the units use are the ones packaging/ creates."""
    sysusers = (ROOT / "packaging" / "milter.sysusers").read_text()
    tmpfiles = (ROOT / "packaging" / "milter.tmpfiles").read_text()
    assert re.search(r"(?m)^u milter\b", sysusers)
    assert re.search(r"(?m)^d /var/lib/milter\s+0750 milter milter", tmpfiles)
    assert re.search(r"(?m)^d /etc/milter\s+0750 root\s+milter", tmpfiles)
    for name in SERVICES:
        unit = UNITS / name
        assert values(unit, "User") == ["milter"] and values(unit, "Group") == ["milter"]
        assert values(unit, "StateDirectory") == ["milter"]
        assert values(unit, "Environment") == ["MILTER_CONFIG=/etc/milter/gateway.yaml"]
        for command in values(unit, "ExecStart") + values(unit, "ExecStartPre"):
            assert command.split()[0] == "/usr/bin/milter"
    gateway = UNITS / "milter.service"
    # The milter socket lives in /run/milter; Postfix gets in through the group.
    assert values(gateway, "RuntimeDirectory") == ["milter"]
    assert values(gateway, "RuntimeDirectoryMode") == ["0750"]


MDWE_PROBE = """
import ctypes, io, mmap, multiprocessing, sys

PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1
libc = ctypes.CDLL(None, use_errno=True)


def inspect_in_child(fixture):
    assert libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) == PR_MDWE_REFUSE_EXEC_GAIN
    from milter.cli import main
    sys.exit(main(["inspect", "--json", fixture]))


if __name__ == "__main__":
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(77)
    try:  # the control: the restriction is in force
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("a writable executable mapping was allowed")
    except PermissionError:
        pass
    # A ctypes callback: a libffi closure.
    compare = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)
    )(lambda a, b: a[0] - b[0])
    numbers = (ctypes.c_int * 4)(3, 1, 4, 2)
    libc.qsort(numbers, 4, ctypes.sizeof(ctypes.c_int), compare)
    assert list(numbers) == [1, 2, 3, 4]
    # PDFium: a document built, saved, read back through a file object (pypdfium2
    # reads those through a callback) and rendered.
    import pypdfium2 as pdfium
    doc = pdfium.PdfDocument.new()
    doc.new_page(200, 200)
    buf = io.BytesIO()
    doc.save(buf)
    again = pdfium.PdfDocument(io.BytesIO(buf.getvalue()))
    again[0].render()
    import magic
    assert "PDF" in magic.from_buffer(buf.getvalue())
    # The gateway's inspector, in a forkserver process as the gateway runs it.
    ctx = multiprocessing.get_context("forkserver")
    child = ctx.Process(target=inspect_in_child, args=(sys.argv[1],))
    child.start()
    child.join()
    sys.exit(child.exitcode)
"""


def test_inspection_runs_with_memory_deny_write_execute(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes, checked against real use rather than assumed: the
    kernel's own W^X switch (prctl PR_SET_MDWE, Linux 6.3+, refusing what systemd's
    seccomp filter refuses: a mapping writable and executable, or made executable
    later) is set on a process that then runs ctypes callbacks, libmagic, PDFium and
    the inspector in a forkserver child, which inherits the switch."""
    probe = tmp_path / "probe.py"
    probe.write_text(MDWE_PROBE)
    fixture = ROOT / "tests" / "inspect" / "fixtures" / "pdf-report.eml"
    proc = subprocess.run(
        [sys.executable, str(probe), str(fixture)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    if proc.returncode == 77:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    assert proc.returncode == 0, proc.stderr
    assert '"attachments"' in proc.stdout
