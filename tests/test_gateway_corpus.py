"""Every message of the shared real-mail corpus through a running gateway with the
shipped policy: each gets a definite answer, none a temporary failure or a traceback."""

from __future__ import annotations

import json
import smtplib
from typing import Any

import pytest

from tests.conftest import Sink
from tests.corpus import CORPUS
from tests.test_gateway_policy import POLICY

FILES = sorted((CORPUS / "real").rglob("*.eml")) if (CORPUS / "real").is_dir() else []


@pytest.mark.skipif(not FILES, reason=f"the shared corpus is absent ({CORPUS})")
def test_whole_corpus_through_the_gateway(sink: Sink, gateway_factory: Any) -> None:
    gw = gateway_factory(upstream=f"smtp://127.0.0.1:{sink.port}",
                         routes={"sanapati": f"smtp://127.0.0.1:{sink.port}"}, policy=POLICY,
                         max_message_size="60MB",
                         notices={"from": "postmaster@jakarta.go.id", "enabled": False})
    answers: dict[str, int] = {}
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=60) as s:
        s.ehlo("dinas.jakarta.go.id")
        for path in FILES:
            s.mail("budi@dinas.jakarta.go.id")
            s.rcpt("adi@bpkd.jakarta.go.id")
            s.rcpt("sari@gmail.com")
            code, _ = s.data(path.read_bytes())
            answers[str(path.relative_to(CORPUS))] = code
            if code != 250:
                s.rset()
    temporary = {p: c for p, c in answers.items() if c not in (250, 550)}
    assert temporary == {}, "every message gets a definite answer"
    lines = [json.loads(x) for x in gw.log().splitlines() if x.startswith("{")]
    assert not [x for x in lines if x["level"] == "error"]
    assert "Traceback" not in gw.log()
    logged = [x for x in lines if x.get("event") == "message"]
    assert len(logged) == len(FILES)
    # Internal recipients get every clean or labelled message; only refusals skip them.
    delivered_inside = sum(1 for m in sink.messages if "adi@bpkd.jakarta.go.id" in m.rcpt_tos)
    assert delivered_inside == sum(1 for c in answers.values() if c == 250)
