"""``milter inspect`` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from milter.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


def test_inspect_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(FIXTURES / "nested-zip-docx.eml")
    assert main(["inspect", path]) == 0
    out = capsys.readouterr().out
    assert "Classification: RAHASIA" in out
    assert "attachment:laporan.zip/nota.docx:docProps/custom.xml" in out
    assert main(["inspect", "--json", path]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["classification"] == "RAHASIA"
    assert data["detectors"]["nik"]["count"] == 1


def test_inspect_uses_config_limits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("inspect:\n  max_bytes: 100\n")
    path = str(FIXTURES / "subject-msip.eml")
    assert main(["-c", str(config), "inspect", "--json", path]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["unscannable"] == ["message larger than the examined bytes limit"]


def test_unreadable_file_is_one_line_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "/nonexistent/x.eml"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x.eml" in err
