"""The milter front-end end to end: a real ``milter serve`` with the shipped policy,
spoken to over the milter protocol as Postfix speaks it (tests/milterproto/mta.py).

What the MTA is told must match what the proxy would have done: held mail durable in
the quarantine before the recipient is taken off the MTA's copy, sanapati mail accepted
by its route before that recipient is removed, refusals with the bilingual text,
rewrites and signatures as header and body edits of the MTA's own copy.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from milter.milterproto.codec import Packet
from tests.conftest import ROOT, Sink, free_port
from tests.milterproto.mta import Mta

POLICY = str(ROOT / "policies" / "se-79-2019.yaml")
SENDER = "budi@bpkd.jakarta.go.id"
PLAIN = (
    b"From: Budi Santoso <budi@bpkd.jakarta.go.id>\r\nTo: sari@example.org\r\n"
    b"Subject: Laporan mingguan\r\nMessage-ID: <m1@bpkd.jakarta.go.id>\r\n\r\n"
    b"Selamat pagi.\r\n.titik di awal baris\r\n"
)
RAHASIA = PLAIN.replace(b"Laporan mingguan", b"[RAHASIA] Nota dinas")
EXE = (
    b"From: budi@bpkd.jakarta.go.id\r\nTo: sari@example.org\r\nSubject: alat\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nterlampir\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\n"
    b'Content-Disposition: attachment; filename="setup.exe"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\n"
    b"TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAgAAAAA4fug4AtAnNIbgBTM0hVGhpcyBwcm9ncmFtIGNhbm5vdCBiZSBydW4gaW4gRE9TIG1vZGUuDQ0KJAAAAAAAAABQRQAATAEDAA==\r\n"
    b"--b--\r\n"
)
EOM_MACROS = {"i": "4XyZ1abcDE"}
MAIL_MACROS = {"i": "4XyZ1abcDE", "{auth_authen}": "budi", "{auth_type}": "PLAIN"}


def packets_of(kind: bytes, packets: list[Packet]) -> list[bytes]:
    return [p.data for p in packets if p.command == kind[0]]


def cstrings(data: bytes) -> list[str]:
    return [x.decode() for x in data.split(b"\0")[:-1]]


class MilterGateway:
    def __init__(self, gw: Any, address: str, tmp: Path) -> None:
        self.gw = gw
        self.address = address
        self.tmp = tmp

    async def send(
        self, sender: str, rcpts: list[str], message: bytes, *, mail_macros: dict[str, str]
    ) -> list[Packet]:
        mta = await Mta.connect(self.address)
        try:
            await mta.negotiate()
            await mta.session(
                hostname="pc-budi.bpkd.jakarta.go.id", address="10.20.30.40", helo="pc-budi"
            )
            from tests.milterproto.mta import split_message

            headers, body = split_message(message)
            await mta.envelope(sender, rcpts, mail_macros=mail_macros)
            await mta.content(headers, [body])
            return await mta.end_of_message(EOM_MACROS, within=30)
        finally:
            await mta.close()

    def run(self, sender: str, rcpts: list[str], message: bytes) -> list[Packet]:
        return asyncio.run(self.send(sender, rcpts, message, mail_macros=MAIL_MACROS))

    def quarantine(self) -> list[dict[str, Any]]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "milter",
                "-c",
                str(self.gw.config_path),
                "quarantine",
                "list",
                "--json",
            ],
            capture_output=True,
            check=True,
            cwd=ROOT,
        )
        return list(json.loads(out.stdout))

    def sanapati(self) -> list[bytes]:
        new = self.tmp / "sanapati" / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


@pytest.fixture
def milter_gw(gateway_factory: Any, tmp_path: Path, sink: Sink) -> MilterGateway:
    port = free_port()
    address = f"inet:127.0.0.1:{port}"
    gw = gateway_factory(
        listen=[],
        milter={"listen": [address]},
        upstream=f"smtp://127.0.0.1:{sink.port}",
        routes={"sanapati": {"url": f"maildir:{tmp_path}/sanapati", "tls": "none"}},
        policy=POLICY,
        notices={"enabled": False},
    )
    return MilterGateway(gw, address, tmp_path)


def test_clean_message_continues_unchanged(milter_gw: MilterGateway, sink: Sink) -> None:
    packets = milter_gw.run(SENDER, ["sari@example.org"], PLAIN)
    assert [chr(p.command) for p in packets] == ["a"]
    assert sink.messages == []  # Postfix delivers its own copy; the gateway sent nothing
    line = next(json.loads(x) for x in milter_gw.gw.log().splitlines() if '"event": "message"' in x)
    assert line["frontend"] == "milter" and line["queue_id"] == "4XyZ1abcDE"
    assert line["login"] == "budi" and line["client_address"] == "10.20.30.40"
    assert line["client_name"] == "pc-budi.bpkd.jakarta.go.id"


def test_rahasia_to_outside_is_held_then_discarded(milter_gw: MilterGateway) -> None:
    packets = milter_gw.run(SENDER, ["sari@gmail.com"], RAHASIA)
    assert [chr(p.command) for p in packets] == ["d"]
    (held,) = milter_gw.quarantine()
    assert held["recipients"] == ["sari@gmail.com"]
    assert held["frontend"] == "milter" and held["queue_id"] == "4XyZ1abcDE"
    assert held["login"] == "budi" and held["client_address"] == "10.20.30.40"
    assert held["client_name"] == "pc-budi.bpkd.jakarta.go.id" and held["helo"] == "pc-budi"
    assert held["classification"] == "RAHASIA"
    shown = subprocess.run(
        [sys.executable, "-m", "milter", "-c", str(milter_gw.gw.config_path), "quarantine",
         "show", held["id"]],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout
    assert f"via milter, transaction {held['transaction_id']}" in shown
    assert "  client        pc-budi.bpkd.jakarta.go.id [10.20.30.40], HELO pc-budi\n" in shown
    assert "  login         budi\n" in shown and "  MTA queue id  4XyZ1abcDE\n" in shown


def test_mixed_recipients_split(milter_gw: MilterGateway, sink: Sink) -> None:
    rcpts = ["sari@gmail.com", "andi@dinas.jakarta.go.id", "tim@sanapati.net"]
    packets = milter_gw.run(SENDER, rcpts, RAHASIA)
    kinds = [chr(p.command) for p in packets]
    assert kinds[-1] == "a", kinds
    removed = sorted(cstrings(d)[0] for d in packets_of(b"-", packets))
    # Held and routed recipients leave Postfix's copy; the internal one stays on it.
    assert removed == ["<sari@gmail.com>", "<tim@sanapati.net>"]
    (held,) = milter_gw.quarantine()
    assert held["recipients"] == ["sari@gmail.com"]
    (routed,) = milter_gw.sanapati()
    msg = email.message_from_bytes(routed, policy=email.policy.default)
    assert msg["X-Klasifikasi"] == "RAHASIA"
    assert msg["X-Envelope-To"] == "tim@sanapati.net"
    assert sink.messages == []


def test_executable_is_refused_with_the_bilingual_text(milter_gw: MilterGateway) -> None:
    packets = milter_gw.run(SENDER, ["sari@example.org"], EXE)
    assert [chr(p.command) for p in packets] == ["y"]
    reply = cstrings(packets[0].data)[0]
    assert reply.startswith("550 5.7.1 ")
    assert "lampiran-berbahaya" in reply
    assert milter_gw.quarantine() == []


def test_a_route_that_cannot_take_it_tempfails(gateway_factory: Any, sink: Sink) -> None:
    closed = free_port()
    address = f"inet:127.0.0.1:{free_port()}"
    gw = gateway_factory(
        listen=[],
        milter={"listen": [address]},
        upstream=f"smtp://127.0.0.1:{sink.port}",
        routes={"sanapati": {"url": f"smtp://127.0.0.1:{closed}", "tls": "none"}},
        policy=POLICY,
        notices={"enabled": False},
    )
    front = MilterGateway(gw, address, Path(gw.tmp))
    packets = front.run(SENDER, ["andi@dinas.jakarta.go.id", "tim@sanapati.net"], RAHASIA)
    assert [chr(p.command) for p in packets] == ["y"]
    assert cstrings(packets[0].data)[0].startswith("451 4.")
    assert not packets_of(b"-", packets)  # nothing removed: Postfix keeps all of it


REWRITE_POLICY = """\
version: 1
domains:
  internal: [jakarta.go.id, "*.jakarta.go.id"]
rules:
  - name: tandai
    clause: "2.c"
    when: {recipient: {in: internal}}
    then:
      - subject_prefix: "[INTERNAL]"
      - add_header: {name: X-Diperiksa, value: "ya"}
      - remove_header: X-Mailer
      - disclaimer: "Surel ini diperiksa / This message was checked."
  - name: luar
    when: {recipient: {not_in: internal}}
    then: [{add_header: {name: X-Luar, value: "ya"}}]
"""


def test_rewrites_and_signature_become_edits_of_the_mta_copy(
    gateway_factory: Any, tmp_path: Path, sink: Sink
) -> None:
    policy = tmp_path / "rewrite.yaml"
    policy.write_text(REWRITE_POLICY)
    key = tmp_path / "dkim.pem"
    subprocess.run(
        [
            "openssl",
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
            "-out",
            str(key),
        ],
        check=True,
        capture_output=True,
    )
    address = f"inet:127.0.0.1:{free_port()}"
    gw = gateway_factory(
        listen=[],
        milter={"listen": [address]},
        upstream=f"smtp://127.0.0.1:{sink.port}",
        policy=str(policy),
        notices={"enabled": False},
        dkim=[{"domain": "bpkd.jakarta.go.id", "selector": "gw1", "key_file": str(key)}],
    )
    front = MilterGateway(gw, address, tmp_path)
    message = PLAIN.replace(b"\r\n\r\n", b"\r\nX-Mailer: Outlook\r\n\r\n", 1)
    packets = front.run(SENDER, ["andi@dinas.jakarta.go.id", "x@example.org"], message)
    kinds = [chr(p.command) for p in packets]
    assert kinds[-1] == "a", kinds
    # The outside recipient's copy differs (X-Luar): the gateway sent it itself, through
    # the upstream, and took that recipient off Postfix's copy.
    assert [cstrings(d)[0] for d in packets_of(b"-", packets)] == ["<x@example.org>"]
    (outside,) = sink.wait_for(1)
    assert outside.rcpt_tos == ["x@example.org"]
    assert b"X-Luar: ya" in outside.data and b"[INTERNAL]" not in outside.data
    changes = {}
    for d in packets_of(b"m", packets):
        (index,) = struct.unpack(">I", d[:4])
        name, value = cstrings(d[4:])
        changes[(name.lower(), index)] = value
    assert changes[("subject", 1)].strip() == "[INTERNAL] Laporan mingguan"
    assert changes[("x-mailer", 1)] == ""
    added = [cstrings(d) for d in packets_of(b"h", packets)]
    assert [n for n, v in added if v.strip() == "ya"] == ["X-Diperiksa"]
    inserted = packets_of(b"i", packets)
    assert len(inserted) == 1
    (index,) = struct.unpack(">I", inserted[0][:4])
    name, value = cstrings(inserted[0][4:])
    assert (index, name) == (0, "DKIM-Signature") and "d=bpkd.jakarta.go.id" in value
    body = b"".join(packets_of(b"b", packets))
    assert b"Surel ini diperiksa / This message was checked." in body
    assert body.startswith(b"Selamat pagi.\r\n.titik di awal baris\r\n")


def test_garbage_on_the_milter_port_is_closed_and_the_next_mta_served(
    milter_gw: MilterGateway,
) -> None:
    async def scenario() -> list[Packet]:
        bad = await Mta.connect(milter_gw.address)
        bad.send_raw(struct.pack(">I", 1 << 30) + b"O")
        await bad.writer.drain()
        assert await bad.closed()
        await bad.close()
        return await milter_gw.send(SENDER, ["sari@example.org"], PLAIN, mail_macros=MAIL_MACROS)

    packets = asyncio.run(scenario())
    assert [chr(p.command) for p in packets] == ["a"]
    assert "Traceback" not in milter_gw.gw.log()


def test_proxy_and_milter_in_one_process(gateway_factory: Any, tmp_path: Path, sink: Sink) -> None:
    """Both front-ends over one pipeline: the same policy and quarantine answer both."""
    import smtplib
    import urllib.request

    address = f"inet:127.0.0.1:{free_port()}"
    mport = free_port()
    gw = gateway_factory(
        milter={"listen": [address]},
        upstream=f"smtp://127.0.0.1:{sink.port}",
        routes={"sanapati": {"url": f"maildir:{tmp_path}/sanapati", "tls": "none"}},
        policy=POLICY,
        notices={"enabled": False},
        metrics=f"127.0.0.1:{mport}",
    )
    front = MilterGateway(gw, address, tmp_path)
    assert [chr(p.command) for p in front.run(SENDER, ["sari@gmail.com"], RAHASIA)] == ["d"]
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as s:
        s.sendmail(SENDER, ["sari@gmail.com"], RAHASIA)
    held = front.quarantine()
    assert sorted(h["frontend"] for h in held) == ["milter", "smtp"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
    for frontend in ("milter", "smtp"):
        assert f'milter_messages_total{{frontend="{frontend}",outcome="quarantined"}} 1.0' in text
    assert 'milter_messages_total{frontend="milter",outcome="rejected"} 0.0' in text


def test_two_workers_share_inet_and_unix_milter_sockets(
    gateway_factory: Any, tmp_path: Path, sink: Sink
) -> None:
    inet = f"inet:127.0.0.1:{free_port()}"
    unix = f"unix:{tmp_path}/milter.sock"
    gw = gateway_factory(
        listen=[],
        milter={"listen": [inet, unix]},
        upstream=f"smtp://127.0.0.1:{sink.port}",
        routes={"sanapati": {"url": f"maildir:{tmp_path}/sanapati", "tls": "none"}},
        policy=POLICY,
        notices={"enabled": False},
        workers=2,
    )
    assert gw.wait_log('"event": "listening"', 2)
    for address in (inet, unix) * 3:
        front = MilterGateway(gw, address, tmp_path)
        assert [chr(p.command) for p in front.run(SENDER, ["sari@gmail.com"], RAHASIA)] == ["d"]
    assert len(front.quarantine()) == 6
    assert gw.stop() == 0
    assert not (tmp_path / "milter.sock").exists()


def test_a_hold_whose_result_the_mta_never_heard_is_withdrawn(
    gateway_factory: Any, tmp_path: Path, sink: Sink
) -> None:
    """Postfix went away (its own milter timeout, a restart) while the hold was being
    written: it has not queued the message and its client sends it again, so the hold
    is taken back rather than left to become a second one."""
    import sqlite3
    import time

    from milter.milterproto import codec
    from tests.milterproto.mta import macro_data, split_message

    address = f"inet:127.0.0.1:{free_port()}"
    gw = gateway_factory(
        listen=[],
        milter={"listen": [address], "progress_interval": "0.3s"},
        upstream=f"smtp://127.0.0.1:{sink.port}",
        routes={"sanapati": {"url": f"maildir:{tmp_path}/sanapati", "tls": "none"}},
        policy=POLICY,
        notices={"enabled": False},
        quarantine={
            "database": f"sqlite:///{tmp_path}/q.sqlite3",
            "spool": str(tmp_path / "spool"),
            "timeout": "20s",
        },
    )
    milter_gw = MilterGateway(gw, address, tmp_path)

    async def hang_up_during_the_hold() -> None:
        mta = await Mta.connect(milter_gw.address)
        await mta.negotiate()
        await mta.session(hostname="pc-budi.bpkd.jakarta.go.id", address="10.20.30.40", helo="x")
        headers, body = split_message(RAHASIA)
        await mta.envelope(SENDER, ["sari@gmail.com"], mail_macros=MAIL_MACROS)
        await mta.content(headers, [body])
        mta.send(codec.SMFIC_MACRO, macro_data("E", EOM_MACROS))
        mta.send(codec.SMFIC_BODYEOB)
        await mta.writer.drain()
        # The filter tells the MTA to be patient while the store is locked: then hang up.
        packet = await mta.read(20)
        assert packet is not None and packet.command == codec.SMFIR_PROGRESS, packet
        await mta.close()

    db = sqlite3.connect(tmp_path / "q.sqlite3", isolation_level=None, timeout=20)
    db.execute("BEGIN EXCLUSIVE")
    try:
        asyncio.run(hang_up_during_the_hold())
        assert milter_gw.gw.wait_log("milter.mta_gone")
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert milter_gw.gw.wait_log("reply-lost")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        records = milter_gw.quarantine()
        if records and all(r["status"] == "deleted" for r in records):
            break
        time.sleep(0.1)
    assert [r["status"] for r in milter_gw.quarantine()] == ["deleted"]
    # The MTA's retry is held once.
    packets = milter_gw.run(SENDER, ["sari@gmail.com"], RAHASIA)
    assert [chr(p.command) for p in packets] == ["d"]
    assert sorted(r["status"] for r in milter_gw.quarantine()) == ["deleted", "held"]
