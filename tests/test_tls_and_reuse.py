"""TLS on both sides and connection reuse, with real certificates and real sockets."""

from __future__ import annotations

import smtplib
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.conftest import Sink, SinkHandler, free_port

MESSAGE = b"From: a@dinas.jakarta.go.id\r\nTo: b@example.org\r\nSubject: tls\r\n\r\nhalo\r\n"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(crt), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return crt, key


class TlsSink:
    """An upstream offering STARTTLS with a self-signed certificate."""

    def __init__(self, cert: tuple[Path, Path]) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        self.port = free_port()
        self.handler = SinkHandler()
        self.tls_seen: list[bool] = []
        handler = self.handler
        seen = self.tls_seen

        class Recording(SinkHandler):
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                seen.append(session.ssl is not None)
                return await handler.handle_DATA(server, session, envelope)

        self.controller = Controller(Recording(), hostname="127.0.0.1", port=self.port,
                                     tls_context=ctx, require_starttls=False)


@pytest.fixture
def tls_sink(cert: tuple[Path, Path]) -> Any:
    s = TlsSink(cert)
    s.controller.start()
    yield s
    s.controller.stop()


def send(port: int, starttls: bool = False) -> dict[str, Any]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("dinas.jakarta.go.id")
        if starttls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s.starttls(context=ctx)
            s.ehlo("dinas.jakarta.go.id")
        return s.sendmail("a@dinas.jakarta.go.id", ["b@example.org"], MESSAGE)


@pytest.mark.parametrize("policy", ["opportunistic", "required"])
def test_route_encrypts_when_told(tls_sink: TlsSink, gateway_factory: Any, policy: str) -> None:
    gw = gateway_factory(upstream={"url": f"smtp://127.0.0.1:{tls_sink.port}", "tls": policy})
    assert send(gw.port) == {}
    deadline = time.monotonic() + 5
    while not tls_sink.handler.messages and time.monotonic() < deadline:
        time.sleep(0.02)
    assert tls_sink.tls_seen == [True]


def test_verify_refuses_an_unverifiable_certificate(tls_sink: TlsSink,
                                                   gateway_factory: Any) -> None:
    gw = gateway_factory(upstream={"url": f"smtp://127.0.0.1:{tls_sink.port}", "tls": "verify"})
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(gw.port)
    assert exc.value.smtp_code == 451 and b"4.7.5" in exc.value.smtp_error
    assert tls_sink.handler.messages == []


def test_required_tls_without_starttls_never_sends_clear(sink: Sink,
                                                         gateway_factory: Any) -> None:
    gw = gateway_factory(upstream={"url": f"smtp://127.0.0.1:{sink.port}", "tls": "required"})
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(gw.port)
    assert exc.value.smtp_code == 451 and b"not offered" in exc.value.smtp_error
    assert sink.messages == []


def test_listener_offers_starttls(sink: Sink, gateway_factory: Any,
                                  cert: tuple[Path, Path]) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}",
                         tls={"cert": str(cert[0]), "key": str(cert[1])})
    assert send(gw.port, starttls=True) == {}
    [got] = sink.wait_for(1)
    assert b"with ESMTPS id" in got.data


def test_idle_upstream_connection_closed_by_peer_is_replaced(gateway_factory: Any) -> None:
    # The upstream drops idle sessions after one second; the gateway's pooled
    # connection is then dead, and the next message must still get through.
    handler = SinkHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port,
                            server_kwargs={"timeout": 1})
    controller.start()
    try:
        gw = gateway_factory(upstream=f"smtp://127.0.0.1:{port}")
        assert send(gw.port) == {}
        time.sleep(1.6)
        assert send(gw.port) == {}
        deadline = time.monotonic() + 5
        while len(handler.messages) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(handler.messages) == 2
    finally:
        controller.stop()


@pytest.fixture
def broken_tls_sink(cert: tuple[Path, Path]) -> Any:
    """Offers STARTTLS, then fails every handshake (it demands a client certificate)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(str(cert[0]))
    handler = SinkHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, tls_context=ctx,
                            require_starttls=False)
    controller.start()
    yield port, handler
    controller.stop()


def test_opportunistic_tls_falls_back_to_clear_but_required_does_not(
        broken_tls_sink: Any, gateway_factory: Any) -> None:
    port, handler = broken_tls_sink
    strict = gateway_factory(upstream={"url": f"smtp://127.0.0.1:{port}", "tls": "required"})
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(strict.port)
    assert exc.value.smtp_code == 451 and b"4.7.5" in exc.value.smtp_error
    assert handler.messages == []
    relaxed = gateway_factory(upstream={"url": f"smtp://127.0.0.1:{port}",
                                        "tls": "opportunistic"})
    assert send(relaxed.port) == {}
    deadline = time.monotonic() + 5
    while not handler.messages and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(handler.messages) == 1
    assert '"event": "tls-fallback"' in relaxed.log()
