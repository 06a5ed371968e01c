"""Every real third-party message in the shared corpus inspects without raising."""

from __future__ import annotations

import pytest

from milter.inspect import inspect_message
from tests.corpus import corpus_root

CORPUS = corpus_root() / "real"


def test_whole_corpus_inspects() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"corpus folder {CORPUS} is absent on this machine")
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file())
    assert len(files) > 200
    internal = []
    for path in files:
        data = path.read_bytes()
        findings = inspect_message(data)
        assert findings.size == len(data)
        assert isinstance(findings.to_dict(), dict)
        if any(r.startswith("internal error") for r in findings.unscannable):
            internal.append((path.name, findings.unscannable))
    assert internal == []
