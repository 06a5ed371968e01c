"""Golden findings: each fixture message's JSON report is compared with the reviewed copy.

Set MILTER_UPDATE_GOLDEN=1 to rewrite the JSON after a deliberate change, then review
the diff before committing it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from milter.inspect import inspect_message
from milter.inspect.report import to_json

FIXTURES = Path(__file__).parent / "fixtures"
MESSAGES = sorted(FIXTURES.glob("*.eml"))


def test_fixtures_present() -> None:
    assert len(MESSAGES) >= 5


@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: p.stem)
def test_golden(path: Path) -> None:
    got = to_json(inspect_message(path.read_bytes()))
    golden = path.with_suffix(".json")
    if os.environ.get("MILTER_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(got, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
    assert got == json.loads(golden.read_text())
