"""Releases and deletes as people make them (``milter.app.release.review_release``):
two officers for SANGAT_RAHASIA, the policy checked again for another address, and
the CLI's ``quarantine release`` over the same rules, with a real SMTP next hop."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from milter.actions.rewrite import apply
from milter.app.outbound import Outbound
from milter.app.release import ReviewResult, review_delete, review_release
from milter.cli import main
from milter.config import ConfigError, GatewayConfig, load
from milter.quarantine.store import QuarantineRecord, QuarantineStore, open_store
from tests.conftest import Sink, free_port
from tests.quarantine.conftest import PG_SERVER, pg_available, pg_url

POLICY = """\
version: 1
domains:
  internal: [jakarta.go.id, "*.jakarta.go.id"]
classifications:
  BIASA: {aliases: [Biasa]}
  TERBATAS: {aliases: [Terbatas]}
  RAHASIA: {aliases: [Rahasia]}
  SANGAT_RAHASIA: {aliases: [Sangat Rahasia]}
rules:
  - name: rahasia-keluar
    clause: "2.c, 3.b"
    when: {classification: {at_least: RAHASIA}, recipient: {not_in: internal}}
    then: [quarantine]
  - name: sangat-rahasia-tahan
    clause: "2.c"
    when: {classification: {is: SANGAT_RAHASIA}}
    then: [quarantine]
"""


def message(level: str) -> bytes:
    return (
        f"From: Budi <budi@bpkd.jakarta.go.id>\r\nTo: teman@gmail.com\r\n"
        f"Subject: [{level}] Nota dinas anggaran\r\nMessage-ID: <n1@bpkd.jakarta.go.id>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Terlampir nota dinas.\r\n"
    ).encode()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield "sqlite:///var/q.sqlite3"
        return
    reason = pg_available()
    if reason:
        pytest.skip(reason)
    import secrets

    import psycopg

    schema = f"milter_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield pg_url(schema)
    finally:
        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def write_config(tmp_path: Path, port: int, database: str = "sqlite:///var/q.sqlite3") -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        f"""
hostname: gw.jakarta.go.id
upstream: {{url: "smtp://127.0.0.1:{port}", tls: none, timeout: 5s}}
policy: policy.yaml
quarantine: {{database: "{database}", spool: var/spool, retention: 30d}}
notices: {{from: postmaster@jakarta.go.id, officers: [kepatuhan@jakarta.go.id]}}
review: {{two_person: [SANGAT_RAHASIA]}}
""",
        encoding="utf-8",
    )
    return cfg


def hold(store: QuarantineStore, level: str, **kw: Any) -> str:
    data = message(level)
    base: dict[str, Any] = {
        "id": "",
        "received_at": time.time(),
        "client": "10.1.1.1",
        "sender": "budi@bpkd.jakarta.go.id",
        "recipients": ("teman@gmail.com",),
        "subject": f"[{level}] Nota dinas anggaran",
        "size": len(data),
        "classification": level,
        "rules": ("rahasia-keluar",),
        "clauses": ("2.c, 3.b",),
    }
    base.update(kw)
    return store.put(data, QuarantineRecord(**base))


class Officers:
    """The release and delete of the review UI, called as the UI calls them."""

    def __init__(self, config: GatewayConfig, store: QuarantineStore) -> None:
        self.config, self.store = config, store
        self.outbound = Outbound(apply, None)

    def release(self, qid: str, actor: str, to: tuple[str, ...] = ()) -> ReviewResult:
        return asyncio.run(
            review_release(
                self.config,
                self.store,
                self.outbound,
                qid,
                actor=actor,
                reason=f"checked by {actor}",
                to=to,
            )
        )


@pytest.fixture
def setup(
    tmp_path: Path, sink: Sink, database: str
) -> Iterator[tuple[Officers, QuarantineStore, Sink, Path]]:
    cfg = write_config(tmp_path, sink.port, database)
    config = load(cfg)
    with open_store(config.quarantine) as store:
        yield Officers(config, store), store, sink, cfg


def test_two_person_release_delivers_once(
    setup: tuple[Officers, QuarantineStore, Sink, Path],
) -> None:
    officers, store, sink, _ = setup
    qid = hold(store, "SANGAT_RAHASIA", recipients=("kepala@sanapati.net", "wakil@sanapati.net"))

    first = officers.release(qid, "siti")
    assert first.status == "pending" and "second" in first.message
    assert store.get(qid).status == "pending"  # type: ignore[union-attr]
    assert sink.messages == []

    again = officers.release(qid, "siti")
    assert again.status == "refused"
    assert "second, different officer" in again.message
    assert sink.messages == []

    second = officers.release(qid, "budi")
    assert second.status == "released"
    assert second.delivered == ("kepala@sanapati.net", "wakil@sanapati.net")
    assert store.get(qid).status == "released"  # type: ignore[union-attr]
    assert officers.release(qid, "ani").status == "refused"
    assert len(sink.messages) == 1
    got = sink.messages[0]
    assert got.mail_from == "budi@bpkd.jakarta.go.id"
    assert got.rcpt_tos == ["kepala@sanapati.net", "wakil@sanapati.net"]
    assert got.data.replace(b"\r\n", b"\n").endswith(
        message("SANGAT_RAHASIA").replace(b"\r\n", b"\n")
    )
    trail = [(e.action, e.actor) for e in store.audit_for(qid)]
    assert trail == [("quarantine", "gateway"), ("approve", "siti"), ("release", "budi")]
    assert "approved by siti" in store.audit_for(qid)[-1].reason
    assert store.verify_audit() == []


def test_one_officer_suffices_below_two_person(
    setup: tuple[Officers, QuarantineStore, Sink, Path],
) -> None:
    officers, store, sink, _ = setup
    qid = hold(store, "RAHASIA")
    done = officers.release(qid, "siti")
    assert done.status == "released" and done.delivered == ("teman@gmail.com",)
    assert [m.rcpt_tos for m in sink.messages] == [["teman@gmail.com"]]


def test_pending_release_that_fails_goes_back_to_held(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, free_port())  # nothing listens there
    config = load(cfg)
    with open_store(config.quarantine) as store:
        officers = Officers(config, store)
        qid = hold(store, "SANGAT_RAHASIA")
        assert officers.release(qid, "siti").status == "pending"
        failed = officers.release(qid, "budi")
        assert failed.status == "refused" and "still held" in failed.message
        assert store.get(qid).status == "held"  # type: ignore[union-attr]
        assert [e.action for e in store.audit_for(qid)][-2:] == ["release", "release-failed"]
        assert store.verify_audit() == []


def test_release_to_other_address_checks_the_policy(
    setup: tuple[Officers, QuarantineStore, Sink, Path],
) -> None:
    officers, store, sink, _ = setup
    qid = hold(store, "RAHASIA")

    outside = officers.release(qid, "siti", ("kawan@protonmail.com",))
    assert outside.status == "refused"
    assert "kawan@protonmail.com" in outside.message and "rahasia-keluar" in outside.message
    assert sink.messages == []
    assert store.audit_for(qid)[-1].action == "release-refused"

    inside = officers.release(qid, "siti", ("kepala@bpkd.jakarta.go.id",))
    assert inside.status == "released", inside.message
    assert inside.delivered == ("kepala@bpkd.jakarta.go.id",)
    assert [m.rcpt_tos for m in sink.messages] == [["kepala@bpkd.jakarta.go.id"]]
    record = store.get(qid)
    assert record is not None
    assert record.status == "held" and record.recipients == ("teman@gmail.com",)
    last = store.audit_for(qid)[-1]
    assert last.action == "release-to" and "kepala@bpkd.jakarta.go.id" in last.reason

    # Mixed: one address the policy holds refuses the whole request.
    mixed = officers.release(qid, "siti", ("a@bpkd.jakarta.go.id", "b@gmail.com"))
    assert mixed.status == "refused" and len(sink.messages) == 1

    # The hold itself is still there for its own recipients.
    assert officers.release(qid, "budi").status == "released"
    assert [m.rcpt_tos for m in sink.messages][-1] == ["teman@gmail.com"]
    assert store.verify_audit() == []


def test_two_person_hold_is_not_released_to_another_address(
    setup: tuple[Officers, QuarantineStore, Sink, Path],
) -> None:
    officers, store, sink, _ = setup
    qid = hold(store, "SANGAT_RAHASIA")
    result = officers.release(qid, "siti", ("kepala@bpkd.jakarta.go.id",))
    assert result.status == "refused" and "two officers" in result.message
    assert sink.messages == [] and store.get(qid).status == "held"  # type: ignore[union-attr]


def test_review_delete(setup: tuple[Officers, QuarantineStore, Sink, Path]) -> None:
    officers, store, _, _ = setup
    held = hold(store, "RAHASIA")
    pending = hold(store, "SANGAT_RAHASIA")
    assert officers.release(pending, "siti").status == "pending"
    assert review_delete(store, held, "siti", "").status == "refused"
    assert review_delete(store, held, "", "spam").status == "refused"
    assert review_delete(store, held, "siti", "spam") == ReviewResult("deleted", f"{held} deleted")
    assert review_delete(store, pending, "budi", "not needed").status == "deleted"
    assert review_delete(store, held, "siti", "again").status == "refused"
    assert review_delete(store, "NOSUCH", "siti", "x").status == "refused"
    assert officers.release(pending, "ani").status == "refused"
    assert [(e.action, e.actor) for e in store.audit_for(pending)][-1] == ("delete", "budi")
    assert store.verify_audit() == []


# -- the same through the command line ------------------------------------------------


def cli(cfg: Path, *argv: str, sudo: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_USER", "MILTER_CONFIG")}
    if sudo is not None:
        env["SUDO_USER"] = sudo
    return subprocess.run(
        [sys.executable, "-m", "milter", "-c", str(cfg), "quarantine", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(os.getuid() != 0, reason="two OS identities need sudo's SUDO_USER (root)")
def test_two_person_release_from_the_cli(tmp_path: Path, sink: Sink) -> None:
    cfg = write_config(tmp_path, sink.port)
    first, second = pwd.getpwnam("nobody").pw_name, pwd.getpwnam("daemon").pw_name
    with open_store(load(cfg).quarantine) as store:
        qid = hold(store, "SANGAT_RAHASIA")
    out = cli(cfg, "release", qid, "--reason", "approved by the head", sudo=first)
    assert out.returncode == 0 and "second" in out.stdout, out.stderr
    again = cli(cfg, "release", qid, "--reason", "me again", sudo=first)
    assert again.returncode == 1 and "different officer" in again.stderr
    assert sink.messages == []
    done = cli(cfg, "release", qid, "--reason", "agreed", sudo=second)
    assert done.returncode == 0, done.stderr
    assert len(sink.messages) == 1
    with open_store(load(cfg).quarantine) as store:
        trail = [(e.action, e.actor) for e in store.audit_for(qid)]
        assert trail == [("quarantine", "gateway"), ("approve", first), ("release", second)]
        assert store.verify_audit() == []
    listed = cli(cfg, "list", "--status", "released", "--json")
    assert qid in listed.stdout


def test_release_to_from_the_cli(
    tmp_path: Path, sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, sink.port)
    with open_store(load(cfg).quarantine) as store:
        qid = hold(store, "RAHASIA")
    argv = ["-c", str(cfg), "quarantine", "release", qid, "--reason", "r", "--to"]
    assert main([*argv, "kawan@protonmail.com"]) == 1
    assert "rahasia-keluar" in capsys.readouterr().err
    assert main([*argv, "sekdis@dinas.jakarta.go.id"]) == 0
    assert "still held" in capsys.readouterr().out
    assert [m.rcpt_tos for m in sink.messages] == [["sekdis@dinas.jakarta.go.id"]]
    with open_store(load(cfg).quarantine) as store:
        assert store.get(qid).status == "held"  # type: ignore[union-attr]


# -- the review: section of the configuration ---------------------------------------


def test_review_config_defaults_and_values(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, 25)
    review = load(cfg).review
    assert review.listen == ("127.0.0.1", 8025) and review.base_path == "/"
    assert review.session_lifetime == 8 * 3600 and review.two_person == ("SANGAT_RAHASIA",)
    assert (review.login_throttle.attempts, review.login_throttle.window) == (5, 900)
    text = cfg.read_text(encoding="utf-8").replace(
        "review: {two_person: [SANGAT_RAHASIA]}",
        "review:\n  listen: 0.0.0.0:9000\n  base_path: /karantina/\n"
        "  session_lifetime: 30m\n  two_person: [SANGAT_RAHASIA, RAHASIA]\n"
        "  login_throttle: {attempts: 3, window: 10m, lockout: 1h}\n",
    )
    cfg.write_text(text, encoding="utf-8")
    review = load(cfg).review
    assert review.listen == ("0.0.0.0", 9000) and review.base_path == "/karantina"
    assert review.session_lifetime == 1800 and review.two_person == ("SANGAT_RAHASIA", "RAHASIA")
    assert (
        review.login_throttle.attempts,
        review.login_throttle.window,
        review.login_throttle.lockout,
    ) == (3, 600, 3600)


@pytest.mark.parametrize(
    ("block", "words"),
    [
        ("review: {session_lifetime: soon}", "review.session_lifetime"),
        ("review: {base_path: karantina}", "review.base_path"),
        ("review: {login_throttle: {attempts: 0}}", "review.login_throttle.attempts"),
        ("review: {tls: {cert: x.pem}}", "review.tls"),
        ("review: {colour: blue}", "review.colour"),
    ],
)
def test_review_config_errors_are_located(tmp_path: Path, block: str, words: str) -> None:
    cfg = write_config(tmp_path, 25)
    text = cfg.read_text(encoding="utf-8").replace("review: {two_person: [SANGAT_RAHASIA]}", block)
    cfg.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(cfg)
    assert re.match(rf"^{re.escape(str(cfg))}:\d+:\d+: {re.escape(words)}[.:]", str(info.value))
