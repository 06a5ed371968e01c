"""Admission at connect: a host outside ``clients`` is refused before the greeting.

The tests connect from two loopback addresses: 127.0.0.1, which the gateway under
test does not list in ``clients``, and 127.0.0.2 (``source_address``), which it does.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from milter.replies import NOT_PERMITTED, TOO_MANY_CONNECTIONS
from tests.conftest import GatewayProcess, Sink
from tests.smtp.conftest import TIMEOUT, Answer, Client, Closed, log_problems

CLIENT_ADDR = "127.0.0.2"
OUTSIDERS = 80
MAX_CONNECTIONS = 20


class ClientFrom(Client):
    """``Client`` whose connection comes from a chosen loopback address."""

    def __init__(self, port: int, source: str, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout, source_address=(source, 0)
        )
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()


@pytest.fixture
def gateway(sink: Sink, gateway_factory: Any) -> Iterator[GatewayProcess]:
    gw: GatewayProcess = gateway_factory(
        upstream=f"smtp://127.0.0.1:{sink.port}",
        clients=[f"{CLIENT_ADDR}/32"],
        max_connections=MAX_CONNECTIONS,
        max_connections_per_client=MAX_CONNECTIONS,
    )
    yield gw
    gw.stop()
    problems = log_problems(gw.log())
    assert not problems, "\n".join(problems)


def assert_refused_at_connect(c: Client) -> None:
    """The greeting is the 554 of a non-client, and the gateway closes at once."""
    assert c.greeting == Answer(554, [NOT_PERMITTED.line().encode() + b"\r\n"]), c.greeting
    assert c.rest() == b""


def test_non_client_hears_554_instead_of_the_greeting_and_is_closed(
    gateway: GatewayProcess, sink: Sink
) -> None:
    with Client(gateway.port) as c:
        assert c.greeting.code == 554 and c.greeting.enhanced, c.greeting
        assert b"5.7.1" in c.greeting.text
        assert b"Akses relay ditolak / Relay access denied" in c.greeting.text
        # Whatever it says next reaches no one: the connection is already closed.
        with pytest.raises((Closed, OSError)):
            c.send(b"EHLO outsider.example\r\nMAIL FROM:<spam@example.org>\r\n")
            c.reply()
    assert sink.messages == []


def test_idle_non_clients_take_no_slot_from_real_clients(
    gateway: GatewayProcess, sink: Sink
) -> None:
    with ExitStack() as stack:
        # Many more idle connections from a host that may not submit than there are
        # slots, all kept open on this side.
        outsiders = [stack.enter_context(Client(gateway.port)) for _ in range(OUTSIDERS)]
        for c in outsiders:
            assert_refused_at_connect(c)
        # Every slot is still there for the real client: all but one idle ...
        idle = [
            stack.enter_context(ClientFrom(gateway.port, CLIENT_ADDR))
            for _ in range(MAX_CONNECTIONS - 1)
        ]
        assert [c.greeting.code for c in idle] == [220] * (MAX_CONNECTIONS - 1)
        # ... and the last one sends a message.
        with ClientFrom(gateway.port, CLIENT_ADDR) as c:
            assert c.greeting.code == 220, c.greeting
            c.ehlo()
            c.envelope(b"budi@dinas.jakarta.go.id", [b"sari@example.org"])
            c.send(b"Subject: admitted\r\n\r\nisi\r\n.\r\n")
            assert c.reply().code == 250
            # The limit itself still holds for clients: one more is one too many.
            with ClientFrom(gateway.port, CLIENT_ADDR) as extra:
                assert extra.greeting.code == 421, extra.greeting
                assert extra.greeting.text.startswith(TOO_MANY_CONNECTIONS.line().encode())
            assert c.cmd(b"QUIT").code == 221
    [got] = sink.wait_for(1)
    assert got.mail_from == "budi@dinas.jakarta.go.id"
    assert got.data.endswith(b"Subject: admitted\r\n\r\nisi\r\n")
