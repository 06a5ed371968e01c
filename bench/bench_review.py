"""The review web UI's pages over 100,000 held messages, SQLite and PostgreSQL (a tool,
not a test).

    .venv/bin/python -m bench.bench_review [--count 100000] [--rounds 100] [--no-postgres]

Fills a fresh store the way ``bench.bench_search`` does (records spread over 90 days,
60 agencies, outside destinations, classifications, rules, statuses), adds 200 held
messages with their bytes (text and HTML bodies, an attachment) for the message page,
then times whole requests through the application in-process (ASGI, no socket):
routing, session, search, rendering, and for the message page parsing the mail and
appending the "view" audit entry. Targets: list with a filter < 150 ms p95, message
page < 100 ms p95. Everything it makes (a temporary directory, a PostgreSQL schema) is
removed at the end.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

from starlette.testclient import TestClient

from bench.bench_search import backends, fill, record
from milter.config import GatewayConfig, QuarantineConfig
from milter.quarantine.sql import SqlStore
from milter.quarantine.store import open_store
from milter.quarantine.users import users_of
from milter.review.app import create_app

PG = "postgresql://127.0.0.1:5432/test"
PASSWORD = "bench-password-1"
LIST_TARGET, MESSAGE_TARGET = 150.0, 100.0


def message_bytes(rng: random.Random, subject: str, sender: str, rcpt: str) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = sender, rcpt, subject
    text = " ".join(rng.choice(["anggaran", "RAHASIA", "nota", "dinas", "laporan"])
                    for _ in range(1500))
    m.set_content(text)
    m.add_alternative(f"<html><body><p>{text}</p><img src='http://x.example/p.png'></body>"
                      "</html>", subtype="html")
    m.add_attachment(b"%PDF-1.4\n" + bytes(rng.randrange(256) for _ in range(20_000)),
                     maintype="application", subtype="pdf", filename="nota.pdf")
    return m.as_bytes()


def timed(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    fn()  # warm once, as a page seen twice would be
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[max(0, round(0.95 * len(times)) - 1)]


def run(name: str, qconfig: QuarantineConfig, tmp: Path, count: int, rounds: int) -> None:
    config = replace(GatewayConfig(), quarantine=qconfig,
                     review=replace(GatewayConfig().review, secret_file=None))
    with open_store(qconfig) as store:
        assert isinstance(store, SqlStore)
        t0 = time.perf_counter()
        fill(store, count)
        rng = random.Random(7)
        ids = []
        for i in range(200):
            rec = record(rng, count + i)
            data = message_bytes(rng, rec.subject, rec.sender, rec.recipients[0])
            ids.append(store.put(data, replace(rec, id="", size=len(data))))
        print(f"{name}: {count + 200} records in {time.perf_counter() - t0:.1f} s")
        users = users_of(store)
        users.add("officer1", "officer", PASSWORD)
        users.add("head1", "head", PASSWORD, ("dinas07.jakarta.go.id",))
        app = create_app(config, store=store)
        clients = {}
        for user in ("officer1", "head1"):
            c = TestClient(app, follow_redirects=False)
            c.__enter__()  # one event loop thread for every request, as a server has
            page = c.get("/login").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', page)
            assert csrf
            r = c.post("/login", data={"username": user, "password": PASSWORD,
                                       "csrf": csrf.group(1)})
            assert r.status_code == 303, r.text
            clients[user] = c
        pages: dict[str, tuple[str, str, float]] = {
            "list, newest (no filter)": ("officer1", "/quarantine", LIST_TARGET),
            "list, q=anggaran&status=held": (
                "officer1", "/quarantine?q=anggaran&status=held", LIST_TARGET),
            "list, sender=@agency": (
                "officer1", "/quarantine?sender=%40dinas07.jakarta.go.id", LIST_TARGET),
            "list, rule + since": (
                "officer1", "/quarantine?rule=konten-terlarang&since=2000-01-01", LIST_TARGET),
            "list, head: own agency + q": ("head1", "/quarantine?q=nota", LIST_TARGET),
            "list, page 100": ("officer1", "/quarantine?status=held&page=100", LIST_TARGET),
        }
        width = 34
        print(f"  {'page':<{width}} {'p50 ms':>8} {'p95 ms':>8}  target")
        for label, (user, path, target) in pages.items():
            c = clients[user]
            assert c.get(path).status_code == 200

            def get(c: TestClient = c, path: str = path) -> None:
                r = c.get(path)
                assert r.status_code == 200

            p50, p95 = timed(get, rounds)
            ok = "ok" if p95 < target else "MISSED"
            print(f"  {label:<{width}} {p50:>8.1f} {p95:>8.1f}  < {target:.0f} {ok}")
        officer = clients["officer1"]
        pick = random.Random(1)

        def message_page() -> None:
            r = officer.get(f"/quarantine/{pick.choice(ids)}")
            assert r.status_code == 200

        p50, p95 = timed(message_page, rounds)
        ok = "ok" if p95 < MESSAGE_TARGET else "MISSED"
        print(f"  {'message page (55 KB mail, audited)':<{width}} {p50:>8.1f} {p95:>8.1f}"
              f"  < {MESSAGE_TARGET:.0f} {ok}")
        for c in clients.values():
            c.__exit__(None, None, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--no-postgres", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in backends(Path(tmp), postgres=not args.no_postgres):
            run(name, cfg, Path(tmp), args.count, args.rounds)


if __name__ == "__main__":
    main()
