"""The review list's search over 100,000 held messages, SQLite and PostgreSQL (a tool,
not a test).

    .venv/bin/python -m bench.bench_search [--count 100000] [--rounds 40] [--no-postgres]

Fills a fresh store with ``--count`` records spread over 90 days, 60 agencies (with
subdomains), outside destinations, classifications, rules and statuses, the way a
year of a busy gateway looks, then times ``QuarantineStore.search`` (the COUNT, up to a
thousand matches past the page, and the page together, as the list page calls it)
and ``get`` + ``audit_for`` (the message page's reads), and prints p50 and p95 per
query in milliseconds. The records are
inserted in one transaction without message bytes: the search never reads them.
Everything it makes (a temporary directory, a PostgreSQL schema) is removed at the end.
"""

from __future__ import annotations

import argparse
import random
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from milter.config import QuarantineConfig
from milter.envelope import new_id
from milter.quarantine.sql import COLUMNS, SqlStore, record_values
from milter.quarantine.store import DELETED, RELEASED, QuarantineRecord, Search, reversed_domain

PG = "postgresql://127.0.0.1:5432/test"
NOW = time.time()
WORDS = [
    "anggaran",
    "nota",
    "dinas",
    "laporan",
    "bulanan",
    "rapat",
    "koordinasi",
    "data",
    "pegawai",
    "pajak",
    "daerah",
    "undangan",
    "surat",
    "keputusan",
    "rekap",
    "realisasi",
    "belanja",
    "pengadaan",
    "kontrak",
    "tender",
]
OUTSIDE = ["gmail.com", "yahoo.co.id", "protonmail.com", "outlook.com", "kantor.co.id"]
LEVELS = [None, "TERBATAS", "RAHASIA", "RAHASIA", "SANGAT_RAHASIA"]
RULES = ["rahasia-keluar", "data-pribadi-massal", "tak-terperiksa-keluar", "konten-terlarang"]


def agency(i: int) -> str:
    return f"dinas{i:02d}.jakarta.go.id"


def record(rng: random.Random, i: int) -> QuarantineRecord:
    a = rng.randrange(60)
    sub = "" if rng.random() < 0.7 else f"uptd{rng.randrange(5)}."
    rule = rng.choice(RULES)
    subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
    return QuarantineRecord(
        id=new_id(),
        received_at=NOW - rng.random() * 90 * 86400,
        client="10.0.0.1",
        sender=f"pegawai{rng.randrange(500)}@{sub}{agency(a)}",
        recipients=tuple(
            f"orang{rng.randrange(10000)}@{rng.choice(OUTSIDE)}" for _ in range(rng.randint(1, 3))
        ),
        subject=subject.capitalize(),
        size=rng.randint(2_000, 5_000_000),
        classification=rng.choice(LEVELS),
        labels=("Rahasia",),
        rules=(rule,),
        clauses=("2.c, 3.b",),
        findings={
            "rules": [{"name": rule, "reasons": [f"classification from subject {i}"] * 3}],
            "attachments": [{"name": "nota.pdf", "type": "application/pdf", "size": 12345}],
        },
    )


def fill(store: SqlStore, count: int) -> list[str]:
    rng = random.Random(79)
    rows: list[tuple[Any, ...]] = []
    ids: list[str] = []
    for i in range(count):
        rec = record(rng, i)
        status = rng.random()
        values = list(record_values(rec))
        values[12] = RELEASED if status < 0.2 else DELETED if status < 0.3 else "held"
        rows.append((*values, reversed_domain(rec.sender)))
        ids.append(rec.id)
    marks = ", ".join("?" * len(rows[0]))
    sql = store._sql(f"INSERT INTO quarantine ({COLUMNS}, sender_rdomain) VALUES ({marks})")
    with store._transaction() as db:
        db.executemany(sql, rows)  # type: ignore[attr-defined]
    # Statistics, as a database in use has them (PostgreSQL's autovacuum; SQLite's
    # ``PRAGMA optimize``).
    url = getattr(store, "url", None)
    if url is None:
        with store._transaction() as db:
            db.execute("ANALYZE")
    else:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE quarantine")
    return ids


def timed(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    fn()  # warm the caches once, as a page seen twice would be
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[max(0, round(0.95 * len(times)) - 1)]


def run(name: str, config: QuarantineConfig, count: int, rounds: int) -> None:
    from milter.quarantine.store import open_store

    with open_store(config) as store:
        assert isinstance(store, SqlStore)
        t0 = time.perf_counter()
        ids = fill(store, count)
        print(f"{name}: {count} records in {time.perf_counter() - t0:.1f} s")
        week = NOW - 7 * 86400
        queries: dict[str, Search] = {
            "newest page (no filter)": Search(),
            "status=held": Search(status="held"),
            "q=anggaran (free text)": Search(q="anggaran"),
            "q=orang4242 (rare free text)": Search(q="orang4242"),
            "sender=@agency": Search(sender="@dinas07.jakarta.go.id"),
            "recipient=address": Search(recipient="orang4242@gmail.com"),
            "rule": Search(rule="konten-terlarang"),
            "classification+since 7d": Search(classification="SANGAT_RAHASIA", since=week),
            "head: one agency": Search(sender_domains=("dinas07.jakarta.go.id",)),
            "head: agency+held+q": Search(
                sender_domains=("dinas07.jakarta.go.id",), status="held", q="nota"
            ),
            "page 200 (offset 9950)": Search(page=200),
            "sort=-size": Search(sort="-size"),
        }
        width = max(len(k) for k in queries) + 2
        print(f"  {'query':<{width}} {'total':>7} {'p50 ms':>8} {'p95 ms':>8}")
        for label, asked in queries.items():
            # As the list page asks: an exact count up to a thousand past the page.
            s = replace(asked, count_limit=asked.page * asked.per_page + 1000)
            total = store.search(s)[1]
            p50, p95 = timed(lambda s=s: store.search(s), rounds)  # type: ignore[misc]
            print(f"  {label:<{width}} {total:>7} {p50:>8.1f} {p95:>8.1f}")
        rng = random.Random(1)

        def message_page() -> None:
            qid = rng.choice(ids)
            store.get(qid)
            store.audit_for(qid)

        p50, p95 = timed(message_page, rounds)
        print(f"  {'message: get+audit_for':<{width}} {'':>7} {p50:>8.1f} {p95:>8.1f}")


def backends(tmp: Path, *, postgres: bool) -> Iterator[tuple[str, QuarantineConfig]]:
    """A fresh SQLite store in ``tmp``, then (unless told not to, or when the server
    is not there) one in a PostgreSQL schema of its own, dropped afterwards."""
    yield "sqlite", QuarantineConfig(database=f"sqlite:///{tmp}/q.sqlite3", spool=f"{tmp}/spool")
    if not postgres:
        return
    import psycopg

    schema = f"milter_bench_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(PG, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
    except psycopg.Error as exc:
        print(f"postgresql: skipped ({exc})")
        return
    try:
        url = f"{PG}?options=-csearch_path%3D{schema}"
        yield "postgresql", QuarantineConfig(database=url, spool=str(tmp / "pg-spool"))
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--no-postgres", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in backends(Path(tmp), postgres=not args.no_postgres):
            run(name, cfg, args.count, args.rounds)


if __name__ == "__main__":
    main()
