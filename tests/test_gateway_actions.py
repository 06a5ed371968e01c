"""The consequences of a verdict, end to end: quarantine and release, notices, DSN, DKIM."""

from __future__ import annotations

import email
import email.policy
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dkim
import pytest

from milter.commands.quarantine import os_actor
from tests.conftest import ROOT, Sink
from tests.test_gateway_policy import POLICY, message, transaction

OFFICER = "kepatuhan@jakarta.go.id"


def milter(gw: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "milter", "-c", str(gw.config_path), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def keygen(tmp_path: Path) -> tuple[Path, str]:
    """A signing key for jakarta.go.id (selector gw1) and its DNS TXT value, by the CLI."""
    keys = tmp_path / "dkim"
    r = subprocess.run([sys.executable, "-m", "milter", "dkim", "keygen", "--domain",
                        "jakarta.go.id", "--selector", "gw1", "--dir", str(keys)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    txt = "".join(re.findall(r'"([^"]*)"', r.stdout))   # the zone record's strings
    assert txt.startswith("v=DKIM1;")
    return next(keys.glob("*.pem")), txt


def notices(sink: Sink, count: int, timeout: float = 5.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in sink.messages if m.mail_from in ("", "<>")]
        if len(found) >= count:
            break
        time.sleep(0.05)
    time.sleep(0.2)   # and nothing more arrives
    return [m for m in sink.messages if m.mail_from in ("", "<>")]


@pytest.fixture
def gateway(sink: Sink, gateway_factory: Any, tmp_path: Path) -> Any:
    local = tmp_path / "local.yaml"
    local.write_text(
        "version: 1\nrules:\n  - name: tujuan-diblokir\n    clause: '3.a'\n"
        "    when: {recipient: {domain: [blocked.example]}}\n"
        "    then: [{reject: 'Tujuan diblokir / Destination blocked'}]\n")
    return gateway_factory(
        upstream=f"smtp://127.0.0.1:{sink.port}",
        routes={"sanapati": f"smtp://127.0.0.1:{sink.port}"},
        policy=[POLICY, str(local)],
        notices={"from": "postmaster@jakarta.go.id", "officers": [OFFICER]})


def test_hold_release_once_with_audit_trail(gateway: Any, sink: Sink) -> None:
    data = message("[RAHASIA] Nota dinas anggaran")
    code, _ = transaction(gateway.port, "budi@dinas.jakarta.go.id", ["sari@gmail.com"], data)
    assert code == 250
    [held] = json.loads(milter(gateway, "quarantine", "list", "--json").stdout)
    qid = held["id"]
    notices(sink, 2)
    before = [m for m in sink.messages if m.mail_from not in ("", "<>")]
    assert before == []

    r = milter(gateway, "quarantine", "release", qid, "--reason", "izin kepala dinas")
    assert r.returncode == 0, r.stderr
    released = [m for m in sink.wait_for(3) if m.mail_from not in ("", "<>")]
    assert [m.rcpt_tos for m in released] == [["sari@gmail.com"]]
    assert released[0].data.endswith(data)

    again = milter(gateway, "quarantine", "release", qid, "--reason", "lagi")
    assert again.returncode == 1
    assert len([m for m in sink.messages if m.mail_from not in ("", "<>")]) == 1

    verify = milter(gateway, "quarantine", "audit", "--verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    audit = milter(gateway, "quarantine", "audit")
    # The actor is the OS user who ran the command (milter.commands.quarantine.os_actor).
    assert os_actor() in audit.stdout and "izin kepala dinas" in audit.stdout


def test_quarantine_notices_in_both_languages(gateway: Any, sink: Sink) -> None:
    data = message("[RAHASIA] Nota dinas")
    code, text = transaction(gateway.port, "budi@dinas.jakarta.go.id", ["sari@gmail.com"], data)
    assert code == 250
    got = notices(sink, 2)
    by_rcpt = {m.rcpt_tos[0]: email.message_from_bytes(m.data, policy=email.policy.default)
               for m in got}
    assert set(by_rcpt) == {"budi@dinas.jakarta.go.id", OFFICER}
    qid = json.loads(milter(gateway, "quarantine", "list", "--json").stdout)[0]["id"]
    assert qid.encode() in text
    for msg in by_rcpt.values():
        assert msg["Auto-Submitted"] == "auto-generated"
        body = msg.get_body(("plain",)).get_content()
        assert qid in body
        assert "rahasia-terbatas-keluar" in body
    notice_body = by_rcpt["budi@dinas.jakarta.go.id"].get_body(("plain",)).get_content()
    assert "sanapati" in notice_body.lower()   # what to do instead
    # Bahasa Indonesia first, English second.
    assert 0 <= notice_body.find("ditahan") < notice_body.lower().find("held")


def test_no_notice_to_an_external_sender(gateway: Any, sink: Sink) -> None:
    data = message("[RAHASIA] Nota dinas", sender="palsu@example.com")
    code, _ = transaction(gateway.port, "palsu@example.com", ["sari@gmail.com"], data)
    assert code == 250
    got = notices(sink, 1)
    assert [m.rcpt_tos for m in got] == [[OFFICER]]


def test_partial_rejection_gives_the_sender_a_dsn(gateway: Any, sink: Sink) -> None:
    data = message("Undangan")
    code, text = transaction(gateway.port, "budi@dinas.jakarta.go.id",
                             ["sari@example.org", "x@blocked.example"], data)
    assert code == 250 and b"1 recipient(s) refused" in text
    delivered = [m for m in sink.wait_for(1) if m.mail_from not in ("", "<>")]
    assert [m.rcpt_tos for m in delivered] == [["sari@example.org"]]
    [report] = notices(sink, 1)
    assert report.rcpt_tos == ["budi@dinas.jakarta.go.id"]
    msg = email.message_from_bytes(report.data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    types = [p.get_content_type() for p in msg.iter_parts()]
    assert types[1:] == ["message/delivery-status", "text/rfc822-headers"]
    status = msg.get_payload()[1].as_string()
    assert "Final-Recipient: rfc822; x@blocked.example" in status
    assert "Status: 5.7.1" in status and "Action: failed" in status
    assert "Subject: Undangan" in msg.get_payload()[2].as_string()


def test_all_rejected_is_550_and_no_dsn(gateway: Any, sink: Sink) -> None:
    code, text = transaction(gateway.port, "budi@dinas.jakarta.go.id", ["x@blocked.example"],
                             message("Undangan"))
    assert code == 550 and b"5.7.1" in text and b"tujuan-diblokir" in text
    assert notices(sink, 0, timeout=0.3) == []
    # The refusal is counted for the agency figures (clause 3.b), though nothing is held.
    from milter.config import load
    from milter.quarantine.store import REJECTED, open_store

    with open_store(load(gateway.config_path).quarantine) as store:
        deadline = time.monotonic() + 10
        facts = []
        while time.monotonic() < deadline:
            facts = [f for f in store.facts(0, time.time() + 60) if f.status == REJECTED]
            if facts:
                break
            time.sleep(0.05)
    assert [(f.sender, f.recipients, f.rules) for f in facts] == [
        ("budi@dinas.jakarta.go.id", ("x@blocked.example",), ("tujuan-diblokir",))
    ]


def test_audit_rule_delivers_and_alerts_officers(gateway: Any, sink: Sink) -> None:
    data = message("Info penting", body="Sebarkan berita hoaks ini ke semua grup.")
    code, _ = transaction(gateway.port, "budi@dinas.jakarta.go.id", ["sari@example.org"], data)
    assert code == 250
    delivered = [m for m in sink.wait_for(1) if m.mail_from not in ("", "<>")]
    assert [m.rcpt_tos for m in delivered] == [["sari@example.org"]]
    [alert] = notices(sink, 1)
    assert alert.rcpt_tos == [OFFICER]
    assert b"konten-terlarang" in alert.data


def test_dkim_signature_verifies_after_the_rewrite(sink: Sink, gateway_factory: Any,
                                                   tmp_path: Path) -> None:
    key_file, txt = keygen(tmp_path)
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}",
                         routes={"sanapati": f"smtp://127.0.0.1:{sink.port}"},
                         policy=POLICY,
                         dkim=[{"domain": "jakarta.go.id", "selector": "gw1",
                                "key_file": str(key_file)}])
    data = message("[RAHASIA] Untuk BSSN", sender="budi@jakarta.go.id")
    code, _ = transaction(gw.port, "budi@jakarta.go.id", ["tim@sanapati.net"], data)
    assert code == 250
    [got] = [m for m in sink.wait_for(1) if m.mail_from not in ("", "<>")]
    assert b"X-Klasifikasi: RAHASIA" in got.data
    assert got.data.startswith(b"DKIM-Signature:")

    def dns(name: bytes, timeout: int = 5) -> bytes:
        return txt.encode() if name == b"gw1._domainkey.jakarta.go.id." else b""

    assert dkim.verify(got.data, dnsfunc=dns)
    assert not dkim.verify(got.data.replace(b"Untuk BSSN", b"Untuk Siapa"), dnsfunc=dns)


def test_strip_attachments_removes_what_the_condition_saw(sink: Sink, gateway_factory: Any,
                                                          tmp_path: Path) -> None:
    local = tmp_path / "video.yaml"
    local.write_text(
        "version: 1\nrules:\n  - name: tanpa-video\n    clause: '3.b'\n"
        "    when: {attachment: {extension: [mp4, mov]}}\n"
        "    then:\n      - strip_attachments: {extension: [mp4, mov], size: {min: 1KB},\n"
        "          reason: 'Video tidak dikirim lewat surel / no video by mail'}\n")
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}",
                         routes={"sanapati": f"smtp://127.0.0.1:{sink.port}"},
                         policy=[POLICY, str(local)],
                         notices={"from": "postmaster@jakarta.go.id", "enabled": False})
    mp4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(4000)
    data = message("Dokumentasi", attachment=("rapat.mp4", mp4))
    code, _ = transaction(gw.port, "budi@dinas.jakarta.go.id", ["sari@example.org"], data)
    assert code == 250
    [got] = sink.wait_for(1)
    out = email.message_from_bytes(got.data, policy=email.policy.default)
    assert [p.get_filename() for p in out.iter_attachments() if p.get_filename()] == []
    texts = [p.get_content() for p in out.walk() if p.get_content_type() == "text/plain"]
    assert any("rapat.mp4" in t and "no video by mail" in t for t in texts)
    assert "Isi pesan." in texts[0]


def test_a_hold_beside_a_deferred_delivery_is_answered_once(gateway: Any, sink: Sink) -> None:
    """The hold is durable, so the message has been accepted one way: the client hears
    250 and does not send it again (a 451 would make its retry a second hold); the
    deferred recipient waits in the gateway's own retry queue."""
    sink.behaviour.refuse_rcpt["rekan@dinas.jakarta.go.id"] = "451 4.3.0 try later"
    data = message("[RAHASIA] Nota dinas")
    code, text = transaction(gateway.port, "budi@dinas.jakarta.go.id",
                             ["sari@gmail.com", "rekan@dinas.jakarta.go.id"], data)
    assert code == 250, text
    held = json.loads(milter(gateway, "quarantine", "list", "--json").stdout)
    assert [(r["status"], r["recipients"]) for r in held] == [("held", ["sari@gmail.com"])]
    queued = json.loads(milter(gateway, "queue", "list", "--json").stdout)
    assert [q["recipients"] for q in queued] == [["rekan@dinas.jakarta.go.id"]]
    verify = milter(gateway, "quarantine", "audit", "--verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_mail_dkim_cannot_sign_goes_out_unsigned(sink: Sink, gateway_factory: Any,
                                                 tmp_path: Path) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}",
                         dkim=[{"domain": "jakarta.go.id", "selector": "gw1",
                                "key_file": str(keygen(tmp_path)[0])}])
    cron = b"Subject: laporan harian\r\n\r\nselesai\r\n"   # no From: header at all
    code, _ = transaction(gw.port, "cron@server.jakarta.go.id", ["admin@jakarta.go.id"], cron)
    assert code == 250
    [got] = sink.wait_for(1)
    assert got.data.endswith(cron) and b"DKIM-Signature" not in got.data
    assert '"event": "dkim-failed"' in gw.log()


def test_notify_is_honoured_and_test_mode_stays_silent(sink: Sink, gateway_factory: Any,
                                                       tmp_path: Path) -> None:
    local = tmp_path / "notify.yaml"
    local.write_text(
        "version: 1\nrules:\n"
        "  - name: coba-aturan\n    mode: test\n    when: {recipient: {domain: [example.org]}}\n"
        "    then: [quarantine]\n"
        "  - name: pesaing\n    clause: '2.c'\n    when: {recipient: {domain: [pesaing.example]}}\n"
        "    then: [{reject: 'Tidak ke pesaing / not to competitors'},\n"
        "           {notify: [officers, atasan@jakarta.go.id, sender]}]\n")
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}",
                         routes={"sanapati": f"smtp://127.0.0.1:{sink.port}"},
                         policy=[POLICY, str(local)],
                         notices={"from": "postmaster@jakarta.go.id", "officers": [OFFICER]})
    code, _ = transaction(gw.port, "budi@dinas.jakarta.go.id", ["sari@example.org"],
                          message("Undangan"))
    assert code == 250
    assert notices(sink, 0, timeout=0.4) == [], "a test-mode rule is recorded, not announced"
    code, _ = transaction(gw.port, "budi@dinas.jakarta.go.id",
                          ["sari@example.org", "x@pesaing.example"], message("Penawaran"))
    assert code == 250
    # The officers' alert, the sender's own copy of it (rate-limited on its own, so
    # the sender's limit never costs the officers their alert) and the DSN.
    got = notices(sink, 3)
    alert_to = (OFFICER, "atasan@jakarta.go.id")
    assert sorted(tuple(m.rcpt_tos) for m in got) == sorted(
        [alert_to, ("budi@dinas.jakarta.go.id",), ("budi@dinas.jakarta.go.id",)])
    [alert] = [m.data for m in got if tuple(m.rcpt_tos) == alert_to]
    body = email.message_from_bytes(alert, policy=email.policy.default)
    text = body.get_body(("plain",)).get_content()
    assert "pesaing" in text
    assert "x@pesaing.example: ditolak sesuai kebijakan surel keluar" in text
    assert "sari@example.org: telah dikirim melalui server surel Pemprov DKI Jakarta" in text
    assert "x@pesaing.example: rejected by the outbound mail policy" in text
    to_sender = [m.data for m in got if m.rcpt_tos == ["budi@dinas.jakarta.go.id"]]
    assert sum(b"multipart/report" in d for d in to_sender) == 1


def test_release_takes_the_way_the_hold_interrupted(sink: Sink, gateway_factory: Any) -> None:
    """RAHASIA with an encrypted part: a ministry address would go through sanapati
    with X-Klasifikasi, a gmail address through the upstream; both are held for the
    encrypted part, and each release goes the way it would have gone."""
    from tests.inspect.builders import encrypted_zip

    secure = Sink()
    secure.controller.start()
    try:
        gw = gateway_factory(
            upstream=f"smtp://127.0.0.1:{sink.port}",
            routes={"sanapati": {"url": f"smtp://127.0.0.1:{secure.port}", "tls": "none"}},
            policy=POLICY, notices={"from": "postmaster@jakarta.go.id", "enabled": False})
        data = message("[RAHASIA] Data", attachment=("arsip.zip", encrypted_zip("a.txt", b"x")))
        code, text = transaction(gw.port, "budi@dinas.jakarta.go.id",
                                 ["x@kemendagri.go.id", "s@gmail.com"], data)
        assert code == 250 and b"2 penerima ditahan" in text
        held = json.loads(milter(gw, "quarantine", "list", "--json").stdout)
        by_rcpt = {r["recipients"][0]: r for r in held}
        assert set(by_rcpt) == {"x@kemendagri.go.id", "s@gmail.com"}
        for record in held:
            assert record["id"].encode() in text
            r = milter(gw, "quarantine", "release", record["id"], "--reason", "disetujui")
            assert r.returncode == 0, r.stderr
        [ministry] = secure.wait_for(1)
        assert ministry.rcpt_tos == ["x@kemendagri.go.id"]
        assert b"X-Klasifikasi: RAHASIA\r\n" in ministry.data
        [outside] = [m for m in sink.wait_for(1) if m.mail_from not in ("", "<>")]
        assert outside.rcpt_tos == ["s@gmail.com"]
        assert b"X-Klasifikasi" not in outside.data
    finally:
        secure.controller.stop()


def test_quarantine_store_failure_is_451_and_nothing_leaves(sink: Sink, gateway_factory: Any,
                                                            tmp_path: Path) -> None:
    spool = tmp_path / "held"
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}",
                         routes={"sanapati": f"smtp://127.0.0.1:{sink.port}"}, policy=POLICY,
                         quarantine={"database": f"sqlite:///{tmp_path}/q.sqlite3",
                                     "spool": str(spool)})
    aside = tmp_path / "held-aside"
    spool.rename(aside)
    spool.write_text("not a directory")   # the disk the spool lives on is gone
    code, text = transaction(gw.port, "budi@dinas.jakarta.go.id",
                             ["sari@gmail.com", "adi@bpkd.jakarta.go.id"],
                             message("[RAHASIA] Nota dinas"))
    assert code == 451 and b"4.3.0" in text
    time.sleep(0.3)
    assert sink.messages == [], "nothing is delivered when the hold cannot be made durable"
    assert '"event": "quarantine-failed"' in gw.log()
    spool.unlink()
    aside.rename(spool)   # and comes back
    code, _ = transaction(gw.port, "budi@dinas.jakarta.go.id",
                          ["sari@gmail.com", "adi@bpkd.jakarta.go.id"],
                          message("[RAHASIA] Nota dinas"))
    assert code == 250, "the retry succeeds once the spool is back"
