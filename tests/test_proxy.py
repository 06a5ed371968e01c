"""End-to-end tests of the backbone: a real ``milter serve`` between smtplib and a sink."""

from __future__ import annotations

import concurrent.futures
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, Sink, free_port, wait_port

MESSAGE = (
    b"From: Budi <budi@dinas.jakarta.go.id>\r\n"
    b"To: Sari <sari@example.org>\r\n"
    b"Subject: Laporan mingguan\r\n"
    b"Message-ID: <m1@dinas.jakarta.go.id>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Selamat pagi,\r\n"
    b".\r\n"
    b"..a line that starts with two dots\r\n"
    b".a line that starts with one dot\r\n"
    b"Terima kasih \xe2\x80\x94 salam.\r\n"
)


def strip_received(data: bytes) -> tuple[bytes, bytes]:
    """Split the gateway's Received header (first, folded) from the rest."""
    assert data.startswith(b"Received: from ")
    end = data.index(b"\r\n", data.index(b"(milter)"))
    while data[end + 2:end + 3] in (b"\t", b" "):
        end = data.index(b"\r\n", end + 2)
    return data[:end + 2], data[end + 2:]


def send(port: int, sender: str, rcpts: list[str], data: bytes, **kw: object) -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        return s.sendmail(sender, rcpts, data, **kw)  # type: ignore[arg-type]


def test_relay_keeps_the_bytes_and_adds_one_received(sink: Sink, gateway_factory) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}")
    refused = send(gw.port, "budi@dinas.jakarta.go.id", ["sari@example.org"], MESSAGE)
    assert refused == {}
    [got] = sink.wait_for(1)
    assert got.mail_from == "budi@dinas.jakarta.go.id"
    assert got.rcpt_tos == ["sari@example.org"]
    received, rest = strip_received(got.data)
    assert rest == MESSAGE
    assert b"by gw.test.jakarta.go.id (milter) with ESMTP id " in received
    assert received.count(b"Received:") == 1
    log = gw.log()
    assert '"event": "message"' in log and '"action": "delivered"' in log


def test_upstream_down_is_451_and_nothing_is_acknowledged(gateway_factory) -> None:
    dead = free_port()
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{dead}")
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(gw.port, "budi@dinas.jakarta.go.id", ["sari@example.org"], MESSAGE)
    assert exc.value.smtp_code == 451
    assert b"4.4.1" in exc.value.smtp_error


@pytest.mark.parametrize(("where", "reply"), [
    ("data_reply", "554 5.7.0 Message refused by upstream policy"),
    ("mail_reply", "452 4.3.1 Insufficient system storage"),
])
def test_upstream_refusal_is_relayed_with_its_code(sink: Sink, gateway_factory, where: str,
                                                   reply: str) -> None:
    setattr(sink.behaviour, where, reply)
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}")
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(gw.port, "budi@dinas.jakarta.go.id", ["sari@example.org"], MESSAGE)
    code, status, text = reply.split(" ", 2)
    assert exc.value.smtp_code == int(code)
    assert exc.value.smtp_error.startswith(status.encode())
    assert text.encode() in exc.value.smtp_error


def test_partial_recipient_refusal_delivers_the_rest(sink: Sink, gateway_factory) -> None:
    sink.behaviour.refuse_rcpt["nobody@example.org"] = "550 5.1.1 No such user"
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}")
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as s:
        s.ehlo("dinas.jakarta.go.id")
        s.mail("budi@dinas.jakarta.go.id")
        s.rcpt("sari@example.org")
        s.rcpt("nobody@example.org")
        code, text = s.data(MESSAGE)
    assert code == 250
    assert b"1 recipient(s) refused" in text
    [got] = sink.wait_for(1)
    assert got.rcpt_tos == ["sari@example.org"]


def test_upstream_drop_mid_data_is_451(sink: Sink, gateway_factory) -> None:
    sink.behaviour.drop_in_data = True
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}")
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(gw.port, "budi@dinas.jakarta.go.id", ["sari@example.org"], MESSAGE)
    assert exc.value.smtp_code == 451
    assert sink.messages == []


def test_upstream_stall_times_out_as_451(sink: Sink, gateway_factory) -> None:
    sink.behaviour.stall = 5
    gw = gateway_factory(upstream={"url": f"smtp://127.0.0.1:{sink.port}", "timeout": "1s"})
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(gw.port, "budi@dinas.jakarta.go.id", ["sari@example.org"], MESSAGE)
    assert exc.value.smtp_code == 451


def test_client_outside_networks_gets_554(sink: Sink, gateway_factory) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}", clients=["10.0.0.0/8"])
    # Refused at connect, before the greeting: an outsider never reaches MAIL.
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", gw.port, timeout=10)
    assert refused.value.smtp_code == 554 and b"5.7.1" in refused.value.smtp_error
    assert sink.messages == []


def test_size_limits(sink: Sink, gateway_factory) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}", max_message_size="10KB")
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=10) as s:
        s.ehlo("dinas.jakarta.go.id")
        assert "size" in s.esmtp_features and s.esmtp_features["size"] == str(10 * 1024)
        code, text = s.mail("budi@dinas.jakarta.go.id", ["SIZE=20000"])
        assert code == 552 and b"5.3.4" in text
        # A client that does not declare the size is stopped while sending.
        code, _ = s.mail("budi@dinas.jakarta.go.id")
        assert code == 250
        s.rcpt("sari@example.org")
        code, text = s.data(MESSAGE + b"x" * 20000 + b"\r\n")
        assert code == 552 and b"5.3.4" in text
        # The session stays usable for the next, smaller message.
        s.mail("budi@dinas.jakarta.go.id")
        s.rcpt("sari@example.org")
        code, _ = s.data(MESSAGE)
        assert code == 250
    assert len(sink.wait_for(1)) == 1


def test_too_many_recipients_is_452(sink: Sink, gateway_factory) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}", max_recipients=2)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=10) as s:
        s.ehlo("dinas.jakarta.go.id")
        s.mail("budi@dinas.jakarta.go.id")
        assert s.rcpt("a@example.org")[0] == 250
        assert s.rcpt("b@example.org")[0] == 250
        code, text = s.rcpt("c@example.org")
        assert code == 452 and b"4.5.3" in text


def test_maildir_outbox(tmp_path: Path, gateway_factory) -> None:
    outbox = tmp_path / "outbox"
    gw = gateway_factory(upstream=f"maildir:{outbox}")
    send(gw.port, "budi@dinas.jakarta.go.id", ["sari@example.org", "adi@example.org"], MESSAGE)
    files = list((outbox / "new").iterdir())
    assert len(files) == 1
    assert list((outbox / "tmp").iterdir()) == []
    data = files[0].read_bytes()
    assert data.startswith(b"Return-Path: <budi@dinas.jakarta.go.id>\r\n"
                           b"X-Envelope-To: sari@example.org, adi@example.org\r\n")
    assert data.endswith(MESSAGE)
    assert files[0].stat().st_mode & 0o777 == 0o600


def test_smtputf8_addresses(sink: Sink, gateway_factory) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}")
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=10) as s:
        s.ehlo("dinas.jakarta.go.id")
        assert s.has_extn("smtputf8")
        s.sendmail("budi@dinas.jakarta.go.id", ["pengguna@contoh.co.id", "ñandú@example.org"],
                   MESSAGE, mail_options=["SMTPUTF8"])
    [got] = sink.wait_for(1)
    assert "ñandú@example.org" in got.rcpt_tos
    assert b"with UTF8SMTP id" in got.data


def test_pipelined_commands_in_one_write(sink: Sink, gateway_factory) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}")
    with socket.create_connection(("127.0.0.1", gw.port), 10) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220 ")
        sock.sendall(b"EHLO dinas.jakarta.go.id\r\n")
        lines = []
        while True:
            line = f.readline()
            lines.append(line)
            if line[3:4] == b" ":
                break
        assert b"250-PIPELINING\r\n" in lines and b"250-ENHANCEDSTATUSCODES\r\n" in lines
        sock.sendall(b"MAIL FROM:<budi@dinas.jakarta.go.id>\r\nRCPT TO:<sari@example.org>\r\n"
                     b"RCPT TO:<adi@example.org>\r\nDATA\r\n")
        replies = [f.readline() for _ in range(4)]
        assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"354"]
        sock.sendall(MESSAGE.replace(b"\r\n.", b"\r\n..") + b".\r\nQUIT\r\n")
        final = f.readline()
        assert final.startswith(b"250 2.0.0"), final
        assert f.readline().startswith(b"221")
    [got] = sink.wait_for(1)
    assert strip_received(got.data)[1] == MESSAGE


def test_smuggling_sequence_is_refused(sink: Sink, gateway_factory) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}")
    with socket.create_connection(("127.0.0.1", gw.port), 10) as sock:
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(b"HELO x\r\nMAIL FROM:<a@dinas.jakarta.go.id>\r\nRCPT TO:<b@example.org>"
                     b"\r\nDATA\r\n")
        for _ in range(4):
            f.readline()
        sock.sendall(b"Subject: x\r\n\r\nhello\n.\r\nMAIL FROM:<evil@example.org>\r\n"
                     b"\r\n.\r\n")
        final = f.readline()
    assert final.startswith(b"554 5.6.0"), final
    assert sink.messages == []


def test_hundred_concurrent_sessions(sink: Sink, gateway_factory) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}")

    def one(i: int) -> dict:
        body = MESSAGE.replace(b"Laporan mingguan", f"Laporan {i}".encode())
        return send(gw.port, "budi@dinas.jakarta.go.id", [f"r{i}@example.org"], body)

    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        results = list(pool.map(one, range(100)))
    assert results == [{}] * 100
    got = sink.wait_for(100)
    assert sorted(m.rcpt_tos[0] for m in got) == sorted(f"r{i}@example.org" for i in range(100))


def test_postfix_smtp_sink_and_swaks(smtp_sink: tuple[int, Path], gateway_factory) -> None:
    port, dump = smtp_sink
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{port}")
    send(gw.port, "budi@dinas.jakarta.go.id", ["sari@example.org"], MESSAGE)
    swaks = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{gw.port}", "--from", "budi@dinas.jakarta.go.id",
         "--to", "sari@example.org", "--header", "Subject: uji swaks", "--body", "halo"],
        capture_output=True, text=True, timeout=30)
    assert swaks.returncode == 0, swaks.stdout + swaks.stderr
    assert "250 2.0.0" in swaks.stdout
    deadline = time.monotonic() + 5
    while len(list(dump.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    dumps = [p.read_bytes() for p in dump.iterdir()]
    assert len(dumps) == 2
    assert any(MESSAGE.replace(b"\r\n", b"\n") in d for d in dumps)  # dumped with LF
    assert any(b"Subject: uji swaks" in d for d in dumps)


def test_sigterm_mid_data_gives_no_250(sink: Sink, gateway_factory) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}", shutdown_grace="1s")
    with socket.create_connection(("127.0.0.1", gw.port), 10) as sock:
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(b"HELO x\r\nMAIL FROM:<a@dinas.jakarta.go.id>\r\nRCPT TO:<b@example.org>"
                     b"\r\nDATA\r\n")
        for _ in range(4):
            f.readline()
        sock.sendall(b"Subject: half\r\n\r\nfirst half of the message\r\n")
        time.sleep(0.2)
        gw.signal(signal.SIGTERM)
        rest = f.read()   # the gateway closes without accepting
    assert b"250" not in rest
    assert gw.proc is not None and gw.proc.wait(10) == 0
    assert sink.messages == []


def test_sigterm_waits_for_a_transaction_in_flight(sink: Sink, gateway_factory) -> None:
    sink.behaviour.stall = 1.5
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}", shutdown_grace="10s")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(send, gw.port, "budi@dinas.jakarta.go.id", ["sari@example.org"],
                          MESSAGE)
        time.sleep(0.7)
        gw.signal(signal.SIGTERM)
        assert fut.result(timeout=20) == {}
    assert len(sink.messages) == 1
    assert gw.proc is not None and gw.proc.wait(10) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gw.port), 1)


def test_two_workers_and_metrics(sink: Sink, gateway_factory) -> None:
    mport = free_port()
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}", workers=2,
                         metrics=f"127.0.0.1:{mport}")
    wait_port(mport)
    for i in range(10):
        send(gw.port, "budi@dinas.jakarta.go.id", [f"r{i}@example.org"], MESSAGE)
    assert len(sink.wait_for(10)) == 10
    body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read()
    text = body.decode()
    assert 'milter_messages_total{frontend="smtp",outcome="delivered"} 10.0' in text
    assert "milter_processing_seconds_bucket" in text
    pids = {line for line in gw.log().splitlines() if '"event": "listening"' in line}
    assert len(pids) == 2


@pytest.mark.parametrize(("yaml_text", "expected"), [
    ("listen: [127.0.0.1:2525]\nbogus: 1\n", "gateway.yaml:2:1: bogus: unknown key"),
    ("listen: [127.0.0.1:2525]\nroutes:\n  sanapati: {url: 'ftp://x', tls: verify}\n",
     "gateway.yaml:3:19: routes.sanapati.url: expected smtp://"),
    ("routes:\n  s: {url: 'smtp://x:25', tls: maybe}\n", "gateway.yaml:2:32: routes.s.tls"),
    ("clients: [10.0.0.300/8]\n", "gateway.yaml:1:11: clients[0]"),
    ("policy: /nonexistent/policy.yaml\n", "gateway.yaml:1:9: policy: cannot read"),
    ("notices: {from: not-an-address}\n", "gateway.yaml:1:17: notices.from: not a mail"),
    ("listen: [127.0.0.1:2525\n", "gateway.yaml:2:1: YAML syntax"),
    ("notices: {enabled: 'false'}\n", "gateway.yaml:1:20: notices.enabled: expected true or false"),
    ("milter: {listen: ['127.0.0.1:8890']}\n",
     "gateway.yaml:1:19: milter.listen[0]: expected inet:"),
    ("listen: []\n", "gateway.yaml:1:9: listen: nothing to serve"),
    ("milter: {listen: ['unix:/tmp/m.sock'], progress_interval: soon}\n",
     "gateway.yaml:1:59: milter.progress_interval"),
])
def test_config_errors_are_one_located_line(tmp_path: Path, yaml_text: str,
                                            expected: str) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml_text)
    r = subprocess.run([sys.executable, "-m", "milter", "-c", str(cfg), "serve"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert expected in lines[0]
    assert "Traceback" not in r.stderr


def test_missing_config_file_is_exit_1(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "milter", "-c", str(tmp_path / "none.yaml"),
                        "serve"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 1
    assert "none.yaml:1:1: cannot read" in r.stderr


def test_usage_error_is_exit_2() -> None:
    r = subprocess.run([sys.executable, "-m", "milter", "no-such-command"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2


def test_data_line_length_limit(sink: Sink, gateway_factory) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}", max_line_length=1000)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=10) as s:
        s.ehlo("dinas.jakarta.go.id")
        s.mail("budi@dinas.jakarta.go.id")
        s.rcpt("sari@example.org")
        code, text = s.data(MESSAGE + b"y" * 1200 + b"\r\n")
        assert code == 500 and b"5.5.2" in text
        s.mail("budi@dinas.jakarta.go.id")
        s.rcpt("sari@example.org")
        assert s.data(MESSAGE + b"y" * 990 + b"\r\n")[0] == 250
    assert len(sink.wait_for(1)) == 1


def test_connections_per_client_limit(sink: Sink, gateway_factory) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}", max_connections_per_client=2)
    first = [smtplib.SMTP("127.0.0.1", gw.port, timeout=10) for _ in range(2)]
    try:
        with socket.create_connection(("127.0.0.1", gw.port), 10) as sock:
            greeting = sock.makefile("rb").readline()
        assert greeting.startswith(b"421 4.7.0"), greeting
    finally:
        for s in first:
            s.quit()
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=10) as s:
        assert s.noop()[0] == 250


def test_several_listen_addresses(sink: Sink, gateway_factory) -> None:
    first, second = free_port(), free_port()
    gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}",
                    listen=[f"127.0.0.1:{first}", f"127.0.0.1:{second}"])
    wait_port(second)
    for port in (first, second):
        send(port, "budi@dinas.jakarta.go.id", ["sari@example.org"], MESSAGE)
    assert len(sink.wait_for(2)) == 2


def test_received_says_smtp_after_helo(sink: Sink, gateway_factory) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}")
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=10) as s:
        s.helo("old.client.example")
        s.sendmail("budi@dinas.jakarta.go.id", ["sari@example.org"], MESSAGE)
    [got] = sink.wait_for(1)
    assert b"from old.client.example ([127.0.0.1])" in got.data
    assert b"(milter) with SMTP id " in got.data


def test_config_check(tmp_path: Path) -> None:
    good = subprocess.run([sys.executable, "-m", "milter", "-c", "examples/gateway.yaml",
                           "config", "check"], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert good.returncode == 0, good.stderr
    assert "gateway.yaml: ok (1 policy file(s)" in good.stdout
    bad_policy = tmp_path / "p.yaml"
    bad_policy.write_text("version: 1\nrules:\n  - name: x\n    when: {size: {over: lots}}\n"
                          "    then: [quarantine]\n")
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(f"policy: {bad_policy}\nquarantine: {{database: 'sqlite:///{tmp_path}/q',"
                   f" spool: {tmp_path}/s}}\n")
    bad = subprocess.run([sys.executable, "-m", "milter", "-c", str(cfg), "config", "check"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 1
    assert f"{bad_policy}:4:" in bad.stderr and "Traceback" not in bad.stderr
