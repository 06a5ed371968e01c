"""examples/gateway.yaml says what it does: its comments match what the config means."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from milter.config import load
from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "gateway.yaml"


def test_example_loads_and_its_secure_route_is_a_local_maildir() -> None:
    config = load(EXAMPLE)
    sanapati = config.routes["sanapati"]
    # A Maildir route is a file on this machine: TLS does not apply, and the example
    # does not pretend otherwise with a `tls:` it ignores.
    assert sanapati.scheme == "maildir"
    text = EXAMPLE.read_text()
    assert not re.search(r"(?m)^\s*sanapati:.*\btls:", text)
    assert "tls: none" not in text


def test_example_production_route_verifies_the_relay(tmp_path: Path) -> None:
    [line] = [ln for ln in EXAMPLE.read_text().splitlines() if re.match(r"\s*#\s*sanapati:", ln)]
    route = yaml.safe_load(line.split("#", 1)[1])
    assert route == {"sanapati": {"url": "smtp://relay.sanapati.net:25", "tls": "verify"}}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"listen": ["127.0.0.1:2525"], "routes": route}))
    sanapati = load(path).routes["sanapati"]
    assert (sanapati.scheme, sanapati.host, sanapati.tls) == (
        "smtp",
        "relay.sanapati.net",
        "verify",
    )
