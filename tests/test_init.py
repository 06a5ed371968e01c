"""``milter init``: a configuration directory that works as written, from the package
alone, and that never overwrites what an administrator already has."""

from __future__ import annotations

import grp
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from milter import shipped
from milter.cli import main
from milter.commands import init as init_command
from milter.config import ConfigError, load
from milter.policy.engine import Policy
from tests.conftest import ROOT

MILTER = str(Path(sys.executable).with_name("milter"))
FIXTURE = ROOT / "tests" / "inspect" / "fixtures" / "pdf-report.eml"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MILTER, *args], capture_output=True, text=True, timeout=120, cwd="/", check=False
    )


def init_dir(tmp_path: Path, *extra: str) -> Path:
    etc = tmp_path / "etc"
    proc = run(
        "init",
        "--dir",
        str(etc),
        "--state-dir",
        str(tmp_path / "var"),
        "--hostname",
        "gw.jakarta.go.id",
        *extra,
    )
    assert proc.returncode == 0, proc.stderr
    return etc


def test_written_configuration_passes_config_check(tmp_path: Path) -> None:
    etc = init_dir(tmp_path, "--workers", "2")
    proc = run("-c", str(etc / "gateway.yaml"), "config", "check")
    assert proc.returncode == 0, proc.stderr
    assert "2 policy file(s)" in proc.stdout
    config = load(etc / "gateway.yaml")
    # The shipped policy by reference (upgrades bring its fixes), the local file after it.
    assert config.policy == (str(shipped.policy_path("se-79-2019")), str(etc / "local-policy.yaml"))
    assert "shipped:se-79-2019" in (etc / "gateway.yaml").read_text()
    assert config.listen == ()
    assert config.milter.listen == ("unix:/run/milter/milter.sock",)
    assert config.routes["sanapati"].tls == "verify"
    assert config.quarantine.database == f"sqlite:///{tmp_path}/var/quarantine.sqlite3"
    assert config.workers == 2
    assert config.hostname == "gw.jakarta.go.id"
    assert config.dkim == ()


def test_written_configuration_decides_mail(tmp_path: Path) -> None:
    etc = init_dir(tmp_path)
    proc = run("-c", str(etc / "gateway.yaml"), "check", "--json", str(FIXTURE))
    assert proc.returncode == 0, proc.stderr
    verdict = json.loads(proc.stdout)
    assert {r["name"] for r in verdict["rules"]} >= {"rahasia-terbatas-keluar"}


def test_every_line_is_explained(tmp_path: Path) -> None:
    """A commented configuration: each top-level key has a comment beside or above it."""
    etc = init_dir(tmp_path)
    lines = (etc / "gateway.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_]+:", line) and line.split(":")[0] not in ("hostname", "routes"):
            before = lines[i - 1] if i else ""
            assert "#" in line or before.startswith("#"), line


def test_dkim_keys_on_request(tmp_path: Path) -> None:
    etc = init_dir(tmp_path, "--dkim", "jakarta.go.id:gw1", "--dkim", "dinas.jakarta.go.id:s2")
    record = run("-c", str(etc / "gateway.yaml"), "config", "check")
    assert record.returncode == 0, record.stderr
    config = load(etc / "gateway.yaml")
    assert [(k.domain, k.selector, k.key_file) for k in config.dkim] == [
        ("jakarta.go.id", "gw1", str(etc / "dkim" / "gw1.jakarta.go.id.pem")),
        ("dinas.jakarta.go.id", "s2", str(etc / "dkim" / "s2.dinas.jakarta.go.id.pem")),
    ]
    key = etc / "dkim" / "gw1.jakarta.go.id.pem"
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE(key.stat().st_mode) & 0o077 in (0, 0o040)


def test_dns_records_are_printed(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    proc = run(
        "init", "--dir", str(etc), "--state-dir", "/var/lib/milter", "--dkim", "jakarta.go.id:gw1"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('gw1._domainkey.jakarta.go.id. IN TXT ( "v=DKIM1; k=rsa; p=')


def test_never_overwrites(tmp_path: Path) -> None:
    etc = init_dir(tmp_path)
    (etc / "local-policy.yaml").write_text("version: 1  # mine\n")
    before = (etc / "gateway.yaml").read_text()
    proc = run("init", "--dir", str(etc))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "not overwriting" in proc.stderr
    assert (etc / "gateway.yaml").read_text() == before
    assert (etc / "local-policy.yaml").read_text() == "version: 1  # mine\n"


def test_an_existing_key_stops_before_anything_is_written(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "dkim").mkdir(parents=True)
    (etc / "dkim" / "gw1.jakarta.go.id.pem").write_text("theirs")
    proc = run("init", "--dir", str(etc), "--dkim", "jakarta.go.id:gw1")
    assert proc.returncode == 1 and "not overwriting" in proc.stderr
    assert sorted(p.name for p in etc.iterdir()) == ["dkim"]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--hostname", "gw.example\nupstream: smtp://evil.example:25"),
        ("--postmaster", "postmaster@example.org]\nlisten: [0.0.0.0:25"),
        ("--officer", "not an address"),
        ("--state-dir", "relative/path"),
    ],
)
def test_values_cannot_change_the_structure(tmp_path: Path, option: str, value: str) -> None:
    etc = tmp_path / "etc"
    proc = run("init", "--dir", str(etc), "--hostname", "gw.example.org", option, value)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not etc.exists()


def test_usage_error_for_a_bad_dkim_spec(tmp_path: Path) -> None:
    proc = run("init", "--dir", str(tmp_path / "etc"), "--dkim", "jakarta.go.id")
    assert proc.returncode == 2


def test_files_are_private_without_the_service_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(init_command, "SERVICE_GROUP", "no-such-group-for-milter-tests")
    etc = tmp_path / "etc"
    assert main(["init", "--dir", str(etc), "--dkim", "jakarta.go.id:gw1"]) == 0
    assert stat.S_IMODE(etc.stat().st_mode) == 0o700
    for path in (
        etc / "gateway.yaml",
        etc / "local-policy.yaml",
        etc / "dkim" / "gw1.jakarta.go.id.pem",
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can hand files to another group")
def test_files_are_readable_by_the_service_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As root (the package's postinst, an administrator), the service's group may read
    what the gateway needs; no one else may."""
    group = grp.getgrnam("daemon")
    monkeypatch.setattr(init_command, "SERVICE_GROUP", group.gr_name)
    etc = tmp_path / "etc"
    assert main(["init", "--dir", str(etc), "--dkim", "jakarta.go.id:gw1"]) == 0
    expected = {
        etc: 0o750,
        etc / "dkim": 0o750,
        etc / "gateway.yaml": 0o640,
        etc / "local-policy.yaml": 0o640,
        etc / "dkim" / "gw1.jakarta.go.id.pem": 0o640,
    }
    for path, mode in expected.items():
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid, st.st_uid) == (mode, group.gr_gid, 0), path


def test_local_policy_examples_are_valid(tmp_path: Path) -> None:
    """The commented examples in local-policy.yaml, uncommented, layer over the shipped
    policy as they say they do."""
    text = shipped.template("local-policy.yaml")
    example = "\n".join(ln[len("#     ") :] for ln in text.splitlines() if ln.startswith("#     "))
    assert yaml.safe_load(example).keys() == {"domains", "keywords", "rules"}
    local = tmp_path / "local.yaml"
    local.write_text(example)
    policy = Policy.load([str(shipped.policy_path("se-79-2019")), str(local)], routes={"sanapati"})
    names = [r.name for r in policy.rules]
    assert "data-pribadi-massal" not in names
    assert names.index("arsip-terenkripsi-keluar") == names.index("lampiran-berbahaya") - 1
    assert policy.in_set("internal", "a@dinas.example.go.id")
    # As written (all comments), it changes nothing.
    (tmp_path / "empty.yaml").write_text(text)
    plain = Policy.load([str(shipped.policy_path("se-79-2019"))], routes={"sanapati"})
    layered = Policy.load(
        [str(shipped.policy_path("se-79-2019")), str(tmp_path / "empty.yaml")], routes={"sanapati"}
    )
    assert [r.name for r in layered.rules] == [r.name for r in plain.rules]


def test_unknown_shipped_policy_is_named_with_its_place(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text('listen: ["127.0.0.1:2525"]\npolicy:\n  - shipped:se-80-2020\n')
    with pytest.raises(ConfigError) as err:
        load(config)
    message = str(err.value)
    assert f"{config}:3:" in message and "se-79-2019" in message
