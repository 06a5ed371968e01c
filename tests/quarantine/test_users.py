"""Accounts of the review UI (``milter.quarantine.users``) on both back-ends, the
``milter user`` commands as a person runs them, and who the CLI's audit names."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from milter.quarantine.sql import SqlStore
from milter.quarantine.store import QuarantineRecord, QuarantineStore
from milter.quarantine.users import (
    ROLES,
    User,
    UserError,
    UserExists,
    Users,
    sender_in,
    users_of,
)
from tests.quarantine.conftest import Backend

PASSWORD = "kata-sandi-rahasia-1"

# Cheap hashing parameters keep the tests fast; the rehash test changes them.
FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)


def fast_users(store: QuarantineStore) -> Users:
    users = users_of(store)
    users._hasher = FAST
    return users


def test_add_get_list_roles(store: QuarantineStore) -> None:
    users = fast_users(store)
    head = users.add(
        "Kepala.BPKD", "head", PASSWORD, ["BPKD.jakarta.go.id", "@bapenda.jakarta.go.id"]
    )
    assert head.name == "kepala.bpkd"  # one account whatever the case typed
    assert head.agencies == ("bpkd.jakarta.go.id", "bapenda.jakarta.go.id")
    for role in ("officer", "auditor", "admin"):
        users.add(f"user.{role}", role, PASSWORD)
    assert users.get("KEPALA.bpkd") == head
    assert users.get("nobody") is None
    assert [u.name for u in users.list()] == [
        "kepala.bpkd",
        "user.admin",
        "user.auditor",
        "user.officer",
    ]
    assert {u.role for u in users.list()} == set(ROLES)
    with pytest.raises(UserExists):
        users.add("kepala.bpkd", "officer", PASSWORD)


REFUSED = [
    ("ani", "head", [], PASSWORD, "at least one"),
    ("ani", "officer", ["bpkd.jakarta.go.id"], PASSWORD, "only a head"),
    ("ani", "root", [], PASSWORD, "unknown role"),
    ("ani", "head", ["not a domain"], PASSWORD, "not a mail domain"),
    ("ani", "officer", [], "short", "at least"),
    ("ani", "officer", [], "two\nlines-password", "one line"),
    ("a b", "officer", [], PASSWORD, "not a valid account name"),
    ("", "officer", [], PASSWORD, "not a valid account name"),
]


@pytest.mark.parametrize("case", REFUSED)
def test_add_refuses(store: QuarantineStore, case: tuple[str, str, list[str], str, str]) -> None:
    name, role, agencies, password, words = case
    with pytest.raises(UserError, match=words):
        fast_users(store).add(name, role, password, agencies)
    assert fast_users(store).list() == []


def test_authenticate_disable_passwd(store: QuarantineStore) -> None:
    users = fast_users(store)
    users.add("siti", "officer", PASSWORD)
    user = users.authenticate("siti", PASSWORD)
    assert isinstance(user, User) and user.role == "officer"
    assert users.authenticate("Siti", PASSWORD) == user
    assert users.authenticate("siti", PASSWORD + "x") is None
    assert users.authenticate("budi", PASSWORD) is None
    users.set_password("siti", "sandi-baru-yang-panjang")
    assert users.authenticate("siti", PASSWORD) is None
    assert users.authenticate("siti", "sandi-baru-yang-panjang") == user
    users.disable("siti")
    got = users.get("siti")
    assert got is not None and got.disabled
    assert users.authenticate("siti", "sandi-baru-yang-panjang") is None
    with pytest.raises(UserError, match="no user"):
        users.disable("budi")
    with pytest.raises(UserError, match="no user"):
        users.set_password("budi", PASSWORD)


def test_hash_is_argon2id_and_rehashed_when_parameters_change(store: QuarantineStore) -> None:
    users = fast_users(store)
    users.add("siti", "officer", PASSWORD)

    def stored() -> str:
        assert isinstance(store, SqlStore)
        with store._reading() as db:
            row = db.execute("SELECT password_hash FROM review_users").fetchone()
        return str(row[0])

    before = stored()
    assert before.startswith("$argon2id$") and PASSWORD not in before
    stronger = PasswordHasher(time_cost=2, memory_cost=8 * 1024, parallelism=1)
    later = users_of(store)
    later._hasher = stronger
    assert later.authenticate("siti", PASSWORD) is not None
    after = stored()
    assert after != before and "t=2" in after
    assert not stronger.check_needs_rehash(after)
    assert later.authenticate("siti", PASSWORD) is not None


def test_unknown_name_costs_a_verification(store: QuarantineStore) -> None:
    """Timing must not tell which names exist: an unknown name verifies a hash too."""
    calls: list[str] = []

    class Counting(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> bool:
            calls.append("verify")
            return super().verify(hash, password)

    users = users_of(store)
    users._hasher = Counting(time_cost=1, memory_cost=8 * 1024, parallelism=1)
    users.add("siti", "officer", PASSWORD)
    users.disable("siti")
    assert users.authenticate("budi", PASSWORD) is None
    assert users.authenticate("siti", PASSWORD) is None  # disabled: same work, no login
    assert calls == ["verify", "verify"]


def test_login_failures_per_name_and_address(backend: Backend) -> None:
    one, other = backend.open(), backend.open()  # two nodes on one database
    now = time.time()
    a, b = users_of(one), users_of(other)
    for i in range(3):
        a.note_login_failure("siti", "10.0.0.1", now - 10 + i)
    b.note_login_failure("budi", "10.0.0.1", now)
    b.note_login_failure("siti", "10.0.0.2", now)
    b.note_login_failure("siti", "10.0.0.2", now - 3600)  # outside the window
    assert b.recent_failures("siti", "10.0.0.1", now - 900) == (4, 4)
    assert a.recent_failures("Siti", "10.0.0.9", now - 900) == (4, 0)
    assert a.recent_failures("ani", "10.0.0.2", now - 900) == (0, 1)
    assert a.recent_failures("siti", "10.0.0.2", now - 7200) == (5, 2)


@pytest.mark.parametrize(
    ("sender", "seen"),
    [
        ("budi@bpkd.jakarta.go.id", True),
        ("Budi@BPKD.Jakarta.go.id", True),
        ("budi@pajak.bpkd.jakarta.go.id", True),
        ("budi@xbpkd.jakarta.go.id", False),
        ("budi@bpkd.jakarta.go.id.evil.example", False),
        ("budi@jakarta.go.id", False),
        ("", False),
        ("bpkd.jakarta.go.id", False),
    ],
)
def test_head_sees_only_the_agency(sender: str, seen: bool) -> None:
    head = User("kepala", "head", ("bpkd.jakarta.go.id",), False, 0.0)
    assert head.sees_sender(sender) is seen
    assert sender_in(sender, ("bpkd.jakarta.go.id",)) is seen
    assert User("siti", "officer", (), False, 0.0).sees_sender(sender) is True
    for role in ("auditor", "admin"):
        assert User("x", role, (), False, 0.0).sees_sender(sender) is False


# -- the commands, as a person runs them ------------------------------------------------


def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        'quarantine: {database: "sqlite:///var/q.sqlite3", spool: var/spool}\n',
        encoding="utf-8",
    )
    return cfg


def milter(
    cfg: Path, *argv: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("SUDO_USER", "MILTER_CONFIG")}
    return subprocess.run(
        [sys.executable, "-m", "milter", "-c", str(cfg), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=60,
        check=False,
    )


def test_user_commands(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    out = milter(
        cfg,
        "user",
        "add",
        "kepala.bpkd",
        "--role",
        "head",
        "--agency",
        "bpkd.jakarta.go.id",
        "--email",
        "kepala@bpkd.jakarta.go.id",
        stdin=PASSWORD + "\nignored second line\n",
    )
    assert out.returncode == 0, out.stderr
    assert milter(cfg, "user", "add", "siti", "--role", "officer", stdin=PASSWORD).returncode == 0
    # head without agency, no password, an existing name, a password as an argument
    bad = milter(cfg, "user", "add", "ani", "--role", "head", stdin=PASSWORD + "\n")
    assert bad.returncode == 1 and "--agency" in bad.stderr
    assert milter(cfg, "user", "add", "ani", "--role", "officer").returncode == 1
    assert milter(cfg, "user", "add", "siti", "--role", "officer", stdin=PASSWORD).returncode == 1
    argv_pw = milter(cfg, "user", "add", "ani", "--role", "officer", "--password", PASSWORD)
    assert argv_pw.returncode == 2

    listed = milter(cfg, "user", "list", "--json")
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["role"], r["agencies"], r["disabled"]) for r in rows] == [
        ("kepala.bpkd", "head", ["bpkd.jakarta.go.id"], False),
        ("siti", "officer", [], False),
    ]
    assert rows[0]["email"] == "kepala@bpkd.jakarta.go.id"
    assert PASSWORD not in listed.stdout
    table = milter(cfg, "user", "list").stdout
    assert "kepala.bpkd" in table and "bpkd.jakarta.go.id" in table

    from milter.config import load
    from milter.quarantine.store import open_store

    with open_store(load(cfg).quarantine) as store:
        users = users_of(store)
        assert users.authenticate("kepala.bpkd", PASSWORD) is not None
        assert (
            milter(cfg, "user", "passwd", "kepala.bpkd", stdin="sandi-baru-panjang\n").returncode
            == 0
        )
        assert users.authenticate("kepala.bpkd", PASSWORD) is None
        assert users.authenticate("kepala.bpkd", "sandi-baru-panjang") is not None
        assert milter(cfg, "user", "passwd", "budi", stdin=PASSWORD).returncode == 1
        assert milter(cfg, "user", "disable", "siti").returncode == 0
        assert users.authenticate("siti", PASSWORD) is None
        actions = [(e.action, e.reason) for e in store.audit_entries()]
        assert actions == [
            ("user-add", "kepala.bpkd: head of bpkd.jakarta.go.id"),
            ("user-add", "siti: officer"),
            ("user-passwd", "kepala.bpkd"),
            ("user-disable", "siti"),
        ]
        assert store.verify_audit() == []


# -- who the CLI's audit names --------------------------------------------------------


def held(cfg: Path) -> str:
    from milter.config import load
    from milter.quarantine.store import open_store

    with open_store(load(cfg).quarantine) as store:
        return store.put(
            b"Subject: x\r\n\r\nx\r\n",
            QuarantineRecord(
                "", time.time(), "10.0.0.1", "budi@bpkd.jakarta.go.id", ("a@gmail.com",), "x", 20
            ),
        )


def last_actor(cfg: Path) -> tuple[str, str]:
    from milter.config import load
    from milter.quarantine.store import open_store

    with open_store(load(cfg).quarantine) as store:
        e = store.audit_entries()[-1]
        return e.action, e.actor


def test_actor_is_the_os_user_never_logname(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    me = pwd.getpwuid(os.getuid()).pw_name
    qid = held(cfg)
    out = milter(
        cfg, "quarantine", "export", qid, env={"LOGNAME": "kepala.bpkd", "USER": "kepala.bpkd"}
    )
    assert out.returncode == 0, out.stderr
    assert last_actor(cfg) == ("export", me)

    # Through sudo: the user who ran sudo, but only when the process really is root.
    other = pwd.getpwnam("nobody").pw_name
    out = milter(cfg, "quarantine", "show", qid, env={"SUDO_USER": other, "LOGNAME": "x"})
    assert out.returncode == 0, out.stderr
    assert last_actor(cfg) == ("view", other if os.getuid() == 0 else me)

    refused = milter(cfg, "quarantine", "delete", qid, "--reason", "r", "--actor", "kepala.bpkd")
    assert refused.returncode == 1 and "--actor" in refused.stderr
    assert last_actor(cfg) == ("view", other if os.getuid() == 0 else me)

    if os.getuid() == 0:
        ghost = milter(
            cfg,
            "quarantine",
            "delete",
            qid,
            "--reason",
            "r",
            env={"SUDO_USER": "no-such-user-here"},
        )
        assert ghost.returncode == 1 and "SUDO_USER" in ghost.stderr
    deleted = milter(cfg, "quarantine", "delete", qid, "--reason", "spam", env={"SUDO_USER": other})
    assert deleted.returncode == 0, deleted.stderr
    assert last_actor(cfg) == ("delete", other if os.getuid() == 0 else me)
