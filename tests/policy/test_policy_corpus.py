"""The shipped policy over real third-party mail: every message gets a verdict that
explains itself, whatever its MIME oddities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from policy_fixtures import CORPUS

from milter.envelope import Envelope
from milter.inspect import inspect_message
from milter.policy.engine import Policy

FILES = sorted((CORPUS / "real").rglob("*.eml"))
RECIPIENTS = ("a@gmail.com", "b@dinas.jakarta.go.id", "c@sanapati.net")


@pytest.mark.skipif(not FILES, reason="the shared corpus is not present")
def test_every_corpus_message_gets_an_explained_verdict(shipped_policy: Policy) -> None:
    names = {r.name for r in shipped_policy.rules}
    actions: set[str] = set()
    for path in FILES:
        findings = inspect_message(path.read_bytes(), scheme=shipped_policy.scheme)
        v = shipped_policy.evaluate(Envelope("x@example.com", RECIPIENTS), findings)
        where = str(path.relative_to(CORPUS))
        assert [r.address for r in v.recipients] == list(RECIPIENTS), where
        assert {r.name for r in v.rules} == names, where
        matched = {(r.name, r.recipient) for r in v.rules if r.matched}
        for rcpt in v.recipients:
            actions.add(rcpt.action)
            if rcpt.action != "deliver":
                assert rcpt.rules, where
            for rule in rcpt.rules:
                assert (rule, rcpt.address) in matched or (rule, None) in matched, where
        assert all(r.reasons for r in v.rules), where
        json.dumps(v.to_dict(findings.to_dict()))
    # the corpus holds executables, disguised types and encrypted mail
    assert actions == {"deliver", "quarantine", "reject"}


def test_corpus_pgp_message_is_held_outside_official_channels(shipped_policy: Policy) -> None:
    path = (
        CORPUS / "real/thunderbird/mail/components/extensions/test/xpcshell/messages/"
        "encryptedNestedMessages.eml"
    )
    if not path.exists():
        pytest.skip("the shared corpus is not present")
    findings = inspect_message(Path(path).read_bytes(), scheme=shipped_policy.scheme)
    v = shipped_policy.evaluate(Envelope("x@jakarta.go.id", RECIPIENTS), findings)
    assert [r.action for r in v.recipients] == ["quarantine", "deliver", "deliver"]
    reasons = next(
        r.reasons
        for r in v.rules
        if r.name == "tak-terperiksa-keluar" and r.recipient == "a@gmail.com"
    )
    assert reasons[0].startswith("encrypted: ")
