"""The SMTP front-end under hostile input, over real loopback sockets.

A real ``milter serve`` sits between a byte-exact client and a next hop (an aiosmtpd
sink, or a scripted server that misbehaves on purpose). The promises checked: 250 to
DATA only once the next hop took the message; upstream trouble is 4xx; bad input gets
a clear reply with an enhanced status code, never a traceback in the log, never a
hang; after a refused transaction the session goes on.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, GatewayProcess, Sink
from tests.smtp.conftest import (
    COMMAND_TIMEOUT,
    DATA_TIMEOUT,
    MAX_RCPTS,
    MAX_SIZE,
    Client,
    NextHop,
    ScriptedUpstream,
    SharedGateway,
    body_of,
    log_problems,
)

SENDER = b"budi@dinas.jakarta.go.id"
RCPT = b"sari@example.org"
MESSAGE = (b"From: Budi <budi@dinas.jakarta.go.id>\r\nTo: sari@example.org\r\n"
           b"Subject: Laporan\r\n\r\nSelamat pagi.\r\n")


@pytest.fixture
def gw(shared: SharedGateway) -> Iterator[SharedGateway]:
    """The shared gateway with an empty sink; the test's log lines must be clean."""
    shared.sink.handler.messages.clear()
    start = len(shared.process.log())
    yield shared
    time.sleep(0.05)  # let the gateway log what the test's last close caused
    problems = log_problems(shared.process.log()[start:])
    assert not problems, "\n".join(problems)


def delivered(gw: SharedGateway, count: int) -> list[bytes]:
    """The bodies the sink holds, once ``count`` arrived (the DATA reply came first)."""
    return [body_of(m.data) for m in gw.sink.wait_for(count, timeout=2)]


def transaction(c: Client, data: bytes, sender: bytes = SENDER,
                rcpts: tuple[bytes, ...] = (RCPT,)) -> Any:
    """One whole transaction; ``data`` is sent as is (already stuffed and terminated)."""
    c.envelope(sender, list(rcpts))
    c.send(data)
    return c.reply()


def clean_message_goes_through(c: Client, gw: SharedGateway, already: int = 0) -> None:
    answer = transaction(c, MESSAGE + b".\r\n")
    assert answer.code == 250 and answer.enhanced, answer
    assert delivered(gw, already + 1)[-1] == MESSAGE


# -- DATA: line endings and smuggling ---------------------------------------------

def test_bare_lf_lines_are_relayed_as_crlf(gw: SharedGateway) -> None:
    data = b"Subject: bare\n\nline one\nline two\r\nline three\n"
    with Client(gw.port) as c:
        c.ehlo()
        answer = transaction(c, data + b"\r\n.\r\n")
        assert answer.code == 250, answer
    assert delivered(gw, 1) == [data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"]


SMUGGLED = (b"MAIL FROM:<ceo@example.org>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nnot from the client\r\n")


@pytest.mark.parametrize("before", [b"first line", b"a sentence."])
@pytest.mark.parametrize("sequence", [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r.\r\n",
                                      b"\n.\r"])
def test_smuggling_never_ends_the_message_early(gw: SharedGateway, sequence: bytes,
                                                before: bytes) -> None:
    with Client(gw.port) as c:
        c.ehlo()
        answer = transaction(c, b"Subject: x\r\n\r\n" + before + sequence + SMUGGLED
                             + b"\r\n.\r\n")
        assert answer.code == 554 and b"5.6.0" in answer.text, answer
        # The next reply answers NOOP: nothing inside the DATA ran as a command.
        assert c.cmd(b"NOOP").code == 250
        clean_message_goes_through(c, gw)
    assert delivered(gw, 1) == [MESSAGE]
    assert [m.rcpt_tos for m in gw.sink.messages] == [[RCPT.decode()]]


def test_smuggling_split_across_writes(gw: SharedGateway) -> None:
    with Client(gw.port) as c:
        c.ehlo()
        c.envelope(SENDER, [RCPT])
        for part in (b"Subject: x\r\n\r\nend.\r", b"\n", b".", b"\n", SMUGGLED, b"\r\n.\r\n"):
            c.send(part)
            time.sleep(0.02)
        answer = c.reply()
        assert answer.code == 554 and b"5.6.0" in answer.text, answer
        assert c.cmd(b"NOOP").code == 250
    assert gw.sink.wait_for(1, timeout=0.3) == []


def test_dots_that_are_not_terminators_pass_unchanged(gw: SharedGateway) -> None:
    text = (b"Subject: dots\r\n\r\nends with a dot.\r\n.\r\n..\r\n...\r\n.x\r\n"
            b"a.\r\n.\r\nlast.\r\n")
    stuffed = text.replace(b"\r\n.", b"\r\n..")
    with Client(gw.port) as c:
        c.ehlo()
        assert transaction(c, stuffed + b".\r\n").code == 250
    assert delivered(gw, 1) == [text]


def test_empty_message(gw: SharedGateway) -> None:
    with Client(gw.port) as c:
        c.ehlo()
        answer = transaction(c, b".\r\n")
        assert answer.code == 250, answer
        assert c.cmd(b"QUIT").code == 221
    assert delivered(gw, 1) == [b""]


def test_first_line_starting_with_a_dot(gw: SharedGateway) -> None:
    with Client(gw.port) as c:
        c.ehlo()
        answer = transaction(c, b"..hidden: header-like\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
        assert answer.code == 250, answer
    # The gateway's Received header in front must not turn the stuffed dot into content.
    assert delivered(gw, 1) == [b".hidden: header-like\r\nSubject: x\r\n\r\nbody\r\n"]


def test_nul_and_8bit_bytes_in_data_are_relayed_unchanged(gw: SharedGateway) -> None:
    data = (b"Subject: =?utf-8?q?x?=\r\nX-Raw: \x00\xff\xfe\x80\r\n\r\n"
            b"nul \x00 here, latin-1 \xe9, broken utf-8 \xc3\x28, \x7f\x1b\r\n")
    with Client(gw.port) as c:
        c.ehlo()
        assert transaction(c, data + b".\r\n").code == 250
    assert delivered(gw, 1) == [data]


# -- sizes and lengths --------------------------------------------------------------

def sized(n: int) -> bytes:
    """A message of exactly ``n`` bytes on the wire (CRLF lines, no dots to stuff)."""
    head = b"Subject: size\r\n\r\n"
    lines = (n - len(head)) // 100
    body = (b"x" * 98 + b"\r\n") * lines
    tail = n - len(head) - len(body)
    return head + body + (b"y" * (tail - 2) + b"\r\n" if tail else b"")


def test_message_of_exactly_the_size_limit_and_one_byte_over(gw: SharedGateway) -> None:
    exact, over = sized(MAX_SIZE), sized(MAX_SIZE + 1)
    assert (len(exact), len(over)) == (MAX_SIZE, MAX_SIZE + 1)
    with Client(gw.port) as c:
        c.ehlo()
        assert c.cmd(b"MAIL FROM:<%s> SIZE=%d" % (SENDER, MAX_SIZE + 1)).code == 552
        answer = transaction(c, over + b".\r\n")
        assert answer.code == 552 and b"5.3.4" in answer.text, answer
        answer = transaction(c, exact + b".\r\n")
        assert answer.code == 250, answer
    assert delivered(gw, 1) == [exact]


def test_command_lines_over_the_limit(gw: SharedGateway) -> None:
    with Client(gw.port) as c:
        c.ehlo()
        answer = c.cmd(b"MAIL FROM:<" + b"a" * 600 + b"@example.org>")
        assert answer.code == 500 and answer.enhanced, answer
        # Far past the reader's buffer, sent in pieces: still one reply, then on.
        c.send(b"NOOP " + b"z" * 30000)
        c.send(b"z" * 70000 + b"\r\n")
        answer = c.reply()
        assert answer.code == 500 and answer.enhanced, answer
        assert c.cmd(b"RCPT TO:<" + b"b" * 1000 + b"@example.org>").code == 500
        clean_message_goes_through(c, gw)


# -- commands: order, garbage, bytes --------------------------------------------------

def test_commands_out_of_order(gw: SharedGateway) -> None:
    with Client(gw.port) as c:
        answer = c.cmd(b"MAIL FROM:<%s>" % SENDER)
        assert answer.code == 503 and answer.enhanced, answer      # before HELO
        c.ehlo()
        for line in (b"DATA", b"RCPT TO:<sari@example.org>"):
            answer = c.cmd(line)
            assert answer.code == 503 and answer.enhanced, (line, answer)
        assert c.cmd(b"MAIL FROM:<%s>" % SENDER).code == 250
        answer = c.cmd(b"MAIL FROM:<intruder@example.org>")
        assert answer.code == 503 and answer.enhanced, answer      # nested MAIL
        answer = c.cmd(b"DATA")
        assert answer.code == 503 and answer.enhanced, answer      # no RCPT yet
        assert c.cmd(b"RCPT TO:<%s>" % RCPT).code == 250
        assert c.cmd(b"DATA").code == 354
        c.send(MESSAGE + b".\r\n")
        assert c.reply().code == 250
    [got] = gw.sink.wait_for(1)
    assert (got.mail_from, got.rcpt_tos) == (SENDER.decode(), [RCPT.decode()])


def test_garbage_commands_get_500_and_the_session_goes_on(gw: SharedGateway) -> None:
    with Client(gw.port) as c:
        c.ehlo()
        for line in (b"XYZZY", b"\x00\xff\xfe", b"", b"GET / HTTP/1.1"):
            answer = c.cmd(line)
            assert answer.code == 500 and answer.enhanced, (line, answer)
        clean_message_goes_through(c, gw)


def test_endless_garbage_is_cut_off(gw: SharedGateway) -> None:
    with Client(gw.port) as c:
        c.ehlo()
        c.send(b"".join(b"JUNK%d\r\n" % i for i in range(50)))
        rest = c.rest()   # the gateway gives up and closes; no hang
    codes = [line[:3] for line in rest.splitlines()]
    assert codes and set(codes) <= {b"500", b"502"}, rest
    assert codes[-1] == b"502" and len(codes) < 50


def test_every_refusal_carries_an_enhanced_status_code(gw: SharedGateway) -> None:
    with Client(gw.port) as c:
        c.ehlo()
        refused = [b"STARTTLS", b"MAIL FROM:<%s> FOO=BAR" % SENDER,
                   b"MAIL FROM:<%s> BODY=BINARYMIME" % SENDER, b"MAIL FROM:<%s> SIZE=x" % SENDER,
                   b"MAIL FROM:", b"MAIL FROM:<a@b c.org>", b"EXPN staff", b"EHLO"]
        for line in refused:
            answer = c.cmd(line)
            assert answer.code >= 400 and answer.enhanced, (line, answer)
        c.ehlo()
        assert c.cmd(b"MAIL FROM:<%s>" % SENDER).code == 250
        for line in (b"RCPT TO:<x@example.org> NOTIFY=SOMETIMES", b"RCPT TO:<postmaster>",
                     b"DATA extra"):
            answer = c.cmd(line)
            assert answer.code >= 400 and answer.enhanced, (line, answer)


@pytest.mark.parametrize(("line", "code", "status"), [
    (b"MAIL FROM:<bu\x00di@dinas.jakarta.go.id>", 501, b"5.1.3"),
    (b"MAIL FROM:<budi\xff@dinas.jakarta.go.id>", 501, b"5.1.3"),
    (b"MAIL FROM:<budi@dinas\x07.jakarta.go.id>", 501, b"5.1.3"),
    (b"MAIL FROM:<b\xc3\xbcdi@dinas.jakarta.go.id>", 553, b"5.6.7"),   # no SMTPUTF8
    (b"RCPT TO:<sa\x00ri@example.org>", 501, b"5.1.3"),
    (b"RCPT TO:<sari@exa\xfemple.org>", 501, b"5.1.3"),
    (b"RCPT TO:<s\xc3\xa4ri@example.org>", 553, b"5.6.7"),              # no SMTPUTF8
])
def test_bad_bytes_in_addresses_are_refused_at_once(gw: SharedGateway, line: bytes, code: int,
                                                    status: bytes) -> None:
    with Client(gw.port) as c:
        c.ehlo()
        if line.startswith(b"RCPT"):
            assert c.cmd(b"MAIL FROM:<%s>" % SENDER).code == 250
        answer = c.cmd(line)
        assert (answer.code, answer.enhanced) == (code, True), answer
        assert status in answer.text
        assert c.cmd(b"RSET").code == 250
        clean_message_goes_through(c, gw)
    assert [m.mail_from for m in gw.sink.messages] == [SENDER.decode()]


def test_utf8_addresses_with_smtputf8_are_relayed(gw: SharedGateway) -> None:
    with Client(gw.port) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<büdi@dinas.jakarta.go.id> SMTPUTF8".encode()).code == 250
        assert c.cmd("RCPT TO:<säri@example.org>".encode()).code == 250
        assert c.cmd(b"DATA").code == 354
        c.send(MESSAGE + b".\r\n")
        assert c.reply().code == 250
    [got] = gw.sink.wait_for(1)
    assert (got.mail_from, got.rcpt_tos) == ("büdi@dinas.jakarta.go.id", ["säri@example.org"])


def test_nul_and_8bit_in_helo_stay_out_of_the_received_header(gw: SharedGateway) -> None:
    with Client(gw.port) as c:
        assert c.cmd(b"HELO bad\x00host\xff(x)").code == 250
        assert transaction(c, MESSAGE + b".\r\n").code == 250
    [got] = gw.sink.wait_for(1)
    received = got.data[:got.data.index(MESSAGE)]
    assert received.startswith(b"Received: from badhostx ([127.0.0.1])\r\n"), received
    assert not any(b in received for b in (b"\x00", b"\xff"))


def test_very_many_recipients(gw: SharedGateway) -> None:
    rcpts = [b"r%03d@example.org" % i for i in range(MAX_RCPTS + 50)]
    with Client(gw.port) as c:
        c.ehlo()
        c.send(b"MAIL FROM:<%s>\r\n" % SENDER + b"".join(b"RCPT TO:<%s>\r\n" % r for r in rcpts))
        answers = c.replies(len(rcpts) + 1)
        codes = [a.code for a in answers]
        assert codes == [250] * (MAX_RCPTS + 1) + [452] * 50
        assert all(b"4.5.3" in a.text for a in answers[MAX_RCPTS + 1:])
        assert c.cmd(b"DATA").code == 354
        c.send(MESSAGE + b".\r\n")
        assert c.reply().code == 250
        # The next transaction starts with an empty envelope.
        clean_message_goes_through(c, gw, already=1)
    first, second = gw.sink.wait_for(2)
    assert first.rcpt_tos == [r.decode() for r in rcpts[:MAX_RCPTS]]
    assert second.rcpt_tos == [RCPT.decode()]


def test_rset_mid_transaction(gw: SharedGateway) -> None:
    with Client(gw.port) as c:
        c.ehlo()
        assert c.cmd(b"MAIL FROM:<dropped@dinas.jakarta.go.id>").code == 250
        assert c.cmd(b"RCPT TO:<dropped@example.org>").code == 250
        assert c.cmd(b"RSET").code == 250
        assert c.cmd(b"DATA").code == 503
        assert c.cmd(b"RCPT TO:<dropped@example.org>").code == 503
        clean_message_goes_through(c, gw)
    [got] = gw.sink.messages
    assert (got.mail_from, got.rcpt_tos) == (SENDER.decode(), [RCPT.decode()])


def test_helo_and_ehlo(gw: SharedGateway) -> None:
    with Client(gw.port) as c:
        helo = c.cmd(b"HELO dinas.jakarta.go.id")
        assert helo.code == 250 and len(helo.lines) == 1
        # No ESMTP parameters after HELO; plain MAIL still works.
        assert c.cmd(b"MAIL FROM:<%s> SIZE=100" % SENDER).code == 501
        assert transaction(c, MESSAGE + b".\r\n").code == 250
        ehlo = c.ehlo()
        assert b"250-PIPELINING\r\n" in ehlo.lines and b"250-SIZE %d\r\n" % MAX_SIZE in ehlo.lines
        assert not any(b"AUTH" in line for line in ehlo.lines)
        assert transaction(c, MESSAGE + b".\r\n", sender=SENDER).code == 250
        assert c.cmd(b"EHLO").code == 501
    assert len(gw.sink.wait_for(2)) == 2


def test_auth_without_starttls_is_refused(gw: SharedGateway) -> None:
    with Client(gw.port) as c:
        c.ehlo()
        for line in (b"AUTH PLAIN AGJ1ZGkAcmFoYXNpYQ==", b"AUTH LOGIN"):
            answer = c.cmd(line)
            assert answer.code >= 500 and answer.enhanced, (line, answer)
        clean_message_goes_through(c, gw)


# -- pipelining and long sessions ------------------------------------------------------

def test_everything_pipelined_in_one_write(gw: SharedGateway) -> None:
    with Client(gw.port) as c:
        c.send(b"EHLO dinas.jakarta.go.id\r\nMAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n"
               % (SENDER, RCPT) + MESSAGE.replace(b"\r\n.", b"\r\n..") + b".\r\nQUIT\r\n")
        answers = c.replies(5)
        assert [a.code for a in answers] == [250, 250, 250, 354, 250], answers
        assert c.reply().code == 221
        assert c.rest() == b""
    assert delivered(gw, 1) == [MESSAGE]


def test_many_transactions_on_one_connection(gw: SharedGateway) -> None:
    with Client(gw.port) as c:
        c.ehlo()
        for i in range(30):
            answer = transaction(c, b"Subject: %d\r\n\r\nbody %d\r\n.\r\n" % (i, i),
                                 rcpts=(b"r%d@example.org" % i,))
            assert answer.code == 250, (i, answer)
    got = gw.sink.wait_for(30)
    assert [m.rcpt_tos for m in got] == [[f"r{i}@example.org"] for i in range(30)]
    assert [body_of(m.data) for m in got] == [b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i)
                                              for i in range(30)]


# -- clients that vanish, crawl or stall ---------------------------------------------

def spooled_lines(n: int) -> bytes:
    """Lines ending in a dot (none of them the terminator): about 33 bytes each."""
    return b"".join(b"Kalimat nomor %05d ada di sini.\r\n" % i for i in range(n))


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_gone_mid_data(
        sink: Sink, gateway_factory: Any, tmp_path: Path, how: str) -> None:
    # The reader holds up to 1 MB before it must hand data to the spool: a message
    # larger than that is on disk while it is still arriving.
    spool = tmp_path / "spool"
    g = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}", spool_threshold="1KB",
                        spool_dir=str(spool), max_message_size="4MB")
    with Client(g.port) as other:
        other.ehlo()
        assert other.cmd(b"MAIL FROM:<%s>" % SENDER).code == 250
        c = Client(g.port)
        c.ehlo()
        c.envelope(SENDER, [b"lost@example.org"])
        c.send(b"Subject: lost\r\n\r\n" + spooled_lines(40_000))
        deadline = time.monotonic() + 5
        while not (spool.exists() and any(spool.iterdir())):
            assert time.monotonic() < deadline, "the data never reached the spool"
            time.sleep(0.02)
        if how == "reset":
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        deadline = time.monotonic() + 2
        while any(spool.iterdir()):
            assert time.monotonic() < deadline, list(spool.iterdir())
            time.sleep(0.02)
        # A session open all along is served as usual.
        assert other.cmd(b"RCPT TO:<%s>" % RCPT).code == 250
        assert other.cmd(b"DATA").code == 354
        other.send(MESSAGE + b".\r\n")
        assert other.reply().code == 250
    assert [m.rcpt_tos for m in sink.wait_for(1)] == [[RCPT.decode()]]
    assert not log_problems(g.log()), log_problems(g.log())


def test_slow_client_byte_by_byte(gw: SharedGateway) -> None:
    data = b"Subject: pelan\r\n\r\n" + b"satu dua tiga. " * 20 + b"\r\n"
    per_byte = 1.5 * DATA_TIMEOUT / len(data)   # the whole transfer outlasts data_timeout
    with Client(gw.port) as c:
        c.ehlo()
        c.envelope(SENDER, [RCPT])
        started = time.monotonic()
        for i in range(len(data)):
            c.send(data[i:i + 1])
            time.sleep(per_byte)
        assert time.monotonic() - started > DATA_TIMEOUT
        c.send(b".\r\n")
        answer = c.reply()
        assert answer.code == 250, answer
    assert delivered(gw, 1) == [data]


@pytest.mark.parametrize("sent", [b"", b"Subject: stalled\r\n\r\n" + spooled_lines(100)])
def test_client_stalling_past_data_timeout_is_dropped(gw: SharedGateway, sent: bytes) -> None:
    with Client(gw.port) as c:
        c.ehlo()
        c.envelope(SENDER, [RCPT])
        c.send(sent)
        started = time.monotonic()
        rest = c.rest()
        waited = time.monotonic() - started
    assert DATA_TIMEOUT * 0.9 < waited < (DATA_TIMEOUT + COMMAND_TIMEOUT) / 2, waited
    assert rest.startswith(b"421 4.4.2 "), rest
    assert b"250" not in rest
    assert gw.sink.wait_for(1, timeout=0.3) == []
    assert not gw.spool.exists() or not any(gw.spool.iterdir())


def test_spool_failure_is_451_and_the_rest_of_the_data_is_not_commands(
        sink: Sink, gateway_factory: Any, tmp_path: Path) -> None:
    (tmp_path / "not-a-directory").write_bytes(b"")
    g = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}", spool_threshold="1KB",
                        spool_dir=str(tmp_path / "not-a-directory" / "spool"))
    commands_inside = b"".join(b"RSET\r\nMAIL FROM:<x%d@example.org>\r\n" % i for i in range(40))
    with Client(g.port) as c:
        c.ehlo()
        answer = transaction(c, b"Subject: big\r\n\r\n" + spooled_lines(60) + commands_inside
                             + b".\r\n")
        assert answer.code == 451 and b"4.3.0" in answer.text, answer
        assert c.cmd(b"NOOP").code == 250
        # Small enough to stay in memory: delivered.
        assert transaction(c, MESSAGE + b".\r\n").code == 250
    assert [body_of(m.data) for m in sink.wait_for(1)] == [MESSAGE]
    problems = log_problems(g.log())
    assert problems and all('"event": "spool-failed"' in p for p in problems), problems


# -- the next hop misbehaves ------------------------------------------------------------

def relay_through(hop: ScriptedUpstream, gateway_factory: Any) -> tuple[Any, Any]:
    g = gateway_factory(upstream={"url": f"smtp://127.0.0.1:{hop.port}", "timeout": "2s"})
    with Client(g.port) as c:
        c.ehlo()
        answer = transaction(c, MESSAGE + b".\r\n")
        # Refused or not, the session remains usable.
        assert c.cmd(b"NOOP").code == 250
    return g, answer


def test_next_hop_with_multiline_replies(next_hop: list[ScriptedUpstream],
                                         gateway_factory: Any) -> None:
    hop = ScriptedUpstream(NextHop(
        greeting=b"220-upstream.test ESMTP\r\n220-this relay is watched\r\n220 welcome\r\n",
        replies={b"MAIL": b"250-2.1.0 sender\r\n250 2.1.0 ok\r\n",
                 b"RCPT": b"250-2.1.5 recipient\r\n250-2.1.5 fine\r\n250 2.1.5 ok\r\n",
                 b"DATA": b"354-go ahead\r\n354 end with dot\r\n"},
        end_of_data=b"250-2.0.0 queued\r\n250-2.0.0 as UP7\r\n250 2.0.0 thanks\r\n"))
    next_hop.append(hop)
    g, answer = relay_through(hop, gateway_factory)
    assert answer.code == 250 and answer.enhanced, answer
    assert [body_of(m) for m in hop.messages] == [MESSAGE]
    assert not log_problems(g.log())


def test_client_gone_during_delivery_still_completes_it(
        next_hop: list[ScriptedUpstream], gateway_factory: Any) -> None:
    hop = ScriptedUpstream(NextHop())
    next_hop.append(hop)
    g, answer = relay_through(hop, gateway_factory)   # leaves a pooled connection
    assert answer.code == 250
    hop.script.delay = 0.5
    with Client(g.port) as c:
        c.ehlo()
        c.envelope(SENDER, [RCPT])
        c.send(MESSAGE + b".\r\n")
        time.sleep(0.2)
    # The whole message had arrived: its delivery finishes and is logged, rather
    # than being cut off halfway with the next hop left guessing.
    deadline = time.monotonic() + 3
    while len(hop.messages) < 2:
        assert time.monotonic() < deadline, "the delivery was abandoned"
        time.sleep(0.02)
    while g.log().count('"event": "message"') < 2:
        assert time.monotonic() < deadline, "no log line for the completed delivery"
        time.sleep(0.02)
    hop.script.delay = 0
    with Client(g.port) as c:
        c.ehlo()
        assert transaction(c, MESSAGE + b".\r\n").code == 250
    assert hop.connections == 1, "the next-hop connection went back to the pool"
    assert not log_problems(g.log())


@pytest.mark.parametrize("script", [
    NextHop(greeting=b"hello, this is not SMTP\r\n"),
    NextHop(close_after_greeting=True),
    NextHop(greeting=b"554 5.3.2 no service here\r\n"),
    NextHop(replies={b"EHLO": b"250-upstream.test\r\n250-PIPELINING\r\nwhat\r\n"}),
    NextHop(replies={b"MAIL": b"OK then\r\n"}),
    NextHop(replies={b"RCPT": b"2\r\n"}),
    NextHop(replies={b"DATA": b"\x00\xff\xfe garbage\r\n"}),
    NextHop(replies={b"MAIL": b"250" + b"-" * (2 << 20)}),
], ids=["garbage-greeting", "close-after-greeting", "554-greeting", "garbage-in-ehlo",
        "garbage-mail-reply", "short-rcpt-reply", "binary-data-reply", "endless-line"])
def test_next_hop_trouble_is_4xx(next_hop: list[ScriptedUpstream], gateway_factory: Any,
                                 script: NextHop) -> None:
    hop = ScriptedUpstream(script)
    next_hop.append(hop)
    g, answer = relay_through(hop, gateway_factory)
    assert 400 <= answer.code < 500 and answer.enhanced, answer
    assert hop.messages == []
    assert not log_problems(g.log())


def test_garbage_after_the_data_is_4xx(next_hop: list[ScriptedUpstream],
                                       gateway_factory: Any) -> None:
    hop = ScriptedUpstream(NextHop(end_of_data=b"thanks!\r\n"))
    next_hop.append(hop)
    g, answer = relay_through(hop, gateway_factory)
    # The hop has the bytes but never said it took them: the client must keep the message.
    assert 400 <= answer.code < 500 and answer.enhanced, answer
    assert [body_of(m) for m in hop.messages] == [MESSAGE]
    assert not log_problems(g.log())


# -- hostile content through the shipped policy ------------------------------------------

@pytest.fixture(scope="module")
def policy_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("policy")
    sinks = [Sink(), Sink()]
    for s in sinks:
        s.controller.start()
    g = GatewayProcess(tmp, {
        "upstream": f"smtp://127.0.0.1:{sinks[0].port}",
        "routes": {"sanapati": {"url": f"smtp://127.0.0.1:{sinks[1].port}", "tls": "none"}},
        "policy": str(ROOT / "policies" / "se-79-2019.yaml"),
    })
    try:
        yield g.start()
    finally:
        g.stop()
        for s in sinks:
            s.controller.stop()


@pytest.mark.parametrize("data", [
    b".\r\n",
    b"\x00\xff\xfe\r\n\r\n\x00\x00\r\n.\r\n",
    b"Subject: bare\n\nbare LF only\n\r\n.\r\n",
    b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: "
    b"application/zip\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64\r\n.\r\n",
    b"..\r\n...\r\n.\r\n",
], ids=["empty", "binary", "bare-lf", "broken-mime", "dot-lines"])
def test_hostile_content_through_the_policy(policy_gateway: GatewayProcess,
                                            data: bytes) -> None:
    start = len(policy_gateway.log())
    with Client(policy_gateway.port) as c:
        c.ehlo()
        answer = transaction(c, data)
        assert c.cmd(b"NOOP").code == 250
    # Delivered, held or refused by a rule, but never "temporary local problem".
    assert answer.code in (250, 550, 554) and answer.enhanced, answer
    time.sleep(0.05)
    assert not log_problems(policy_gateway.log()[start:])
