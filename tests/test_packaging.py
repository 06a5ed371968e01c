"""The wheel and the Debian package: what they carry, that they work without the
repository checkout, and that the package installs and purges cleanly.

The install test changes the machine (a system user, /opt/milter, /etc/milter), so it
runs only where it can undo every change: as root, with dpkg, on a machine where none
of those exist yet; it purges the package and removes the user it created even when an
assertion fails, and holds a lock so two test sessions never install at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

from milter import shipped
from tests.conftest import ROOT

PIP = str(Path(sys.executable).with_name("pip"))
SHIPPED_FILES = ("se-79-2019.yaml", "gateway.yaml.in", "local-policy.yaml")
DEBIAN_PYTHON = Path("/usr/bin/python3.11")
UNIT_NAMES = sorted(p.name for p in (ROOT / "systemd").glob("milter*"))
PACKAGE_PATHS = (
    "/opt/milter",
    "/etc/milter",
    "/var/lib/milter",
    "/usr/bin/milter",
    "/lib/systemd/system/milter.service",
    "/etc/systemd/system/timers.target.wants/milter-expire.timer",
)
INSTALL_LOCK = "/tmp/milter-package-install-test.lock"


def sh(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=600, check=False, **kw
    )  # type: ignore[call-overload, no-any-return]


# -- the wheel ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # From a copy: setuptools' build/ directory in the checkout may hold stale modules.
    src = out / "src"
    shutil.copytree(
        ROOT,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "var", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    proc = sh(PIP, "wheel", "-q", "--no-deps", "-w", str(out), str(src))
    assert proc.returncode == 0, proc.stderr
    [built] = out.glob("milter-*.whl")
    return built


def test_wheel_carries_the_policy_and_the_templates(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        for name in SHIPPED_FILES:
            assert f"milter/shipped/{name}" in names
        policy = whl.read("milter/shipped/se-79-2019.yaml")
    assert policy == (ROOT / "policies" / "se-79-2019.yaml").read_bytes()


def test_wheel_dependencies_are_light(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        [meta_name] = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(whl.read(meta_name).decode())
    requires = meta.get_all("Requires-Dist") or []
    plain = [r for r in requires if "extra ==" not in r]
    assert not [r for r in plain if re.match(r"(pypdf|psycopg)\b", r, re.I)], plain
    assert any(r.startswith("psycopg") and 'extra == "postgres"' in r for r in requires)
    assert any(r.startswith("psycopg") and 'extra == "test"' in r for r in requires)
    assert "postgres" in (meta.get_all("Provides-Extra") or [])


def test_pypdf_is_not_used() -> None:
    pattern = re.compile(r"^\s*(import pypdf\b|from pypdf\b)", re.M)
    users = [
        str(p)
        for tree in ("milter", "tests", "bench")
        for p in (ROOT / tree).rglob("*.py")
        if pattern.search(p.read_text())
    ]
    assert users == []


def test_the_repository_path_is_the_shipped_file() -> None:
    """Docs and tests name policies/se-79-2019.yaml: a link to the packaged file, so
    there is one policy and it cannot drift from what the wheel carries."""
    link = ROOT / "policies" / "se-79-2019.yaml"
    assert link.is_symlink()
    assert link.resolve() == shipped.policy_path("se-79-2019").resolve()


def test_postgres_without_its_extra_is_one_clear_line(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        'listen: ["127.0.0.1:2525"]\n'
        "routes: {sanapati: smtp://127.0.0.1:10026}\n"
        "policy: shipped:se-79-2019\n"
        'quarantine: {database: "postgresql://db.example/milter"}\n'
    )
    # psycopg made unimportable, as in an installation without milter[postgres].
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from milter.cli import main\n"
        f"sys.exit(main(['-c', {str(config)!r}, 'config', 'check']))\n"
    )
    proc = sh(sys.executable, "-c", code)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "pip install 'milter[postgres]'" in proc.stderr


# -- the Debian package ------------------------------------------------------------------

needs_deb_tools = pytest.mark.skipif(
    shutil.which("dpkg-deb") is None or not DEBIAN_PYTHON.exists(),
    reason="needs dpkg-deb and Debian's python3.11",
)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("dpkg-deb") is None or not DEBIAN_PYTHON.exists():
        pytest.skip("needs dpkg-deb and Debian's python3.11")
    out = tmp_path_factory.mktemp("deb")
    proc = sh(str(ROOT / "packaging" / "build-deb.sh"), str(out), env={**os.environ, "PIP": PIP})
    assert proc.returncode == 0, proc.stderr
    [built] = out.glob("milter_*.deb")
    return built


@pytest.fixture(scope="module")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unpacked")
    proc = sh("dpkg-deb", "-x", str(deb), str(root))
    assert proc.returncode == 0, proc.stderr
    return root


def control(deb: Path) -> dict[str, str]:
    proc = sh("dpkg-deb", "-f", str(deb))
    assert proc.returncode == 0, proc.stderr
    return {k: v.strip() for k, v in re.findall(r"(?m)^(\S+):(.*)$", proc.stdout)}


@needs_deb_tools
def test_deb_metadata(deb: Path) -> None:
    fields = control(deb)
    assert fields["Package"] == "milter"
    assert fields["Version"].startswith("0.1.0-")
    depends = {d.strip() for d in fields["Depends"].split(",")}
    ocr = {"tesseract-ocr-ind", "tesseract-ocr-eng"}  # OCR of scanned letters
    assert {"python3.11", "libmagic1", "openssl", *ocr} <= depends
    scripts = sh("dpkg-deb", "-I", str(deb)).stdout
    for script in ("postinst", "prerm", "postrm"):
        assert re.search(rf"\b{script}\s+#!/bin/sh", scripts), scripts


@needs_deb_tools
def test_deb_contents(deb: Path) -> None:
    listing = sh("dpkg-deb", "-c", str(deb)).stdout.splitlines()
    entries = {line.split()[5].removeprefix("."): line for line in listing}
    for unit in UNIT_NAMES:
        assert f"/lib/systemd/system/{unit}" in entries
    for path in (
        "/usr/lib/sysusers.d/milter.conf",
        "/usr/lib/tmpfiles.d/milter.conf",
        "/opt/milter/bin/milter",
        "/opt/milter/pyvenv.cfg",
        "/usr/share/doc/milter/copyright",
    ):
        assert path in entries, path
    assert "-> /opt/milter/bin/milter" in entries["/usr/bin/milter"]
    site = "/opt/milter/lib/python3.11/site-packages"
    for name in SHIPPED_FILES:
        assert f"{site}/milter/shipped/{name}" in entries
    assert f"{site}/psycopg/__init__.py" in entries  # multi-node sites need no pip
    assert not [e for e in entries if e.startswith(f"{site}/pypdf/")]
    assert not [e for e in entries if "/bin/pip" in e or "/bin/activate" in e]
    # Nothing the package installs belongs to the builder, or under /etc (no conffiles:
    # /etc/milter is the administrator's, written by `milter init`).
    assert all(line.split()[1] == "root/root" for line in listing)
    assert not [e for e in entries if e.startswith("/etc/")]


@needs_deb_tools
def test_deb_names_no_build_path(deb: Path, unpacked: Path) -> None:
    proc = sh("grep", "-rlI", str(deb.parent), str(unpacked))
    assert proc.stdout == ""
    shebang = (unpacked / "opt/milter/bin/milter").read_text().splitlines()[0]
    assert shebang == "#!/opt/milter/bin/python"
    assert os.readlink(unpacked / "opt/milter/bin/python3.11") == str(DEBIAN_PYTHON)


@needs_deb_tools
def test_deb_units_and_system_files_are_the_repositorys(unpacked: Path) -> None:
    for unit in UNIT_NAMES:
        packaged = (unpacked / "lib/systemd/system" / unit).read_bytes()
        assert packaged == (ROOT / "systemd" / unit).read_bytes()
    assert (unpacked / "usr/lib/sysusers.d/milter.conf").read_bytes() == (
        ROOT / "packaging" / "milter.sysusers"
    ).read_bytes()


@needs_deb_tools
def test_packaged_environment_works_without_the_checkout(unpacked: Path, tmp_path: Path) -> None:
    """Debian's python3.11 in the packaged environment (run from where it was unpacked:
    a venv finds itself from its own path), from /, with the repository nowhere on
    its path: `milter init` writes from package data, and what it wrote is valid."""
    python = str(unpacked / "opt/milter/bin/python")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    where = sh(python, "-I", "-c", "import milter; print(milter.__file__)", env=env, cwd="/")
    assert where.stdout.startswith(str(unpacked / "opt/milter/lib/python3.11/site-packages/"))
    etc = tmp_path / "etc"
    made = sh(
        python,
        "-I",
        "-m",
        "milter",
        "init",
        "--dir",
        str(etc),
        "--state-dir",
        str(tmp_path / "var"),
        "--dkim",
        "jakarta.go.id:gw1",
        env=env,
        cwd="/",
    )
    assert made.returncode == 0, made.stderr
    check = sh(
        python,
        "-I",
        "-m",
        "milter",
        "-c",
        str(etc / "gateway.yaml"),
        "config",
        "check",
        env=env,
        cwd="/",
    )
    assert check.returncode == 0, check.stderr


# -- install and purge on this machine ---------------------------------------------------


def _exists(path: str) -> bool:
    return os.path.lexists(path)


def _installed() -> bool:
    return sh("dpkg-query", "-W", "-f=${Status}", "milter").stdout.startswith("install ok")


@contextlib.contextmanager
def _exclusive() -> Iterator[None]:
    with open(INSTALL_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _user_exists() -> bool:
    try:
        pwd.getpwnam("milter")
    except KeyError:
        return False
    return True


@needs_deb_tools
def test_install_and_purge(deb: Path) -> None:
    if os.geteuid() != 0 or shutil.which("dpkg") is None:
        pytest.skip("installing needs root and dpkg")
    with _exclusive():
        if _installed() or any(_exists(p) for p in PACKAGE_PATHS):
            pytest.skip("milter is installed or was on this machine: not touching it")
        user_was_there = _user_exists()
        try:
            _install_purge(deb)
        finally:
            if _installed() or sh("dpkg-query", "-W", "milter").returncode == 0:
                sh("dpkg", "--purge", "milter")
            for path in ("/opt/milter", "/etc/milter", "/var/lib/milter"):
                shutil.rmtree(path, ignore_errors=True)
            if not user_was_there and _user_exists():
                sh("userdel", "milter")
                with contextlib.suppress(KeyError):
                    grp.getgrnam("milter")
                    sh("groupdel", "milter")


def _install_purge(deb: Path) -> None:
    proc = sh("dpkg", "-i", str(deb))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    user = pwd.getpwnam("milter")
    assert user.pw_dir == "/var/lib/milter"
    assert user.pw_shell in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
    group = grp.getgrnam("milter").gr_gid

    def owner(path: str) -> tuple[int, int, int]:
        st = os.stat(path)
        return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid

    assert owner("/etc/milter") == (0o750, 0, group)
    assert owner("/etc/milter/gateway.yaml") == (0o640, 0, group)
    assert owner("/var/lib/milter") == (0o750, user.pw_uid, group)
    assert os.path.islink("/etc/systemd/system/timers.target.wants/milter-expire.timer")

    version = sh("/usr/bin/milter", "--version")
    assert version.returncode == 0 and version.stdout.startswith("milter ")
    # As the service runs it: the service user reads /etc/milter, writes /var/lib/milter.
    check = sh(
        shutil.which("runuser") or "/usr/sbin/runuser",
        "-u",
        "milter",
        "--",
        "/usr/bin/milter",
        "config",
        "check",
        env={"PATH": "/usr/bin:/bin", "MILTER_CONFIG": "/etc/milter/gateway.yaml"},
        cwd="/",
    )
    assert check.returncode == 0, check.stderr
    assert os.stat("/var/lib/milter/quarantine.sqlite3").st_uid == user.pw_uid

    analyze = shutil.which("systemd-analyze")
    if analyze is not None:
        units = [f"/lib/systemd/system/{u}" for u in UNIT_NAMES]
        verify = sh(analyze, "verify", "--no-pager", *units)
        assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr

    # Installing again (a reinstall or an upgrade) keeps the administrator's files.
    (Path("/etc/milter/local-policy.yaml")).write_text("version: 1  # site rules\n")
    again = sh("dpkg", "-i", str(deb))
    assert again.returncode == 0, again.stdout + again.stderr
    assert Path("/etc/milter/local-policy.yaml").read_text() == "version: 1  # site rules\n"

    purge = sh("dpkg", "--purge", "milter")
    assert purge.returncode == 0, purge.stdout + purge.stderr
    assert not _installed()
    left = [p for p in PACKAGE_PATHS if _exists(p)]
    assert left == [], left
    assert not [u for u in UNIT_NAMES if _exists(f"/lib/systemd/system/{u}")]
