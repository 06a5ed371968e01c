"""Text from a message cannot be turned against whoever reads it.

A subject or file name with terminal escapes (clear the screen, retitle the window),
C1 controls and bidi overrides is held; the officer's CLI, the notices and the log
show each such character as a visible escape, and ``--json`` keeps the exact value.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import logging
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote

import pytest

from milter.log import JsonFormatter
from milter.text import json_dumps, printable
from tests.conftest import ROOT, GatewayProcess, Received, Sink
from tests.smtp.conftest import log_problems

OFFICER = "kepatuhan@jakarta.go.id"
SENDER = "budi@dinas.jakarta.go.id"
# Clear the screen, set the window title (OSC ... BEL), an 8-bit CSI (C1), DEL, and a
# right-to-left override that makes "fdp.exe" read as "exe.pdf".
EVIL = "Laporan \x1b[2J\x1b]0;pwned\x07 \x9b31m merah\x7f \u202efdp.exe"
EVIL_SHOWN = "Laporan \\x1b[2J\\x1b]0;pwned\\x07 \\x9b31m merah\\x7f \\u202efdp.exe"
FILENAME = "nota\x1b[2J\x1b]0;pwned\x07\u202efdp.exe"
FILENAME_SHOWN = "nota\\x1b[2J\\x1b]0;pwned\\x07\\u202efdp.exe"
# What must never reach a reader raw: C0 but TAB (LF/CR are only checked where
# they are not the output's own line structure), DEL, C1 and the bidi controls.
RAW = {chr(c) for c in [*range(0x00, 0x09), *range(0x0B, 0x0D), *range(0x0E, 0x20)]}
RAW |= {chr(c) for c in range(0x7F, 0xA0)}
RAW |= {chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]}

POLICY = """\
version: 1
domains:
  internal: [jakarta.go.id, "*.jakarta.go.id"]
rules:
  - name: lampiran-keluar
    description: Attachments to outside addresses are held
    clause: "3.b"
    when:
      attachment: {size: {min: 1}}
      recipient: {not_in: internal}
    then:
      - quarantine
      - notify: [sender, officers]
"""


def raw_in(text: str) -> set[str]:
    return {c for c in text if c in RAW}


def hostile_message() -> bytes:
    """Subject as an RFC 2047 encoded word and the file name in RFC 2231 form: the
    ordinary ways a mail client carries such text, decoded by every reader."""
    subject = base64.b64encode(EVIL.encode()).decode()
    name = quote(FILENAME.encode(), safe="")
    pdf = base64.b64encode(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n")
    return (
        f"From: {SENDER}\r\nTo: sari@gmail.com\r\nSubject: =?utf-8?b?{subject}?=\r\n"
        "Message-ID: <evil1@dinas.jakarta.go.id>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nTerlampir.\r\n"
        f"--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        f"Content-Disposition: attachment; filename*=utf-8''{name}\r\n\r\n"
        f"{pdf.decode()}\r\n--b1--\r\n"
    ).encode()


def milter(gw: Any, *args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "milter", "-c", str(gw.config_path), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        encoding="utf-8",
    )
    assert r.returncode == 0, r.stderr
    return r


def wait_notices(sink: Sink, count: int, timeout: float = 10.0) -> list[Received]:
    """The notices (null sender) at the sink, once ``count`` have arrived."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in sink.messages if m.mail_from in ("", "<>")]
        if len(found) >= count:
            return found
        time.sleep(0.02)
    raise AssertionError(f"{count} notices expected, got {sink.messages}")


@dataclass
class Held:
    """A gateway that held the hostile message, and what it said about it."""

    gw: GatewayProcess
    qid: str
    notices: list[Received]
    sink: Sink


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Held]:
    tmp = tmp_path_factory.mktemp("printable")
    (tmp / "policy.yaml").write_text(POLICY)
    sink = Sink()
    sink.controller.start()
    gw = GatewayProcess(
        tmp,
        {
            "upstream": f"smtp://127.0.0.1:{sink.port}",
            "policy": str(tmp / "policy.yaml"),
            "notices": {"from": "postmaster@jakarta.go.id", "officers": [OFFICER]},
        },
    )
    try:
        gw.start()
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as s:
            s.ehlo("dinas.jakarta.go.id")
            assert s.sendmail(SENDER, ["sari@gmail.com"], hostile_message()) == {}
        notices = wait_notices(sink, 2)
        [record] = json.loads(milter(gw, "quarantine", "list", "--json").stdout)
        yield Held(gw, record["id"], notices, sink)
    finally:
        gw.stop()
        sink.controller.stop()
    problems = log_problems(gw.log())
    assert not problems, "\n".join(problems)


def test_list_table_shows_escapes_not_controls(held: Held) -> None:
    gw, qid = held.gw, held.qid
    out = milter(gw, "quarantine", "list").stdout
    assert raw_in(out) == set()
    [row] = [line for line in out.splitlines() if line.startswith(qid)]
    assert "Laporan \\x1b[2J\\x1b]0;pwned\\x07" in row
    assert "\t" not in row


def test_list_json_keeps_the_exact_value_and_escapes_every_control(held: Held) -> None:
    gw = held.gw
    out = milter(gw, "quarantine", "list", "--json").stdout
    # json.dumps escapes C0 controls but leaves DEL, C1 and bidi controls raw when
    # ensure_ascii is off: the CLI escapes those too, and the value stays exact.
    assert json.dumps(EVIL, ensure_ascii=False).count("\u202e") == 1
    assert raw_in(out.replace("\n", "")) == set()
    assert "\\u001b[2J" in out and "\\u009b" in out and "\\u202e" in out
    [record] = json.loads(out)
    assert record["subject"] == EVIL


def test_show_escapes_headers_parts_and_findings(held: Held) -> None:
    gw, qid = held.gw, held.qid
    out = milter(gw, "quarantine", "show", qid).stdout
    assert raw_in(out) == set()
    assert f"  Subject: {EVIL_SHOWN}" in out.splitlines()
    [part] = [line for line in out.split("Parts:", 1)[1].splitlines() if "application/pdf" in line]
    assert f'"{FILENAME_SHOWN}"' in part
    findings = out.split("Findings:", 1)[1].split("Headers:", 1)[0]
    assert "\\u001b]0;pwned\\u0007\\u202efdp.exe" in findings

    shown = milter(gw, "quarantine", "show", qid, "--json").stdout
    assert raw_in(shown.replace("\n", "")) == set()
    assert json.loads(shown)["subject"] == EVIL


def test_notice_and_officer_alert_show_escapes(held: Held) -> None:
    qid, notices = held.qid, held.notices
    by_rcpt = {tuple(n.rcpt_tos): n for n in notices}
    assert set(by_rcpt) == {(SENDER,), (OFFICER,)}
    for notice in notices:
        msg = email.message_from_bytes(notice.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        subject = str(msg["Subject"])
        body = msg.get_body(("plain",))
        assert body is not None
        text = body.get_content()
        assert raw_in(subject) == set() and raw_in(text) == set(), notice.rcpt_tos
        assert EVIL_SHOWN in subject and EVIL_SHOWN in text
    alert = email.message_from_bytes(by_rcpt[(OFFICER,)].data, policy=email.policy.default)
    assert isinstance(alert, EmailMessage)
    alert_body = alert.get_body(("plain",))
    assert alert_body is not None
    alert_text = alert_body.get_content()
    assert qid in alert_text
    # The reasons name the attachment: the file name is shown escaped there too.
    assert FILENAME_SHOWN in alert_text


def test_log_line_escapes_c1_and_bidi_in_an_address(held: Held) -> None:
    gw, sink = held.gw, held.sink
    sender = "budi\u202e\x85@dinas.jakarta.go.id"  # SMTPUTF8 lets both through
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as s:
        s.ehlo("dinas.jakarta.go.id")
        refused = s.sendmail(
            sender,
            ["sari@dinas.jakarta.go.id"],
            b"Subject: biasa\r\n\r\nisi\r\n",
            mail_options=["SMTPUTF8"],
        )
    assert refused == {}
    deadline = time.monotonic() + 10
    while not any(m.mail_from == sender for m in sink.messages):
        assert time.monotonic() < deadline, sink.messages
        time.sleep(0.02)
    lines = [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
    assert [r["sender"] for r in lines if r.get("sender") == sender]
    assert raw_in(gw.log().replace("\n", "")) == set()
    assert "budi\\u202e\\u0085@dinas" in gw.log()


# -- the function itself ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[2J", "\\x1b[2J"),
        ("\x00\x07\x08\n\r\x1f", "\\x00\\x07\\x08\\x0a\\x0d\\x1f"),
        ("a\tb", "a\tb"),
        ("\x7f\x80\x9b\x9f", "\\x7f\\x80\\x9b\\x9f"),
        ("\u202a\u202b\u202c\u202d\u202e", "\\u202a\\u202b\\u202c\\u202d\\u202e"),
        ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),
        ("\udcff", "\\udcff"),
        ("Surat édaran 79 — مرحبا 雅加达 \u00a0", "Surat édaran 79 — مرحبا 雅加达 \u00a0"),
        ("C:\\x1b\\path", "C:\\x1b\\path"),
    ],
)
def test_printable(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert printable(shown) == shown  # nothing left to escape: applying twice is harmless


def test_json_dumps_round_trips_and_escapes_what_json_leaves_raw() -> None:
    value = {"s": EVIL + "\x85\u2066\udcff é"}
    encoded = json_dumps(value, indent=1)
    assert raw_in(encoded.replace("\n", "")) == set()
    assert "\udcff" not in encoded and "é" in encoded
    assert json.loads(encoded) == value


def test_log_formatter_escapes_c1_and_bidi() -> None:
    record = logging.LogRecord("milter", logging.INFO, __file__, 1, "message", None, None)
    record.fields = {"event": "message", "subject": EVIL}
    line = JsonFormatter().format(record)
    assert raw_in(line) == set()
    assert json.loads(line)["subject"] == EVIL


def test_printable_output_is_one_line() -> None:
    assert printable("one\ntwo\r\nthree") == "one\\x0atwo\\x0d\\x0athree"
