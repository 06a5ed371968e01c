"""Quarantine back-ends under test: every store test runs against SQLite and PostgreSQL.

PostgreSQL tests use a schema of their own, named per run and dropped afterwards, so
they can share the server with other test runs.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from milter.config import QuarantineConfig
from milter.quarantine.store import QuarantineStore, StepHook, open_store

PG_SERVER = "postgresql://127.0.0.1:5432/test"


def pg_available() -> str | None:
    """None when the server answers, else why not."""
    try:
        with psycopg.connect(PG_SERVER, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any failure means the same: no server to test against
        return f"PostgreSQL at {PG_SERVER} unreachable: {exc}"
    return None


@dataclass
class Backend:
    name: str
    config: QuarantineConfig
    opened: list[QuarantineStore]

    def open(self, step_hook: StepHook | None = None) -> QuarantineStore:
        store = open_store(self.config, step_hook=step_hook)
        self.opened.append(store)
        return store


@pytest.fixture(scope="session")
def pg_schema_factory() -> Iterator[Callable[[], str]]:
    reason = pg_available()
    if reason:
        pytest.skip(reason)
    made: list[str] = []

    def make() -> str:
        name = f"milter_test_{secrets.token_hex(6)}"
        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        made.append(name)
        return name

    yield make
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        for name in made:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def pg_url(schema: str) -> str:
    return f"{PG_SERVER}?options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        cfg = QuarantineConfig(
            database=f"sqlite:///{tmp_path}/db/quarantine.sqlite3",
            spool=str(tmp_path / "spool"),
            retention=86400.0,
        )
    else:
        schema = request.getfixturevalue("pg_schema_factory")()
        cfg = QuarantineConfig(database=pg_url(schema), spool=str(tmp_path / "spool"))
    b = Backend(request.param, cfg, [])
    yield b
    for s in b.opened:
        s.close()


@pytest.fixture
def store(backend: Backend) -> QuarantineStore:
    return backend.open()
