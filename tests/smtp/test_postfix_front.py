"""The SMTP proxy as Postfix fronts it (``smtpd_proxy_filter``): DSN parameters pass
through, and XFORWARD tells the gateway who the original client was.

A real gateway process over loopback; the next hop is a scripted one that records
the exact command lines it receives, so the assertions are on the wire.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.scripted_hop import ORDINARY_EXTENSIONS, Script, ScriptedHop
from tests.smtp.conftest import Client, Closed

POLICY = str(ROOT / "policies" / "se-79-2019.yaml")
MESSAGE = (
    b"From: Budi <budi@dinas.jakarta.go.id>\r\nTo: sari@example.org\r\n"
    b"Subject: Laporan mingguan\r\n\r\nSelamat pagi.\r\n.\r\n"
)


@pytest.fixture
def hop() -> Iterator[ScriptedHop]:
    h = ScriptedHop(Script(extensions=(*ORDINARY_EXTENSIONS, b"DSN")))
    yield h
    h.close()


@pytest.fixture
def plain_hop() -> Iterator[ScriptedHop]:
    h = ScriptedHop(Script())
    yield h
    h.close()


def send(port: int, commands: list[bytes], message: bytes = MESSAGE) -> list[int]:
    """One transaction, command by command; the codes of every reply, DATA's last."""
    with Client(port) as c:
        c.ehlo()
        codes = [c.cmd(line).code for line in commands]
        if codes and codes[-1] == 354:
            c.send(message)
            codes.append(c.reply().code)
        c.cmd(b"QUIT")
    return codes


def test_ehlo_offers_dsn_and_xforward_to_clients(gateway_factory: Any, hop: ScriptedHop) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{hop.port}")
    with Client(gw.port) as c:
        lines = c.ehlo().text.decode()
    assert "250-DSN" in lines
    assert "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE" in lines


def test_xforward_is_offered_and_allowed_only_to_clients(
    gateway_factory: Any, hop: ScriptedHop
) -> None:
    # 127.0.0.1 is a client of this gateway only through 127.0.0.2's network: it is not.
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{hop.port}", clients=["10.0.0.0/8"])
    # An outsider is turned away at connect: it never gets to say who anyone is.
    with Client(gw.port) as c:
        assert c.greeting.code == 554
        assert c.rest() == b""
    with Client(gw.port) as c, contextlib.suppress(OSError, Closed):
        c.send(b"EHLO x\r\nXFORWARD ADDR=10.1.2.3\r\n")
        assert b"XFORWARD" not in c.rest()


def test_dsn_parameters_reach_a_next_hop_that_offers_dsn(
    gateway_factory: Any, hop: ScriptedHop
) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{hop.port}")
    codes = send(
        gw.port,
        [
            b"MAIL FROM:<budi@dinas.jakarta.go.id> RET=HDRS ENVID=Laporan+2BMinggu-42",
            b"RCPT TO:<sari@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Sari+40example.org",
            b"RCPT TO:<tim@example.org> NOTIFY=NEVER",
            b"DATA",
        ],
    )
    assert codes == [250, 250, 250, 354, 250]
    assert hop.wait(lambda: len(hop.messages) == 1)
    mail = [c for c in hop.commands if c.startswith(b"MAIL")]
    rcpts = [c for c in hop.commands if c.startswith(b"RCPT")]
    # Case kept exactly: ENVID and ORCPT are opaque to every hop but the last.
    assert b" RET=HDRS" in mail[0] and b" ENVID=Laporan+2BMinggu-42" in mail[0]
    assert rcpts == [
        b"RCPT TO:<sari@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Sari+40example.org",
        b"RCPT TO:<tim@example.org> NOTIFY=NEVER",
    ]


def test_dsn_parameters_are_dropped_for_a_next_hop_without_dsn(
    gateway_factory: Any, plain_hop: ScriptedHop
) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{plain_hop.port}")
    codes = send(
        gw.port,
        [
            b"MAIL FROM:<budi@dinas.jakarta.go.id> RET=FULL ENVID=x",
            b"RCPT TO:<sari@example.org> NOTIFY=DELAY",
            b"DATA",
        ],
    )
    assert codes == [250, 250, 354, 250]
    assert plain_hop.wait(lambda: len(plain_hop.messages) == 1)
    assert not any(b"RET=" in c or b"NOTIFY=" in c for c in plain_hop.commands)


@pytest.mark.parametrize(
    "line",
    [
        b"MAIL FROM:<a@dinas.jakarta.go.id> RET=BODY",
        b"MAIL FROM:<a@dinas.jakarta.go.id> RET=HDRS RET=FULL",
        b"MAIL FROM:<a@dinas.jakarta.go.id> ENVID=with\xc3\xa9accent",
        b"MAIL FROM:<a@dinas.jakarta.go.id> NOTIFY=NEVER",
    ],
)
def test_bad_mail_parameters_are_refused(
    gateway_factory: Any, hop: ScriptedHop, line: bytes
) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{hop.port}")
    with Client(gw.port) as c:
        c.ehlo()
        answer = c.cmd(line)
        assert answer.code in (501, 555), answer
        assert answer.enhanced
        # The session goes on: a good MAIL after a bad one is accepted.
        assert c.cmd(b"MAIL FROM:<a@dinas.jakarta.go.id>").code == 250


@pytest.mark.parametrize(
    "line", [b"RCPT TO:<b@example.org> NOTIFY=SOMETIMES", b"RCPT TO:<b@example.org> ORCPT=x"]
)
def test_bad_rcpt_parameters_are_refused(
    gateway_factory: Any, hop: ScriptedHop, line: bytes
) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{hop.port}")
    with Client(gw.port) as c:
        c.ehlo()
        assert c.cmd(b"MAIL FROM:<a@dinas.jakarta.go.id>").code == 250
        assert c.cmd(line).code == 501
        assert c.cmd(b"RCPT TO:<b@example.org>").code == 250


def quarantine_list(gw: Any) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "milter", "-c", str(gw.config_path), "quarantine", "list", "--json"],
        capture_output=True,
        check=True,
        cwd=ROOT,
    )
    return list(json.loads(out.stdout))


def log_lines(gw: Any) -> list[dict[str, Any]]:
    out = []
    for line in gw.log().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_xforward_names_the_original_client_in_the_hold_and_log(
    gateway_factory: Any, hop: ScriptedHop, tmp_path: Path
) -> None:
    gw = gateway_factory(
        upstream=f"smtp://127.0.0.1:{hop.port}",
        policy=POLICY,
        notices={"enabled": False},
        routes={"sanapati": {"url": f"maildir:{tmp_path}/sanapati", "tls": "none"}},
    )
    rahasia = MESSAGE.replace(b"Laporan mingguan", b"[RAHASIA] Nota dinas")
    with Client(gw.port) as c:
        c.ehlo(b"mx.jakarta.go.id")
        xf1 = c.cmd(b"XFORWARD NAME=pc-budi.bpkd.jakarta.go.id ADDR=10.20.30.40 PORT=51234")
        xf2 = c.cmd(b"XFORWARD HELO=pc-budi IDENT=4XyZ1abcDE PROTO=ESMTP SOURCE=REMOTE")
        assert (xf1.code, xf2.code) == (250, 250)
        assert c.cmd(b"MAIL FROM:<budi@bpkd.jakarta.go.id> AUTH=budi+40bpkd").code == 250
        assert c.cmd(b"RCPT TO:<sari@gmail.com>").code == 250
        assert c.cmd(b"DATA").code == 354
        c.send(rahasia)
        assert c.reply().code == 250
        # Attributes hold for one transaction only: the next one is the proxy's own.
        assert c.cmd(b"MAIL FROM:<budi@bpkd.jakarta.go.id>").code == 250
        assert c.cmd(b"RCPT TO:<sari@gmail.com>").code == 250
        assert c.cmd(b"DATA").code == 354
        c.send(rahasia)
        assert c.reply().code == 250
        c.cmd(b"QUIT")
    first, second = sorted(quarantine_list(gw), key=lambda r: r["received_at"])
    assert first["client_address"] == "10.20.30.40"
    assert first["client_name"] == "pc-budi.bpkd.jakarta.go.id"
    assert first["helo"] == "pc-budi"
    assert first["queue_id"] == "4XyZ1abcDE"
    assert first["login"] == "budi@bpkd"
    assert first["frontend"] == "smtp"
    assert second["client_address"] == "127.0.0.1"
    assert second["client_name"] == "" and second["login"] == ""
    assert second["queue_id"] == second["transaction_id"]
    lines = [x for x in log_lines(gw) if x.get("event") == "message"]
    assert lines[0]["client_address"] == "10.20.30.40" and lines[0]["queue_id"] == "4XyZ1abcDE"
    assert lines[0]["login"] == "budi@bpkd" and lines[0]["frontend"] == "smtp"


@pytest.mark.parametrize(
    "line",
    [b"XFORWARD", b"XFORWARD COLOUR=blue", b"XFORWARD ADDR", b"XFORWARD NAME=a+0Db"],
)
def test_bad_xforward_is_refused(gateway_factory: Any, hop: ScriptedHop, line: bytes) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{hop.port}")
    with Client(gw.port) as c:
        c.ehlo()
        assert c.cmd(line).code == 501
        assert c.cmd(b"MAIL FROM:<a@dinas.jakarta.go.id>").code == 250
        assert c.cmd(b"XFORWARD ADDR=10.0.0.1").code == 503
