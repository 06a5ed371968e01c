"""Policy test fixtures: real messages on disk and the real ``milter`` command line."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from policy_fixtures import SHIPPED, build_message

from milter.cli import main
from milter.policy.engine import Policy


@pytest.fixture(scope="session")
def shipped_policy() -> Policy:
    return Policy.load([str(SHIPPED)], routes=["sanapati"])


@pytest.fixture
def write_eml(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(10_000))

    def write(data: bytes | None = None, **kw: Any) -> Path:
        path = tmp_path / f"m{next(counter)}.eml"
        path.write_bytes(data if data is not None else build_message(**kw))
        return path

    return write


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``milter ARGS...`` in-process: (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            rc = main(list(args))
        except SystemExit as exc:
            rc = int(exc.code or 0)
        out = capsys.readouterr()
        return rc, out.out, out.err

    return run


@pytest.fixture
def check_json(cli: Callable[..., tuple[int, str, str]]) -> Callable[..., dict[str, Any]]:
    """``milter check --policy SHIPPED --json FILE [--from A] [--to A ...]`` as parsed JSON."""

    def run(
        path: Path,
        *,
        sender: str | None = None,
        to: Sequence[str] = (),
        policies: Sequence[Path] = (SHIPPED,),
    ) -> dict[str, Any]:
        args = ["check"]
        for p in policies:
            args += ["--policy", str(p)]
        if sender is not None:
            args += ["--from", sender]
        for a in to:
            args += ["--to", a]
        rc, out, err = run_cli(*args, "--json", str(path))
        assert rc == 0, err
        result: dict[str, Any] = json.loads(out)
        return result

    run_cli = cli
    return run
