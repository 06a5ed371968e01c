"""``milter quarantine ...`` through ``milter.cli.main``, with a real SMTP next hop.

The next hop is an aiosmtpd server on a loopback port that records what it was
given, so a release is checked by what actually arrived, and how many times.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from milter.cli import main
from milter.commands.quarantine import os_actor
from milter.config import load
from milter.quarantine.store import QuarantineRecord, QuarantineStore, open_store

MESSAGE = (
    b"Received: from dinas.jakarta.go.id by gw.jakarta.go.id; Mon, 2 Nov 2026 09:00:00 +0700\r\n"
    b"From: Budi <budi@dinas.jakarta.go.id>\r\nTo: teman@gmail.com\r\n"
    b"Subject: Nota RAHASIA\r\nMessage-ID: <n1@dinas.jakarta.go.id>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
    b"--B\r\nContent-Type: text/plain\r\n\r\nTerlampir.\r\n"
    b'--B\r\nContent-Type: application/pdf; name="nota.pdf"\r\n'
    b'Content-Disposition: attachment; filename="nota.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--B--\r\n"
)


@dataclass
class Sink:
    """What the next hop received: (mail_from, rcpt_tos, data) per transaction."""

    port: int
    refuse: set[str] = field(default_factory=set)
    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(
            (
                envelope.mail_from,
                list(envelope.rcpt_tos),
                bytes(envelope.original_content or envelope.content),
            )
        )
        return "250 2.0.0 queued"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink(free_port())
    controller = Controller(s, hostname="127.0.0.1", port=s.port)
    controller.start()
    yield s
    controller.stop()


def write_config(tmp_path: Path, upstream_port: int, route_port: int | None = None) -> Path:
    route_port = route_port or upstream_port
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        f"""
hostname: gw.jakarta.go.id
upstream: {{url: "smtp://127.0.0.1:{upstream_port}", tls: none, timeout: 5s}}
routes:
  sanapati: {{url: "smtp://127.0.0.1:{route_port}", tls: none, timeout: 5s}}
quarantine: {{database: "sqlite:///var/q.sqlite3", spool: var/spool, retention: 30d}}
notices: {{from: postmaster@jakarta.go.id, officers: [kepatuhan@jakarta.go.id]}}
""",
        encoding="utf-8",
    )
    return cfg


def store_for(cfg: Path) -> QuarantineStore:
    return open_store(load(cfg).quarantine)


def hold(cfg: Path, **kw: Any) -> str:
    base: dict[str, Any] = {
        "id": "",
        "received_at": time.time(),
        "client": "10.1.1.1",
        "sender": "budi@dinas.jakarta.go.id",
        "recipients": ("teman@gmail.com",),
        "subject": "Nota RAHASIA",
        "size": len(MESSAGE),
        "classification": "RAHASIA",
        "labels": ("Rahasia",),
        "rules": ("rahasia-keluar",),
        "clauses": ("2.c", "3.b"),
        "findings": {
            "rules": [
                {"name": "rahasia-keluar", "reasons": ["classification RAHASIA from subject"]}
            ]
        },
        "queue_id": "Q1",
    }
    base.update(kw)
    with store_for(cfg) as store:
        return store.put(MESSAGE, QuarantineRecord(**base))


def run(cfg: Path, *argv: str) -> int:
    return main(["-c", str(cfg), "quarantine", *argv])


def test_list_json_and_filters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, free_port())
    a = hold(cfg, received_at=time.time() - 3 * 86400)
    b = hold(cfg, sender="ani@bapenda.jakarta.go.id", rules=("nik-massal",))
    assert run(cfg, "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == [a, b]
    for key in (
        "id",
        "received_at",
        "sender",
        "recipients",
        "subject",
        "size",
        "rules",
        "classification",
        "status",
    ):
        assert key in rows[0]
    assert rows[0]["recipients"] == ["teman@gmail.com"] and rows[0]["status"] == "held"
    for argv, expected in (
        (["--rule", "nik-massal"], [b]),
        (["--sender", "@dinas.jakarta.go.id"], [a]),
        (["--since", "1d"], [b]),
        (["--since", "2000-01-01"], [a, b]),
        (["--status", "released"], []),
    ):
        assert run(cfg, "list", "--json", *argv) == 0
        assert [r["id"] for r in json.loads(capsys.readouterr().out)] == expected, argv
    assert run(cfg, "list") == 0
    table = capsys.readouterr().out
    assert a in table and b in table and "Nota RAHASIA" in table
    assert run(cfg, "list", "--since", "yesterday-ish") == 1
    assert "--since" in capsys.readouterr().err


def test_show_and_export(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    cfg = write_config(tmp_path, free_port())
    qid = hold(cfg)
    capsysbinary.readouterr()
    assert run(cfg, "show", qid) == 0
    out = capsysbinary.readouterr().out.decode()
    assert "budi@dinas.jakarta.go.id" in out and "teman@gmail.com" in out
    assert "rahasia-keluar" in out and "2.c, 3.b" in out
    assert "classification RAHASIA from subject" in out
    assert "Subject: Nota RAHASIA" in out
    assert 'application/pdf attachment "nota.pdf"' in out
    assert run(cfg, "export", qid, "--reason", "inquiry") == 0
    assert capsysbinary.readouterr().out == MESSAGE
    with store_for(cfg) as store:
        assert [(e.action, e.actor) for e in store.audit_entries()][-1] == ("export", os_actor())
    assert run(cfg, "show", "NOSUCH") == 1
    assert capsysbinary.readouterr().err.decode().strip() == "milter: no quarantined message NOSUCH"


def test_release_once(tmp_path: Path, sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, sink.port)
    qid = hold(cfg, recipients=("teman@gmail.com", "rekan@yahoo.co.id"))
    assert run(cfg, "release", qid, "--reason", "approved by head of agency") == 0
    assert qid in capsys.readouterr().out
    assert len(sink.received) == 1
    mail_from, rcpts, data = sink.received[0]
    assert mail_from == "budi@dinas.jakarta.go.id"
    assert rcpts == ["teman@gmail.com", "rekan@yahoo.co.id"]
    assert data.replace(b"\r\n", b"\n").endswith(MESSAGE.replace(b"\r\n", b"\n"))
    assert run(cfg, "release", qid, "--reason", "again") == 1
    assert "only a held message can be released" in capsys.readouterr().err
    assert len(sink.received) == 1
    with store_for(cfg) as store:
        assert store.get(qid).status == "released"  # type: ignore[union-attr]
        entries = [(e.action, e.actor, e.reason) for e in store.audit_entries() if e.qid == qid]
        assert entries[-1] == ("release", os_actor(), "approved by head of agency")
        assert store.verify_audit() == []


def test_release_through_its_route(tmp_path: Path, sink: Sink) -> None:
    cfg = write_config(tmp_path, free_port(), route_port=sink.port)
    qid = hold(cfg, route="sanapati", recipients=("kepala@sanapati.net",))
    assert run(cfg, "release", qid, "--reason", "via sanapati") == 0
    assert [r[1] for r in sink.received] == [["kepala@sanapati.net"]]


def test_release_to_other_address_needs_a_policy(
    tmp_path: Path, sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    # Another address is checked against the policy; with none configured, nothing goes.
    cfg = write_config(tmp_path, sink.port)
    qid = hold(cfg)
    assert run(cfg, "release", qid, "--reason", "x", "--to", "kepala@sanapati.net") == 1
    assert "no policy" in capsys.readouterr().err
    assert sink.received == []
    with store_for(cfg) as store:
        assert store.get(qid).status == "held"  # type: ignore[union-attr]


def test_failed_reinjection_stays_held(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sink: Sink
) -> None:
    dead = free_port()  # nothing listens here
    cfg = write_config(tmp_path, dead)
    qid = hold(cfg)
    assert run(cfg, "release", qid, "--reason", "try") == 1
    err = capsys.readouterr().err
    assert "still held" in err and err.count("\n") == 1
    with store_for(cfg) as store:
        assert store.get(qid).status == "held"  # type: ignore[union-attr]
        assert [e.action for e in store.audit_entries()][-2:] == ["release", "release-failed"]
        assert store.verify_audit() == []
    # the next hop is back: the release now goes through, once
    cfg = write_config(tmp_path, sink.port)
    assert run(cfg, "release", qid, "--reason", "retry") == 0
    assert len(sink.received) == 1


def test_refused_recipient_reported(
    tmp_path: Path, sink: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, sink.port)
    sink.refuse.add("hilang@gmail.com")
    qid = hold(cfg, recipients=("teman@gmail.com", "hilang@gmail.com"))
    assert run(cfg, "release", qid, "--reason", "ok") == 1
    err = capsys.readouterr().err
    assert "hilang@gmail.com" in err and "550" in err
    assert [r[1] for r in sink.received] == [["teman@gmail.com"]]
    with store_for(cfg) as store:
        assert store.get(qid).status == "released"  # type: ignore[union-attr]
        assert store.audit_entries()[-1].action == "release-refused"
    assert run(cfg, "release", qid, "--reason", "again") == 1  # never twice
    assert len(sink.received) == 1


def test_all_refused_stays_held(tmp_path: Path, sink: Sink) -> None:
    cfg = write_config(tmp_path, sink.port)
    sink.refuse.add("hilang@gmail.com")
    qid = hold(cfg, recipients=("hilang@gmail.com",))
    assert run(cfg, "release", qid, "--reason", "ok") == 1
    assert sink.received == []
    with store_for(cfg) as store:
        assert store.get(qid).status == "held"  # type: ignore[union-attr]


def test_delete_and_expire(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, free_port())
    gone = hold(cfg)
    old = hold(cfg, received_at=time.time() - 31 * 86400)
    young = hold(cfg)
    assert run(cfg, "delete", gone, "--reason", "spam") == 0
    assert run(cfg, "export", gone) == 1
    assert run(cfg, "delete", gone, "--reason", "again") == 1
    assert run(cfg, "release", gone, "--reason", "x") == 1
    capsys.readouterr()
    assert run(cfg, "expire") == 0
    out = capsys.readouterr().out
    assert "expired 1 message(s)" in out and old in out and young not in out
    with store_for(cfg) as store:
        assert store.get(old).status == "expired"  # type: ignore[union-attr]
        assert store.get(young).status == "held"  # type: ignore[union-attr]
    assert run(cfg, "list", "--json", "--status", "held") == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [young]


def test_audit_print_and_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, free_port())
    qid = hold(cfg)
    assert run(cfg, "delete", qid, "--reason", "duplicate") == 0
    capsys.readouterr()
    assert run(cfg, "audit") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert "quarantine" in lines[0] and os_actor() in lines[1] and "duplicate" in lines[1]
    assert run(cfg, "audit", "--json") == 0
    entries = json.loads(capsys.readouterr().out)
    assert entries[1]["prev_hash"] == entries[0]["hash"]
    assert run(cfg, "audit", "--verify") == 0
    assert "intact: 2 entries" in capsys.readouterr().err
    db = sqlite3.connect(tmp_path / "var" / "q.sqlite3")
    with db:
        db.execute("UPDATE audit SET actor = 'nobody' WHERE seq = 2")
    db.close()
    assert run(cfg, "audit", "--verify") == 1
    assert "TAMPERED: entry 2" in capsys.readouterr().err
