"""Which messages are inspected on the spot (milter.inspect.simple): the check may turn
away a simple message, but must never admit one whose inspection can cost more than
its size (anything that is unpacked, rendered, decompressed or OCR'd)."""

from __future__ import annotations

import base64
import time
from email.mime.application import MIMEApplication
from email.mime.image import MIMEImage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.messages import jpeg, pdf, small_message
from milter.inspect import inspect_message
from milter.inspect.simple import cheap_to_inspect
from tests.corpus import corpus_root
from tests.inspect import hostile

LIMIT = 32 * 1024
CORPUS = corpus_root() / "real"


def _mail(*parts: MIMEText | MIMEApplication | MIMEImage) -> bytes:
    msg = MIMEMultipart("mixed")
    msg["Subject"] = "Laporan"
    msg["From"] = "budi@dinas.jakarta.go.id"
    msg["To"] = "sari@example.org"
    for p in parts:
        msg.attach(p)
    return msg.as_bytes()


def test_plain_and_html_notes_qualify() -> None:
    assert cheap_to_inspect(small_message(), LIMIT)
    alt = MIMEMultipart("alternative")
    alt.attach(MIMEText("Sifat : Rahasia\n", "plain", "utf-8"))
    alt.attach(MIMEText("<p>Sifat : Rahasia</p>", "html", "utf-8"))
    assert cheap_to_inspect(alt.as_bytes(), LIMIT)


def test_size_limit() -> None:
    body = MIMEText("x" * 40_000, "plain", "utf-8").as_bytes()
    assert not cheap_to_inspect(body, LIMIT)
    assert cheap_to_inspect(body, 1 << 20)


@pytest.mark.parametrize(
    "part",
    [
        pytest.param(lambda: MIMEApplication(pdf(["SANGAT RAHASIA"]), "pdf"), id="pdf"),
        pytest.param(lambda: MIMEImage(jpeg(64, 48, seed=1), "jpeg"), id="image"),
        pytest.param(lambda: MIMEApplication(b"PK\x03\x04" + b"\0" * 40, "zip"), id="zip"),
    ],
)
def test_files_never_qualify(part: object) -> None:
    assert not cheap_to_inspect(_mail(MIMEText("lihat lampiran"), part()), LIMIT)  # type: ignore[operator]


def test_named_text_parts_are_files() -> None:
    """A part with a name is examined as a file (sniffed and unpacked) whatever it
    declares, so a zip labelled text/plain must not pass as a body."""
    named = MIMEText("PK\x03\x04 not really text", "plain")
    named.add_header("Content-Disposition", "attachment", filename="data.txt")
    assert not cheap_to_inspect(_mail(named), LIMIT)
    folded = (
        b"From: a@b\r\nMIME-Version: 1.0\r\nContent-Type: text/plain;\r\n"
        b'\tname="x.zip"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + base64.b64encode(b"PK\x03\x04")
        + b"\r\n"
    )
    assert not cheap_to_inspect(folded, LIMIT)
    inline = MIMEText("Sifat : Rahasia", "plain")
    inline.add_header("Content-Disposition", "inline")
    assert cheap_to_inspect(_mail(inline), LIMIT)


def test_what_the_inspector_decodes_from_text_never_qualifies() -> None:
    uu = b"From: a@b\r\n\r\nbegin 644 surat.pdf\r\nM)5!$1@``\r\n`\r\nend\r\n"
    assert not cheap_to_inspect(uu, LIMIT)
    for ctype in (b"message/rfc822", b"application/pkcs7-mime", b"text/csv", b""):
        msg = b"From: a@b\r\nContent-Type: " + ctype + b"\r\n\r\nhello\r\n"
        assert not cheap_to_inspect(msg, LIMIT), ctype
    odd = b"From: a@b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uue\r\n\r\nx\r\n"
    assert not cheap_to_inspect(odd, LIMIT)


def test_hostile_text_messages_that_qualify_stay_cheap() -> None:
    """The HTML inputs that once froze a worker, cut to the size that qualifies, and
    every qualifying corpus message: each inspects in milliseconds."""
    samples = [hostile.html_comments(2_000), hostile.html_scripts(1_500)]
    corpus = sorted(CORPUS.rglob("*.eml")) if CORPUS.is_dir() else []
    samples += [p.read_bytes() for p in corpus]
    qualifying = [s for s in samples if cheap_to_inspect(s, LIMIT)]
    assert len(qualifying) >= (50 if corpus else 2)
    worst = 0.0
    for data in qualifying:
        t0 = time.process_time()
        inspect_message(data)
        worst = max(worst, time.process_time() - t0)
    # Generous for a loaded CI machine: a qualifying message costs well under 10 ms.
    assert worst < 0.5, worst


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from([b"application/zip", b"image/png", b"text/csv"]))
def test_a_non_text_type_anywhere_refuses(noise: bytes, ctype: bytes) -> None:
    data = b"From: a@b\r\n\r\n" + noise + b"\r\nContent-Type: " + ctype + b"\r\n\r\nx"
    assert not cheap_to_inspect(data, LIMIT)
