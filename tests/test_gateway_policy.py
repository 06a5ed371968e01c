"""The shipped SE 79/SE/2019 policy enforced by a running gateway, end to end."""

from __future__ import annotations

import json
import signal
import smtplib
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Sink

POLICY = str(ROOT / "policies" / "se-79-2019.yaml")


def message(subject: str, body: str = "Isi pesan.", attachment: tuple[str, bytes] | None = None,
            sender: str = "budi@dinas.jakarta.go.id") -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = "someone@example.org"
    m["Subject"] = subject
    m["Message-ID"] = "<t1@dinas.jakarta.go.id>"
    m.set_content(body)
    if attachment:
        name, data = attachment
        m.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return m.as_bytes().replace(b"\n", b"\r\n")


@pytest.fixture
def secure_sink() -> Any:
    s = Sink()
    s.controller.start()
    yield s
    s.controller.stop()


@pytest.fixture
def gateway(sink: Sink, secure_sink: Sink, gateway_factory: Any, tmp_path: Path) -> Any:
    return gateway_factory(
        upstream=f"smtp://127.0.0.1:{sink.port}",
        routes={"sanapati": {"url": f"smtp://127.0.0.1:{secure_sink.port}", "tls": "none"}},
        policy=POLICY,
        notices={"from": "postmaster@jakarta.go.id", "officers": ["kepatuhan@jakarta.go.id"]})


def transaction(port: int, sender: str, rcpts: list[str], data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("dinas.jakarta.go.id")
        s.mail(sender)
        for r in rcpts:
            code, text = s.rcpt(r)
            assert code == 250, text
        return s.data(data)


def quarantine_list(gw: Any) -> list[dict[str, Any]]:
    r = subprocess.run([sys.executable, "-m", "milter", "-c", str(gw.config_path), "quarantine",
                        "list", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout))


def test_clean_mail_is_delivered_untouched(gateway: Any, sink: Sink) -> None:
    data = message("Undangan rapat koordinasi")
    code, _ = transaction(gateway.port, "budi@dinas.jakarta.go.id", ["sari@gmail.com"], data)
    assert code == 250
    [got] = sink.wait_for(1)
    assert got.data.endswith(data)


def test_rahasia_to_outside_is_held_with_its_id(gateway: Any, sink: Sink) -> None:
    data = message("[RAHASIA] Nota dinas anggaran")
    code, text = transaction(gateway.port, "budi@dinas.jakarta.go.id", ["sari@gmail.com"], data)
    assert code == 250 and b"2.6.0" in text
    held = quarantine_list(gateway)
    assert len(held) == 1
    assert held[0]["id"].encode() in text
    assert b"(rule rahasia-terbatas-keluar)" in text
    assert held[0]["recipients"] == ["sari@gmail.com"]
    assert held[0]["classification"] == "RAHASIA"
    assert "rahasia-terbatas-keluar" in held[0]["rules"]
    time.sleep(0.3)
    # Nothing reached the outside; at most notices (null sender) went upstream.
    assert all(m.mail_from in ("", "<>") for m in sink.messages)


def test_mixed_recipients_split_by_outcome(gateway: Any, sink: Sink, secure_sink: Sink) -> None:
    data = message("[RAHASIA] Nota dinas")
    code, text = transaction(gateway.port, "budi@dinas.jakarta.go.id",
                             ["adi@bpkd.jakarta.go.id", "sari@gmail.com", "tim@sanapati.net"],
                             data)
    assert code == 250
    assert b"1 recipient(s) held in quarantine" in text
    delivered = [m for m in sink.wait_for(1) if m.mail_from]
    assert [m.rcpt_tos for m in delivered] == [["adi@bpkd.jakarta.go.id"]]
    [secure] = secure_sink.wait_for(1)
    assert secure.rcpt_tos == ["tim@sanapati.net"]
    assert b"X-Klasifikasi: RAHASIA\r\n" in secure.data
    assert b"X-Klasifikasi" not in delivered[0].data
    [held] = quarantine_list(gateway)
    assert held["recipients"] == ["sari@gmail.com"]


def test_executable_is_rejected_for_everyone(gateway: Any, sink: Sink) -> None:
    exe = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + b"\x00" * 50 + \
        b"PE\x00\x00L\x01" + b"\x00" * 200
    data = message("Aplikasi", attachment=("setup.pdf", exe))
    code, text = transaction(gateway.port, "budi@dinas.jakarta.go.id",
                             ["adi@dinas.jakarta.go.id"], data)
    assert code == 550 and b"5.7.1" in text
    assert b"lampiran-berbahaya" in text
    assert [m for m in sink.messages if m.mail_from] == []


def test_sanapati_route_needing_tls_is_never_clear(sink: Sink, secure_sink: Sink,
                                                   gateway_factory: Any) -> None:
    gw = gateway_factory(
        upstream=f"smtp://127.0.0.1:{sink.port}",
        routes={"sanapati": {"url": f"smtp://127.0.0.1:{secure_sink.port}", "tls": "verify"}},
        policy=POLICY)
    data = message("[SANGAT RAHASIA] Rencana")
    code, text = transaction(gw.port, "budi@dinas.jakarta.go.id", ["tim@sanapati.net"], data)
    assert code == 451 and b"TLS" in text
    assert secure_sink.messages == []


def test_sighup_reloads_and_a_bad_policy_keeps_the_old(sink: Sink, gateway_factory: Any,
                                                      tmp_path: Path) -> None:
    local = tmp_path / "local.yaml"
    local.write_text(Path(POLICY).read_text())
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}", policy=str(local),
                         routes={"sanapati": f"smtp://127.0.0.1:{sink.port}"})
    blocked = message("Kirim kata sandi server", body="kata sandi: rahasia123")
    code, _ = transaction(gw.port, "budi@dinas.jakarta.go.id", ["x@example.org"], blocked)
    assert code == 250
    extra = ("\n  - name: larang-kata-sandi\n    when: {content: {regex: 'kata sandi'}}\n"
             "    then: [{reject: 'Kata sandi tidak boleh dikirim lewat email'}]\n")
    local.write_text(Path(POLICY).read_text() + extra)
    gw.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "policy-reloaded" not in gw.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    code, text = transaction(gw.port, "budi@dinas.jakarta.go.id", ["x@example.org"], blocked)
    assert code == 550 and b"Kata sandi tidak boleh" in text
    local.write_text("rules: [\n")
    gw.signal(signal.SIGHUP)
    while "policy-reload-failed" not in gw.log() and time.monotonic() < deadline + 5:
        time.sleep(0.05)
    assert "policy-reload-failed" in gw.log()
    code, text = transaction(gw.port, "budi@dinas.jakarta.go.id", ["x@example.org"], blocked)
    assert code == 550, "the running policy stays in place"


def test_invalid_policy_refuses_to_start(tmp_path: Path, sink: Sink) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - name: x\n    then: [{route: nowhere}]\n")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"upstream: smtp://127.0.0.1:{sink.port}\npolicy: {bad}\n")
    r = subprocess.run([sys.executable, "-m", "milter", "-c", str(cfg), "serve"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 1
    assert f"{bad}:4:" in r.stderr and "nowhere" in r.stderr


def test_log_line_names_rule_and_clause(gateway: Any) -> None:
    code, _ = transaction(gateway.port, "budi@dinas.jakarta.go.id", ["sari@gmail.com"],
                          message("[RAHASIA] Nota"))
    assert code == 250
    deadline = time.monotonic() + 5
    lines: list[dict[str, Any]] = []
    while not lines and time.monotonic() < deadline:
        lines = [json.loads(x) for x in gateway.log().splitlines()
                 if x.startswith("{") and '"event": "message"' in x]
        time.sleep(0.05)
    [line] = lines
    [rcpt] = line["recipients"]
    assert rcpt["action"] == "quarantined"
    assert rcpt["rules"] == ["rahasia-terbatas-keluar"]
    assert rcpt["clauses"] and all(c for c in rcpt["clauses"])
    assert line["classification"] == "RAHASIA" and line["quarantine_id"]
