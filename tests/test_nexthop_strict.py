"""The next-hop SMTP client believes only what it should, and passes DSN parameters on.

``milter.delivery.Deliverer`` is driven directly, with a real ``GatewayConfig`` loaded
from YAML, against a scripted next hop on loopback (``tests/scripted_hop.py``). Every
case asserts what the hop really received (the count of message bodies) next to what
the deliverer reported (ok, code, enhanced status), since the two must never disagree
in the dangerous direction: a 250 to our caller for a message nobody took.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from milter import delivery
from milter.config import GatewayConfig, load
from milter.delivery import Deliverer, DeliveryResult, send_message
from milter.envelope import Dsn
from milter.log import JsonFormatter
from milter.message import Message
from tests.conftest import free_port
from tests.scripted_hop import Act, Script, ScriptedHop

SENDER = "budi@dinas.jakarta.go.id"
RCPT = "sari@example.org"
TIMEOUT = 0.5  # the route's timeout: every stall must end within about this


def body(subject: str = "strict") -> bytes:
    return (f"From: {SENDER}\r\nTo: {RCPT}\r\nSubject: {subject}\r\n\r\n"
            "Selamat pagi.\r\n.dot line\r\n").encode()


def wire(subject: str = "strict") -> bytes:
    """The body as the hop receives it (dot-stuffed)."""
    return body(subject).replace(b"\r\n.dot", b"\r\n..dot")


@pytest.fixture
def hops() -> Iterator[list[ScriptedHop]]:
    started: list[ScriptedHop] = []
    yield started
    for h in started:
        h.close()


@pytest.fixture
def hop(hops: list[ScriptedHop]) -> Callable[..., ScriptedHop]:
    def make(*scripts: Script) -> ScriptedHop:
        h = ScriptedHop(*scripts)
        hops.append(h)
        return h

    return make


@pytest.fixture
def config(tmp_path: Path) -> Callable[..., GatewayConfig]:
    """A real configuration file, written and loaded as the gateway would."""

    def make(url: str, tls: str = "none", timeout: float = TIMEOUT) -> GatewayConfig:
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump({
            "hostname": "gw.test.jakarta.go.id",
            "upstream": {"url": url, "tls": tls, "timeout": f"{timeout}s"},
            "quarantine": {"database": f"sqlite:///{tmp_path}/q.sqlite3",
                           "spool": str(tmp_path / "spool")},
        }))
        return load(path)

    return make


async def deliver(cfg: GatewayConfig, *, rcpts: tuple[str, ...] = (RCPT,),
                  subject: str = "strict", dsn: Dsn | None = None,
                  deliverer: Deliverer | None = None) -> DeliveryResult:
    """One message through a Deliverer (a fresh one unless given), closed afterwards."""
    own = deliverer is None
    d = deliverer or Deliverer(cfg)
    try:
        return await d.send("upstream", SENDER, list(rcpts),
                            Message.from_content(body(subject)), dsn=dsn)
    finally:
        if own:
            await d.close()


def temporary(result: DeliveryResult) -> bool:
    return (not result.ok and 400 <= result.code < 500 and result.status.startswith("4.")
            and all(400 <= code < 500 for code, _ in result.refused.values()))


def no_body_as_commands(h: ScriptedHop) -> bool:
    """The message text never reached the hop as command lines."""
    return not any(line.startswith((b"Subject:", b"From:", b"Selamat", b"..dot"))
                   for line in h.commands)


async def test_stream_reader_still_has_the_buffer_the_client_inspects() -> None:
    # SmtpConnection.unread() reads StreamReader._buffer (there is no public API);
    # should a Python release rename it, this fails instead of the check going blind.
    assert isinstance(vars(asyncio.StreamReader())["_buffer"], bytearray)


async def test_ordinary_delivery(hop: Callable[..., ScriptedHop],
                                 config: Callable[..., GatewayConfig]) -> None:
    h = hop(Script())
    result = await deliver(config(f"smtp://127.0.0.1:{h.port}"))
    assert result.ok and result.code == 250 and result.accepted == (RCPT,)
    assert h.messages == [wire()]


# -- anomalies: never success, nothing sent after them, connection dropped ----------------

PIPELINED = Script()
LOCKSTEP = Script(extensions=(b"8BITMIME",))

ANOMALIES: list[tuple[str, str, Act, int]] = [
    # (id, step, what the hop does, message bodies the hop ends up with)
    ("data-250", "DATA", Act(b"250 2.0.0 Ok\r\n"), 0),
    ("data-199", "DATA", Act(b"199 what\r\n"), 0),
    ("data-600", "DATA", Act(b"600 what\r\n"), 0),
    ("data-garbage", "DATA", Act(b"\x00\xff\xfe go ahead\r\n"), 0),
    ("data-mixed-codes", "DATA", Act(b"354-go\r\n250 ahead\r\n"), 0),
    ("data-250-enhanced", "DATA", Act(b"250 2.0.0 go ahead\r\n"), 0),
    ("rcpt-252", "RCPT", Act(b"252 2.1.5 Cannot VRFY, but will accept\r\n"), 0),
    ("rcpt-199", "RCPT", Act(b"199 ok\r\n"), 0),
    ("rcpt-600", "RCPT", Act(b"600 ok\r\n"), 0),
    ("rcpt-garbage", "RCPT", Act(b"ok\r\n"), 0),
    ("rcpt-250-4xx", "RCPT", Act(b"250 4.4.1 Penerusan tertunda\r\n"), 0),
    ("rcpt-354", "RCPT", Act(b"354 go\r\n"), 0),
    ("mail-251", "MAIL", Act(b"251 ok\r\n"), 0),
    ("mail-199", "MAIL", Act(b"199 ok\r\n"), 0),
    ("mail-600", "MAIL", Act(b"600 ok\r\n"), 0),
    ("mail-garbage", "MAIL", Act(b"\xc3\x28 ok\r\n"), 0),
    ("mail-250-4xx", "MAIL", Act(b"250 4.4.1 Penerusan tertunda\r\n"), 0),
    ("mail-mixed-codes", "MAIL", Act(b"250-2.1.0 a\r\n550 5.1.0 b\r\n"), 0),
    ("mail-twice", "MAIL", Act(b"250 2.1.0 Ok\r\n", extra=b"250 2.1.0 Ok\r\n"), 0),
    ("mail-control-chars", "MAIL", Act(b"250 2.1.0 Ok\x1b[2J\r\n"), 0),
    ("dot-250-4xx", "DOT", Act(b"250 4.4.1 Penerusan tertunda\r\n"), 1),
    ("dot-252", "DOT", Act(b"252 2.0.0 queued\r\n"), 1),
    ("dot-199", "DOT", Act(b"199 queued\r\n"), 1),
    ("dot-600", "DOT", Act(b"600 queued\r\n"), 1),
    ("dot-354", "DOT", Act(b"354 more\r\n"), 1),
    ("dot-garbage", "DOT", Act(b"thanks!\r\n"), 1),
    ("greeting-199", "greeting", Act(b"199 hop.test\r\n"), 0),
    ("greeting-600", "greeting", Act(b"600 hop.test\r\n"), 0),
    ("greeting-250", "greeting", Act(b"250 hop.test\r\n"), 0),
    ("greeting-554", "greeting", Act(b"554 5.3.2 no service\r\n"), 0),
    ("greeting-garbage", "greeting", Act(b"SSH-2.0-OpenSSH_9.2\r\n"), 0),
    ("greeting-twice", "greeting", Act(extra=b"220 hop.test again\r\n"), 0),
    ("ehlo-mixed-codes", "EHLO", Act(b"250-hop.test\r\n251 PIPELINING\r\n"), 0),
    ("ehlo-199", "EHLO", Act(b"199 hop.test\r\n"), 0),
    ("ehlo-garbage-line", "EHLO", Act(b"250-hop.test\r\nPIPELINING\r\n"), 0),
]


@pytest.mark.parametrize("script", [PIPELINED, LOCKSTEP], ids=["pipelined", "lockstep"])
@pytest.mark.parametrize("case", [a[1:] for a in ANOMALIES], ids=[a[0] for a in ANOMALIES])
async def test_anomaly_is_a_temporary_failure_and_the_connection_is_dropped(
        hop: Callable[..., ScriptedHop], config: Callable[..., GatewayConfig],
        script: Script, case: tuple[str, Act, int]) -> None:
    step, act, received = case
    h = hop(Script(extensions=script.extensions, steps={step: act}))
    d = Deliverer(config(f"smtp://127.0.0.1:{h.port}"))
    try:
        result = await deliver(d.config, deliverer=d)
        assert temporary(result), result
        assert result.code == 451
        assert len(h.messages) == received
        assert no_body_as_commands(h)
        # Dropped, not pooled: the hop sees the client hang up.
        assert d._idle.get("upstream", []) == []
        assert await asyncio.to_thread(h.wait, lambda: h.closed_by_client == h.connections)
    finally:
        await d.close()


async def test_a_pooled_connection_that_turns_odd_is_not_retried_past_the_data(
        hop: Callable[..., ScriptedHop], config: Callable[..., GatewayConfig]) -> None:
    # Second message on the same connection: the hop takes the body and answers 252.
    # A retry could deliver twice, so the anomaly is reported (451), not retried.
    first = Script()
    h = hop(first)
    d = Deliverer(config(f"smtp://127.0.0.1:{h.port}"))
    try:
        assert (await deliver(d.config, deliverer=d, subject="one")).ok
        first.steps["DOT"] = Act(b"252 2.0.0 queued\r\n")
        result = await deliver(d.config, deliverer=d, subject="two")
        assert temporary(result) and result.code == 451
        assert h.messages == [wire("one"), wire("two")]
        assert h.connections == 1
    finally:
        await d.close()


async def test_a_pooled_connection_that_garbles_the_envelope_is_retried_fresh(
        hop: Callable[..., ScriptedHop], config: Callable[..., GatewayConfig]) -> None:
    # Nothing reached the hop on the garbled connection: one retry on a fresh one.
    first = Script()
    h = hop(first, Script())
    d = Deliverer(config(f"smtp://127.0.0.1:{h.port}"))
    try:
        assert (await deliver(d.config, deliverer=d, subject="one")).ok
        first.steps["RCPT"] = Act(b"252 2.1.5 maybe\r\n")
        result = await deliver(d.config, deliverer=d, subject="two")
        assert result.ok and result.code == 250
        assert h.messages == [wire("one"), wire("two")]
        assert h.connections == 2
    finally:
        await d.close()


@pytest.mark.parametrize(("step", "reply", "code"), [
    ("RCPT", b"550 5.1.1 No such user\r\n", 550),
    ("RCPT", b"450 4.2.0 Mailbox busy\r\n", 450),
    ("MAIL", b"452 4.3.1 Insufficient system storage\r\n", 452),
    ("DATA", b"554 5.7.0 Refused by policy\r\n", 554),
    ("DOT", b"554 5.7.1 Message rejected\r\n", 554),
    ("DOT", b"451-4.3.0 Try again\r\n451 4.3.0 later\r\n", 451),
    ("DOT", b"550 2.0.0 odd detail\r\n", 550),
])
async def test_refusals_are_relayed_with_their_code(
        hop: Callable[..., ScriptedHop], config: Callable[..., GatewayConfig],
        step: str, reply: bytes, code: int) -> None:
    h = hop(Script(steps={step: Act(reply)}))
    result = await deliver(config(f"smtp://127.0.0.1:{h.port}"))
    assert not result.ok and result.code == code
    assert len(h.messages) == (1 if step == "DOT" else 0)
    assert no_body_as_commands(h)


async def test_multiline_replies_in_step_are_believed(
        hop: Callable[..., ScriptedHop], config: Callable[..., GatewayConfig]) -> None:
    h = hop(Script(steps={
        "greeting": Act(b"220-hop.test ESMTP\r\n220-watched\r\n220 welcome\r\n"),
        "MAIL": Act(b"250-2.1.0 sender\r\n250 2.1.0 ok\r\n"),
        "RCPT": Act(b"251-2.1.5 will forward\r\n251 2.1.5 ok\r\n"),
        "DATA": Act(b"354-go ahead\r\n354 end with dot\r\n"),
        "DOT": Act(b"250-2.0.0 queued\r\n250 2.0.0 as HOP7\r\n"),
    }))
    result = await deliver(config(f"smtp://127.0.0.1:{h.port}"))
    assert result.ok and result.status == "2.0.0"
    assert h.messages == [wire()]


# -- one reply line too many ---------------------------------------------------------------

async def test_extra_line_after_the_250_delivers_once_and_drops_the_connection(
        hop: Callable[..., ScriptedHop], config: Callable[..., GatewayConfig],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    h = hop(Script(steps={"DOT": Act(extra=b"250 2.0.0 Ok: queued as EXTRA\r\n")}), Script())
    d = Deliverer(config(f"smtp://127.0.0.1:{h.port}"))
    try:
        first = await deliver(d.config, deliverer=d, subject="one")
        assert first.ok and first.code == 250  # read in order: believed
        assert await asyncio.to_thread(h.wait, lambda: h.closed_by_client == 1)
        second = await deliver(d.config, deliverer=d, subject="two")
        assert second.ok and second.code == 250
        assert h.connections == 2
        assert [c.messages for c in h.conversations] == [[wire("one")], [wire("two")]]
        assert any(getattr(r, "fields", {}).get("event") == "nexthop-out-of-step"
                   for r in caplog.records)
    finally:
        await d.close()


async def test_unsolicited_line_on_an_idle_pooled_connection_forces_a_fresh_one(
        hop: Callable[..., ScriptedHop], config: Callable[..., GatewayConfig]) -> None:
    # The stray reply arrives after the 250 was read and the connection pooled: before
    # the fix the next message read it as its own answers (250 with zero copies sent).
    h = hop(Script(), Script())
    d = Deliverer(config(f"smtp://127.0.0.1:{h.port}"))
    try:
        assert (await deliver(d.config, deliverer=d, subject="one")).ok
        [pooled] = d._idle["upstream"]
        h.push(b"250 2.0.0 Ok: queued as STRAY\r\n")
        deadline = time.monotonic() + 5
        while not pooled.unread():  # the loop takes the bytes in
            assert time.monotonic() < deadline
            await asyncio.sleep(0)
        second = await deliver(d.config, deliverer=d, subject="two")
        assert second.ok and second.code == 250
        assert h.connections == 2
        assert [c.messages for c in h.conversations] == [[wire("one")], [wire("two")]]
        assert await asyncio.to_thread(h.wait, lambda: h.closed_by_client >= 1)
    finally:
        await d.close()


# -- the next hop hangs up, or goes silent, at each step ------------------------------------

CLOSES = [
    ("before-greeting", "greeting", Act(close=True), 0),
    ("after-ehlo", "EHLO", Act(close=True), 0),
    ("after-mail", "MAIL", Act(close=True), 0),
    ("after-rcpt", "RCPT", Act(close=True), 0),
    ("after-data-354", "DATA", Act(close_after=True), 0),
    ("after-the-dot", "DOT", Act(close=True), 1),
]


@pytest.mark.parametrize(("step", "act", "received"), [c[1:] for c in CLOSES],
                         ids=[c[0] for c in CLOSES])
async def test_close_at_each_step_is_451(
        hop: Callable[..., ScriptedHop], config: Callable[..., GatewayConfig],
        step: str, act: Act, received: int) -> None:
    h = hop(Script(steps={step: act}))
    result = await deliver(config(f"smtp://127.0.0.1:{h.port}"))
    assert temporary(result) and result.code == 451, result
    assert len(h.messages) == received


STALLS = ["greeting", "EHLO", "MAIL", "RCPT", "DATA", "DOT"]


@pytest.mark.parametrize("step", STALLS)
async def test_stall_at_each_step_ends_within_the_route_timeout(
        hop: Callable[..., ScriptedHop], config: Callable[..., GatewayConfig],
        step: str) -> None:
    h = hop(Script(steps={step: Act(stall=True)}))
    cfg = config(f"smtp://127.0.0.1:{h.port}")
    started = time.monotonic()
    result = await deliver(cfg)
    elapsed = time.monotonic() - started
    assert temporary(result) and result.code == 451 and result.status == "4.4.2", result
    assert "timed out" in result.message
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT * 3
    assert len(h.messages) == (1 if step == "DOT" else 0)


async def test_unreachable_next_hop_is_451(config: Callable[..., GatewayConfig]) -> None:
    result = await deliver(config(f"smtp://127.0.0.1:{free_port()}"))
    assert temporary(result) and result.code == 451 and result.status == "4.4.1"


# -- DSN pass-through (RFC 3461) -----------------------------------------------------------

OTHER = "tim@example.net"
DSN = Dsn(ret="HDRS", envid="QQ314159+2B1",
          notify={RCPT: "SUCCESS,FAILURE", OTHER: "NEVER"},
          orcpt={RCPT: "rfc822;sari@example.org"})


def envelope_lines(h: ScriptedHop) -> list[bytes]:
    return [c for c in h.commands if c.startswith((b"MAIL", b"RCPT"))]


async def test_dsn_parameters_are_passed_on_when_offered(
        hop: Callable[..., ScriptedHop], config: Callable[..., GatewayConfig]) -> None:
    h = hop(Script(extensions=(b"PIPELINING", b"DSN")))
    result = await deliver(config(f"smtp://127.0.0.1:{h.port}"), rcpts=(RCPT, OTHER), dsn=DSN)
    assert result.ok
    assert envelope_lines(h) == [
        b"MAIL FROM:<budi@dinas.jakarta.go.id> RET=HDRS ENVID=QQ314159+2B1",
        b"RCPT TO:<sari@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;sari@example.org",
        b"RCPT TO:<tim@example.net> NOTIFY=NEVER",
    ]
    assert len(h.messages) == 1


@pytest.mark.parametrize("extensions", [(b"PIPELINING",), (b"8BITMIME",)],
                         ids=["pipelined", "lockstep"])
async def test_no_dsn_parameters_toward_a_hop_without_dsn(
        hop: Callable[..., ScriptedHop], config: Callable[..., GatewayConfig],
        extensions: tuple[bytes, ...]) -> None:
    h = hop(Script(extensions=extensions))
    result = await deliver(config(f"smtp://127.0.0.1:{h.port}"), rcpts=(RCPT, OTHER), dsn=DSN)
    assert result.ok
    mail = b"MAIL FROM:<budi@dinas.jakarta.go.id>"
    if b"8BITMIME" in extensions:
        mail += b" BODY=8BITMIME"
    assert envelope_lines(h) == [mail, b"RCPT TO:<sari@example.org>", b"RCPT TO:<tim@example.net>"]


async def test_malformed_dsn_parameters_are_left_out_never_spliced_in(
        hop: Callable[..., ScriptedHop], config: Callable[..., GatewayConfig]) -> None:
    # The front-end should never let these through; if one does, the next hop must not
    # receive "RSET" or a second RCPT as a command of its own.
    h = hop(Script(extensions=(b"PIPELINING", b"DSN")))
    bad = Dsn(ret="FULL\r\nRSET", envid="a b",
              notify={RCPT: "SUCCESS\r\nRCPT TO:<evil@example.com>"},
              orcpt={RCPT: "rfc822;sari@example.org", OTHER: "rfc822;x=y"})
    result = await deliver(config(f"smtp://127.0.0.1:{h.port}"), rcpts=(RCPT, OTHER), dsn=bad)
    assert result.ok and result.accepted == (RCPT, OTHER)
    assert envelope_lines(h) == [
        b"MAIL FROM:<budi@dinas.jakarta.go.id>",
        b"RCPT TO:<sari@example.org> ORCPT=rfc822;sari@example.org",
        b"RCPT TO:<tim@example.net>",
    ]
    assert b"RSET" not in h.commands


async def test_an_address_with_a_line_break_is_never_sent(
        hop: Callable[..., ScriptedHop], config: Callable[..., GatewayConfig]) -> None:
    h = hop(Script())
    result = await deliver(config(f"smtp://127.0.0.1:{h.port}"),
                           rcpts=("a@example.org>\r\nRCPT TO:<evil@example.com",))
    assert not result.ok and result.code == 501
    assert envelope_lines(h) == [] and h.messages == []


def test_send_message_passes_dsn_on(hop: Callable[..., ScriptedHop],
                                    config: Callable[..., GatewayConfig]) -> None:
    h = hop(Script(extensions=(b"DSN",)))
    result = send_message(config(f"smtp://127.0.0.1:{h.port}"), "upstream", SENDER, [RCPT],
                          body(), dsn=Dsn(ret="FULL", notify={RCPT: "DELAY"}))
    assert result.ok
    assert envelope_lines(h) == [b"MAIL FROM:<budi@dinas.jakarta.go.id> RET=FULL",
                                 b"RCPT TO:<sari@example.org> NOTIFY=DELAY"]


# -- STARTTLS: nothing sent in clear before the handshake counts after it -----------------

@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(crt), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(crt), str(key))
    return ctx


TLS_EXTENSIONS = (b"PIPELINING", b"STARTTLS")
INJECTED = b"250-hop.test\r\n250 PIPELINING\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"


@pytest.mark.parametrize("policy", ["opportunistic", "required"])
async def test_starttls_encrypts(hop: Callable[..., ScriptedHop],
                                 config: Callable[..., GatewayConfig],
                                 server_tls: ssl.SSLContext, policy: str) -> None:
    h = hop(Script(extensions=TLS_EXTENSIONS, tls=server_tls))
    result = await deliver(config(f"smtp://127.0.0.1:{h.port}", tls=policy))
    assert result.ok
    assert h.messages == [wire()] and h.conversations[0].tls
    # Two EHLOs: the one before STARTTLS tells nothing that is believed after it.
    assert [c for c in h.commands if c.startswith(b"EHLO")] == [b"EHLO gw.test.jakarta.go.id"] * 2


@pytest.mark.parametrize("policy", ["opportunistic", "required"])
async def test_plaintext_injected_after_the_starttls_220_fails_the_route(
        hop: Callable[..., ScriptedHop], config: Callable[..., GatewayConfig],
        server_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture, policy: str) -> None:
    caplog.set_level(logging.INFO)
    h = hop(Script(extensions=TLS_EXTENSIONS, tls=server_tls,
                   steps={"STARTTLS": Act(extra=INJECTED)}))
    result = await deliver(config(f"smtp://127.0.0.1:{h.port}", tls=policy))
    assert temporary(result) and result.code == 451 and result.status == "4.7.5", result
    assert "in clear" in result.message
    # No handshake, no message, and no retry in clear even when TLS is opportunistic.
    assert h.messages == [] and h.connections == 1
    assert not any(c.startswith(b"MAIL") for c in h.commands)
    assert [r.fields["event"] for r in caplog.records if hasattr(r, "fields")] == [
        "tls-injection"]


# -- credentials stay out of every log line and reply text ----------------------------------

PASSWORD = "S3cr3t-P4ss"
USER = "relay-user"
TOKEN = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
SECRETS = (PASSWORD, TOKEN, base64.b64encode(PASSWORD.encode()).decode(),
           f"{USER}:{PASSWORD}")

CREDENTIAL_CASES: list[tuple[str, dict[str, Act], bool]] = [
    ("delivered", {}, True),
    ("auth-refused-echoing", {"AUTH": Act(
        f"535 5.7.8 Bad credentials {TOKEN} ({PASSWORD})\r\n".encode())}, False),
    ("auth-garbage-echoing", {"AUTH": Act(f"2x5 {PASSWORD} {TOKEN}\r\n".encode())}, False),
    ("auth-250-4xx-echoing", {"AUTH": Act(f"235 4.7.0 {PASSWORD}\r\n".encode())}, False),
    ("auth-then-extra", {"AUTH": Act(extra=f"535 {TOKEN}\r\n".encode())}, False),
    ("mail-anomaly", {"MAIL": Act(b"600 no\r\n")}, False),
    ("greeting-refused", {"greeting": Act(b"554 5.3.2 go away\r\n")}, False),
    ("stall", {"RCPT": Act(stall=True)}, False),
]


@pytest.mark.parametrize(("steps", "ok"), [c[1:] for c in CREDENTIAL_CASES],
                         ids=[c[0] for c in CREDENTIAL_CASES])
async def test_credentials_never_in_logs_or_replies(
        hop: Callable[..., ScriptedHop], config: Callable[..., GatewayConfig],
        caplog: pytest.LogCaptureFixture, steps: dict[str, Act], ok: bool) -> None:
    caplog.set_level(logging.DEBUG)
    h = hop(Script(extensions=(b"PIPELINING", b"AUTH PLAIN"), steps=steps))
    cfg = config(f"smtp://{USER}:{PASSWORD}@127.0.0.1:{h.port}")
    assert cfg.upstream.password == PASSWORD  # the route really carries credentials
    result = await deliver(cfg)
    assert result.ok is ok
    assert len(h.messages) == (1 if ok else 0)
    if not ok:
        assert temporary(result), result
    if "AUTH" in steps:  # the hop did get them, and said them back
        assert any(TOKEN.encode() in c for c in h.commands)
    said = [result.message, *(text for _, text in result.refused.values())]
    said += [JsonFormatter().format(r) for r in caplog.records]
    said += [r.getMessage() for r in caplog.records]
    said += [repr(cfg.upstream), repr(cfg), cfg.upstream.display_url]
    for text in said:
        for secret in SECRETS:
            assert secret not in text, (secret, text)


async def test_unreachable_route_names_itself_without_the_password(
        config: Callable[..., GatewayConfig]) -> None:
    port = free_port()
    result = await deliver(config(f"smtp://{USER}:{PASSWORD}@127.0.0.1:{port}"))
    assert temporary(result)
    assert f"smtp://{USER}@127.0.0.1:{port}" in result.message
    assert PASSWORD not in result.message


def test_hop_name_is_route_and_display_url(config: Callable[..., GatewayConfig]) -> None:
    cfg = config(f"smtp://{USER}:{PASSWORD}@[::1]:2525")
    assert cfg.upstream.display_url == f"smtp://{USER}@[::1]:2525"
    assert delivery.hop_name(cfg.upstream) == f"upstream (smtp://{USER}@[::1]:2525)"



async def test_354_after_every_recipient_was_refused_ends_empty_and_drops(
        hop: Callable[..., ScriptedHop], config: Callable[..., GatewayConfig]) -> None:
    # RFC 2920 wants DATA refused then; a hop that says 354 gets an empty message (as
    # Postfix sends) and is not kept for the next one.
    h = hop(Script(steps={"RCPT": Act(b"550 5.1.1 No such user\r\n"),
                          "DATA": Act(b"354 go ahead\r\n")}))
    d = Deliverer(config(f"smtp://127.0.0.1:{h.port}"))
    try:
        result = await deliver(d.config, deliverer=d)
        assert not result.ok and result.code == 550 and result.refused[RCPT][0] == 550
        assert h.messages == [b""]
        assert d._idle.get("upstream", []) == []
        assert await asyncio.to_thread(h.wait, lambda: h.closed_by_client == 1)
    finally:
        await d.close()
