"""The review UI in-process: a real store (SQLite, or PostgreSQL), real accounts, and
Starlette's TestClient speaking HTTP to the application object."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml
from argon2 import PasswordHasher
from starlette.testclient import TestClient

from milter.config import GatewayConfig, load
from milter.quarantine.store import QuarantineRecord, QuarantineStore, open_store
from milter.quarantine.users import Users, users_of
from milter.review.app import create_app
from milter.review.settings import ReviewSettings, settings_of
from tests.conftest import Sink, free_port
from tests.quarantine.conftest import pg_schema_factory  # noqa: F401 - a fixture

PASSWORD = "sandi-rahasia-123"
ROLE_USERS = {
    "officer": ("petugas1", (), "officer"),
    "officer2": ("petugas2", (), "officer"),
    "head": ("kepala.bpkd", ("bpkd.jakarta.go.id",), "head"),
    "auditor": ("auditor1", (), "auditor"),
    "admin": ("admin1", (), "admin"),
}
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Clock:
    """A clock the test moves: session expiry and throttling without sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def write_config(tmp: Path, upstream_port: int, database: str | None = None,
                 review: dict[str, Any] | None = None) -> GatewayConfig:
    cfg: dict[str, Any] = {
        "listen": [f"127.0.0.1:{free_port()}"],
        "hostname": "gw.test.jakarta.go.id",
        "upstream": f"smtp://127.0.0.1:{upstream_port}",
        "quarantine": {"database": database or f"sqlite:///{tmp}/db/q.sqlite3",
                       "spool": str(tmp / "spool")},
        "review": review or {},
    }
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load(path)


def mail(sender: str, rcpts: list[str], subject: str, body: str = "Isi surat.",
         html: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(rcpts)
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{time.monotonic_ns()}@dinas.jakarta.go.id>"
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


def hold(store: QuarantineStore, sender: str, rcpts: list[str], subject: str, *,
         classification: str | None = "RAHASIA", rule: str = "rahasia-keluar",
         body: str = "Isi surat.", html: str | None = None, received_at: float | None = None,
         labels: tuple[str, ...] = ()) -> str:
    """A held message as the gateway stores one (bytes, record, audit entry)."""
    data = mail(sender, rcpts, subject, body, html)
    raw_labels = labels or ((f"[{classification}]",) if classification else ())
    record = QuarantineRecord(
        id="", received_at=received_at or time.time(), client="127.0.0.1", sender=sender,
        recipients=tuple(rcpts), subject=subject, size=len(data),
        classification=classification, labels=(classification,) if classification else (),
        rules=(rule,), clauses=("3.a",),
        findings={"rules": [{"name": rule, "matched": True, "mode": "enforce",
                             "clause": "3.a", "reasons": ["classification RAHASIA"],
                             "recipient": rcpts[0]}],
                  "labels": [{"raw": x, "source": "subject", "level": classification}
                             for x in raw_labels],
                  "attachments": [], "detectors": {}, "unscannable": []},
    )
    return store.put(data, record)


@dataclass
class Env:
    config: GatewayConfig
    store: QuarantineStore
    users: Users
    clock: Clock
    settings: ReviewSettings
    sink: Sink
    clients: list[TestClient] = field(default_factory=list)

    def client(self, base_url: str = "http://testserver") -> TestClient:
        c = TestClient(create_app(self.config, store=self.store, settings=self.settings,
                                  clock=self.clock),
                       raise_server_exceptions=False, follow_redirects=False, base_url=base_url)
        c.__enter__()
        self.clients.append(c)
        return c

    def login(self, role: str, client: TestClient | None = None) -> TestClient:
        c = client or self.client()
        name = ROLE_USERS[role][0]
        r = login(c, name, PASSWORD)
        assert r.status_code == 303, r.text
        return c


def csrf_of(html: str) -> str:
    m = CSRF.search(html)
    assert m, html[:500]
    return m.group(1)


def login(client: TestClient, name: str, password: str) -> Any:
    page = client.get("/login")
    return client.post("/login", data={"username": name, "password": password,
                                       "csrf": csrf_of(page.text)})


def token(client: TestClient, path: str = "/quarantine") -> str:
    r = client.get(path)
    assert r.status_code == 200, (path, r.status_code)
    return csrf_of(r.text)


def make_env(tmp_path: Path, sink: Sink, database: str | None = None,
             review: dict[str, Any] | None = None) -> Env:
    config = write_config(tmp_path, sink.port, database, review)
    store = open_store(config.quarantine)
    # Accounts hashed with cheap argon2id parameters, to keep the suite fast; the UI's
    # own check rehashes them with the real ones at the first sign-in.
    cheap = Users(store, PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))  # type: ignore[arg-type]
    for name, agencies, role in ROLE_USERS.values():
        cheap.add(name, role, PASSWORD, agencies)
    users = users_of(store)
    return Env(config, store, users, Clock(), settings_of(config), sink)


@pytest.fixture
def env_factory(tmp_path: Path, sink: Sink) -> Iterator[Callable[..., Env]]:
    made: list[Env] = []

    def make(database: str | None = None, review: dict[str, Any] | None = None,
             sub: str = "a") -> Env:
        path = tmp_path / sub
        path.mkdir(exist_ok=True)
        e = make_env(path, sink, database, review)
        made.append(e)
        return e

    yield make
    for e in made:
        for c in e.clients:
            c.__exit__(None, None, None)
        e.store.close()


@pytest.fixture
def env(env_factory: Callable[..., Env]) -> Env:
    return env_factory()
