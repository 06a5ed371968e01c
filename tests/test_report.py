"""The agency figures of clause 3.b (``milter.app.report``) and ``milter report --weekly``,
whose ``--send`` mails each head of agency and the officers through a real next hop."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from milter.app.report import ALL, agency_weeks, last_complete_week, week_start
from milter.config import load
from milter.quarantine.store import (
    DELETED,
    RELEASED,
    QuarantineRecord,
    QuarantineStore,
    open_store,
)
from milter.quarantine.users import users_of
from tests.conftest import Sink

WIB = ZoneInfo("Asia/Jakarta")
# A Monday 00:00 WIB, and the week after it.
MONDAY = dt.datetime(2026, 11, 16, tzinfo=WIB).timestamp()
NEXT = dt.datetime(2026, 11, 23, tzinfo=WIB).timestamp()
HOUR = 3600.0


def put(store: QuarantineStore, at: float, sender: str, **kw: Any) -> str:
    base: dict[str, Any] = {
        "id": "",
        "received_at": at,
        "client": "10.0.0.1",
        "sender": sender,
        "recipients": ("teman@gmail.com",),
        "subject": "x",
        "size": 10,
        "classification": "RAHASIA",
        "rules": ("rahasia-keluar",),
        "clauses": ("2.c, 3.b",),
    }
    base.update(kw)
    return store.put(b"Subject: x\r\n\r\nx\r\n", QuarantineRecord(**base))


def config(tmp_path: Path, port: int = 1) -> Path:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        f"""
hostname: gw.jakarta.go.id
upstream: {{url: "smtp://127.0.0.1:{port}", tls: none, timeout: 5s}}
quarantine: {{database: "sqlite:///var/q.sqlite3", spool: var/spool}}
notices: {{from: postmaster@jakarta.go.id, officers: [kepatuhan@jakarta.go.id]}}
""",
        encoding="utf-8",
    )
    return cfg


def seed(store: QuarantineStore) -> None:
    bpkd, pajak = "budi@bpkd.jakarta.go.id", "ani@pajak.bpkd.jakarta.go.id"
    bapenda = "sari@bapenda.jakarta.go.id"
    # The week of MONDAY: three holds of bpkd (one from a subdomain), one of bapenda.
    a = put(store, MONDAY + 1 * HOUR, bpkd, recipients=("x@gmail.com", "y@gmail.com"))
    b = put(
        store,
        MONDAY + 30 * HOUR,
        pajak,
        rules=("data-pribadi-massal",),
        clauses=("2.c",),
        recipients=("z@yahoo.co.id",),
    )
    put(store, NEXT - 1, bpkd, recipients=("w@gmail.com",))  # Sunday 23:59:59 WIB
    put(store, MONDAY + 2 * HOUR, bapenda, rules=("tak-terperiksa-keluar",), clauses=())
    store.transition(a, RELEASED, "siti", "ok")
    store.transition(b, DELETED, "siti", "spam")
    # The week after: one bpkd hold.
    put(store, NEXT + 1, bpkd)
    # And before MONDAY: not in range.
    put(store, MONDAY - 1, bpkd)
    store.record_rejection(
        at=MONDAY + 5 * HOUR,
        queue_id="Q1",
        sender=bpkd,
        recipients=["p@proton.me"],
        rules=["lampiran-berbahaya"],
        clauses=["3.b"],
    )


def test_weeks_in_local_time() -> None:
    assert week_start(MONDAY) == MONDAY
    assert week_start(NEXT - 1) == MONDAY
    assert week_start(MONDAY + 3.5 * 86400) == MONDAY
    # Sunday 20:00 UTC is already Monday in Jakarta.
    sunday_utc = dt.datetime(2026, 11, 22, 20, 0, tzinfo=dt.UTC).timestamp()
    assert week_start(sunday_utc) == NEXT
    assert last_complete_week(NEXT + 2 * 86400) == (MONDAY, NEXT)
    assert last_complete_week(NEXT) == (MONDAY, NEXT)


def test_agency_weeks(tmp_path: Path) -> None:
    with open_store(load(config(tmp_path)).quarantine) as store:
        seed(store)
        rows = agency_weeks(store, ["bpkd.jakarta.go.id"], MONDAY, NEXT + 1)
        assert [(r.agency, r.week_start) for r in rows] == [
            ("bpkd.jakarta.go.id", MONDAY),
            ("bpkd.jakarta.go.id", NEXT),
        ]
        week, after = rows
        assert (week.held, week.released, week.deleted, week.rejected) == (3, 1, 1, 1)
        assert week.top_rules == [
            ("rahasia-keluar", 2),
            ("data-pribadi-massal", 1),
            ("lampiran-berbahaya", 1),
        ]
        assert week.top_clauses == [("2.c", 3), ("3.b", 3)]
        assert week.top_destinations == [
            ("gmail.com", 2),
            ("proton.me", 1),
            ("yahoo.co.id", 1),
        ]
        assert (after.held, after.released, after.rejected) == (1, 0, 0)

        # Officers: every head's agency, and all senders together.
        users = users_of(store)
        users.add("kepala.bpkd", "head", "kata-sandi-panjang", ["bpkd.jakarta.go.id"])
        users.add("kepala.bapenda", "head", "kata-sandi-panjang", ["bapenda.jakarta.go.id"])
        every = agency_weeks(store, None, MONDAY, NEXT)
        assert [(r.agency, r.held, r.rejected) for r in every] == [
            ("bapenda.jakarta.go.id", 1, 0),
            ("bpkd.jakarta.go.id", 3, 1),
            (ALL, 4, 1),
        ]
        # A week with nothing still shows, with zeros.
        empty = agency_weeks(store, ["dishub.jakarta.go.id"], MONDAY, NEXT)
        assert [(r.held, r.top_rules) for r in empty] == [(0, [])]


def run(cfg: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MILTER_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "milter", "-c", str(cfg), "report", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_weekly_report_json_and_send(tmp_path: Path, sink: Sink) -> None:
    cfg = config(tmp_path, sink.port)
    start, end = last_complete_week(dt.datetime.now(WIB).timestamp())
    with open_store(load(cfg).quarantine) as store:
        users = users_of(store)
        users.add(
            "kepala.bpkd",
            "head",
            "kata-sandi-panjang",
            ["bpkd.jakarta.go.id"],
            email="kepala@bpkd.jakarta.go.id",
        )
        users.add("siti", "officer", "kata-sandi-panjang")
        put(
            store,
            start + 10 * HOUR,
            "budi@bpkd.jakarta.go.id",
            # An envelope address written to reach a terminal or a mail body raw.
            recipients=("x@evil\x1b[31m.example",),
        )
        put(store, start + 11 * HOUR, "sari@bapenda.jakarta.go.id")
        put(store, end + HOUR, "budi@bpkd.jakarta.go.id")  # this week: not reported

    out = run(cfg, "--weekly", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["week_start"], report["week_end"]) == (start, end)
    figures = {a["agency"]: a["held"] for a in report["agencies"]}
    assert figures == {"bpkd.jakarta.go.id": 1, ALL: 2}

    text = run(cfg, "--weekly")
    assert text.returncode == 0 and "\x1b" not in text.stdout
    assert "bpkd.jakarta.go.id" in text.stdout and "held 1" in text.stdout

    sent = run(cfg, "--weekly", "--send")
    assert sent.returncode == 0, sent.stderr
    got = sink.wait_for(2)
    assert sorted(m.rcpt_tos[0] for m in got) == [
        "kepala@bpkd.jakarta.go.id",
        "kepatuhan@jakarta.go.id",
    ]
    for m in got:
        assert b"\x1b" not in m.data
        msg = email.message_from_bytes(m.data, policy=email.policy.default)
        body = msg.get_content()  # type: ignore[attr-defined]
        assert "Laporan mingguan" in str(msg["Subject"])
        assert body.index("[Bahasa Indonesia]") < body.index("[English]")
        assert "\x1b" not in body
        if m.rcpt_tos == ["kepala@bpkd.jakarta.go.id"]:
            assert "bpkd.jakarta.go.id" in body and "bapenda" not in body
            assert "Ditahan:   1" in body and "evil" in body
        else:
            assert "Semua pengirim" in body and "Ditahan:   2" in body
    with open_store(load(cfg).quarantine) as store:
        digests = [n for n in store.outbox() if n.kind == "weekly-report"]
        assert [n.status for n in digests] == ["sent", "sent"]


@pytest.mark.parametrize("argv", [[], ["--send"]])
def test_report_needs_weekly(tmp_path: Path, argv: list[str]) -> None:
    out = run(config(tmp_path), *argv)
    assert out.returncode == 1 and "--weekly" in out.stderr
