"""Several gateway nodes sharing one PostgreSQL quarantine, and content the inspector
cannot see into, end to end."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import Sink
from tests.inspect.builders import encrypted_zip, zip_of
from tests.quarantine.conftest import pg_schema_factory, pg_url  # noqa: F401 - a fixture
from tests.test_gateway_actions import milter, notices
from tests.test_gateway_policy import POLICY, message, transaction


def test_two_nodes_share_one_postgres_quarantine(sink: Sink, gateway_factory: Any,
                                                 request: Any, tmp_path: Any) -> None:
    schema = request.getfixturevalue("pg_schema_factory")()   # skips if PostgreSQL is down
    shared = {"database": pg_url(schema), "spool": str(tmp_path / "spool")}
    common = {"upstream": f"smtp://127.0.0.1:{sink.port}",
              "routes": {"sanapati": f"smtp://127.0.0.1:{sink.port}"},
              "policy": POLICY, "quarantine": shared,
              "notices": {"from": "postmaster@jakarta.go.id", "enabled": False}}
    node_a = gateway_factory(**common)
    code, text = transaction(node_a.port, "budi@dinas.jakarta.go.id", ["sari@gmail.com"],
                             message("[RAHASIA] Nota dinas"))
    assert code == 250 and b"2.6.0" in text
    # The second node's configuration differs only by its listening port.
    node_b = gateway_factory(**common)
    assert node_b.port != node_a.port
    [held] = json.loads(milter(node_b, "quarantine", "list", "--json").stdout)
    assert held["recipients"] == ["sari@gmail.com"]
    r = milter(node_b, "quarantine", "release", held["id"], "--reason", "disetujui")
    assert r.returncode == 0, r.stderr
    delivered = [m for m in sink.wait_for(1) if m.mail_from not in ("", "<>")]
    assert [m.rcpt_tos for m in delivered] == [["sari@gmail.com"]]
    again = milter(node_a, "quarantine", "release", held["id"], "--reason", "lagi")
    assert again.returncode == 1, "a release from another node is still only once"
    verify = milter(node_a, "quarantine", "audit", "--verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize(("name", "data"), [
    ("arsip.zip", encrypted_zip("nota.docx", b"isi rahasia" * 50)),
    ("bom.zip", zip_of({f"f{i}.txt": b"0" * (4 << 20) for i in range(8)})),
], ids=["encrypted-zip", "zip-bomb"])
def test_unscannable_content_is_held_for_outsiders_only(sink: Sink, gateway_factory: Any,
                                                        name: str, data: bytes) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}",
                         routes={"sanapati": f"smtp://127.0.0.1:{sink.port}"}, policy=POLICY,
                         inspect={"expanded_bytes": "16MB", "expansion_ratio": 50},
                         notices={"from": "postmaster@jakarta.go.id", "enabled": False})
    code, text = transaction(gw.port, "budi@dinas.jakarta.go.id",
                             ["adi@bpkd.jakarta.go.id", "sari@gmail.com"],
                             message("Arsip", attachment=(name, data)))
    assert code == 250 and b"1 penerima ditahan" in text
    delivered = [m for m in sink.wait_for(1) if m.mail_from not in ("", "<>")]
    assert [m.rcpt_tos for m in delivered] == [["adi@bpkd.jakarta.go.id"]]
    [held] = json.loads(milter(gw, "quarantine", "list", "--json").stdout)
    assert held["recipients"] == ["sari@gmail.com"]
    assert held["rules"] == ["tak-terperiksa-keluar"]
    assert notices(sink, 0, timeout=0.2) == []
