"""Inspection end to end: a message that once kept a worker busy for a minute (25,000
unterminated properties, a quadratic parse) is read in linear time, answered at once,
and never holds up the messages behind it. (The pool's kill at the hard budget is shown
with a deliberately slow inspector in test_inspection_pool.py.)"""

from __future__ import annotations

import io
import smtplib
import threading
import zipfile
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, Sink

POLICY = str(ROOT / "policies" / "se-79-2019.yaml")
SENDER = "budi@bpkd.jakarta.go.id"


def quadratic_docx() -> bytes:
    """1 KB that took the inspector about a minute: 25,000 unterminated properties."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/'
            '2006/content-types"><Override PartName="/word/document.xml" ContentType="'
            'application/vnd.openxmlformats-officedocument.wordprocessingml.document.main'
            '+xml"/></Types>',
        )
        z.writestr(
            "word/document.xml",
            '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/'
            'main"><w:body><w:p><w:r><w:t>hi</w:t></w:r></w:p></w:body></w:document>',
        )
        z.writestr("docProps/custom.xml", "<Properties>" + "<property " * 25000)
    m = MIMEMultipart()
    m["From"], m["To"], m["Subject"] = SENDER, "sari@gmail.com", "Laporan"
    m.attach(MIMEText("terlampir"))
    m.attach(MIMEApplication(buf.getvalue(), Name="laporan.docx"))
    return m.as_bytes()


CLEAN = (
    b"From: budi@bpkd.jakarta.go.id\r\nTo: sari@example.org\r\nSubject: Jadwal rapat\r\n\r\n"
    b"Rapat pukul 10.\r\n"
)


def test_a_message_that_froze_a_worker_is_answered_and_others_go_on(
    gateway_factory: Any, sink: Sink, tmp_path: Path
) -> None:
    gw = gateway_factory(
        upstream=f"smtp://127.0.0.1:{sink.port}",
        routes={"sanapati": {"url": f"maildir:{tmp_path}/sanapati"}},
        policy=POLICY,
        notices={"enabled": False},
        inspect={"time_budget": "1s", "processes": 2},
    )
    slow_reply: list[tuple[int, bytes]] = []
    sent = threading.Event()

    def send_slow() -> None:
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=60) as s:
            s.ehlo("pc-budi")
            s.mail(SENDER)
            s.rcpt("sari@gmail.com")
            s.putcmd("data")
            assert s.getreply()[0] == 354
            s.send(quadratic_docx().replace(b"\n", b"\r\n") + b".\r\n")
            sent.set()  # all of it is at the gateway: from here it is being inspected
            slow_reply.append(s.getreply())

    slow = threading.Thread(target=send_slow)
    slow.start()
    assert sent.wait(30)
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as s:
        s.sendmail(SENDER, ["sari@example.org"], CLEAN)
    assert [m.rcpt_tos for m in sink.wait_for(1)] == [["sari@example.org"]]
    slow.join(60)
    assert slow_reply and slow_reply[0][0] == 250, slow_reply
    # Read whole: garbage XML holds no label, so nothing is held; nothing hung either.
    got = sink.wait_for(2)
    assert sorted(m.rcpt_tos[0] for m in got) == ["sari@example.org", "sari@gmail.com"]
    assert '"event": "inspection-killed"' not in gw.log()
