"""Durable quarantine puts per second, SQLite and PostgreSQL (a tool, not a test).

    .venv/bin/python -m bench.bench_quarantine [--count 200] [--size 50KB]

Each put writes the spool file (SQLite) or the row's bytes (PostgreSQL) and the record,
fsync'd or committed, plus its audit entry: what a held message costs the gateway.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from pathlib import Path

import psycopg

from milter.config import QuarantineConfig, parse_size
from milter.quarantine.store import QuarantineRecord, open_store

PG = "postgresql://127.0.0.1:5432/test"


def rate(config: QuarantineConfig, count: int, data: bytes) -> float:
    with open_store(config) as store:
        t0 = time.perf_counter()
        for i in range(count):
            store.put(
                data,
                QuarantineRecord(
                    id="",
                    received_at=time.time(),
                    client="127.0.0.1",
                    sender="budi@dinas.jakarta.go.id",
                    recipients=(f"r{i}@gmail.com",),
                    subject="bench",
                    size=len(data),
                    rules=("bench",),
                ),
            )
        return count / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--size", default="50KB")
    args = ap.parse_args()
    data = b"x" * parse_size(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = QuarantineConfig(database=f"sqlite:///{tmp}/q.sqlite3", spool=f"{tmp}/spool")
        print(f"sqlite      {rate(cfg, args.count, data):8.0f} puts/s  ({args.size} each)")
        try:
            schema = f"milter_bench_{secrets.token_hex(4)}"
            with psycopg.connect(PG, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {schema}")
            try:
                url = f"{PG}?options=-csearch_path%3D{schema}"
                cfg = QuarantineConfig(database=url, spool=str(Path(tmp) / "pg-spool"))
                print(f"postgresql  {rate(cfg, args.count, data):8.0f} puts/s  ({args.size} each)")
            finally:
                with psycopg.connect(PG, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")
        except psycopg.OperationalError as exc:
            print(f"postgresql  not measured: {exc}")


if __name__ == "__main__":
    main()
