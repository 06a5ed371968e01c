"""``QuarantineStore.search``, the review list's query, on both back-ends: each filter,
the agency restriction, sorting, paging and the total; and the figures' raw facts."""

from __future__ import annotations

import time
from typing import Any

import pytest

from milter.quarantine.sql import SqlStore
from milter.quarantine.store import (
    DELETED,
    REJECTED,
    RELEASED,
    QuarantineError,
    QuarantineRecord,
    QuarantineStore,
    Search,
)
from tests.quarantine.conftest import Backend

NOW = time.time()
DAY = 86400.0


def put(store: QuarantineStore, **kw: Any) -> str:
    base: dict[str, Any] = {
        "id": "",
        "received_at": NOW,
        "client": "10.0.0.1",
        "sender": "budi@bpkd.jakarta.go.id",
        "recipients": ("teman@gmail.com",),
        "subject": "Nota dinas",
        "size": 100,
        "classification": "RAHASIA",
        "rules": ("rahasia-keluar",),
        "clauses": ("2.c, 3.b",),
    }
    base.update(kw)
    return store.put(b"Subject: x\r\n\r\nx\r\n", QuarantineRecord(**base))


@pytest.fixture
def seeded(store: QuarantineStore) -> tuple[QuarantineStore, dict[str, str]]:
    ids = {
        "a": put(store, received_at=NOW - 5 * DAY, subject="Anggaran 2027 RAHASIA"),
        "b": put(
            store,
            received_at=NOW - 4 * DAY,
            sender="ani@pajak.bpkd.jakarta.go.id",
            recipients=("Rekan@Yahoo.co.id", "lain@gmail.com"),
            subject="Data wajib pajak",
            classification="SANGAT_RAHASIA",
            rules=("data-pribadi-massal",),
            size=5000,
        ),
        "c": put(
            store,
            received_at=NOW - 3 * DAY,
            sender="joko@xbpkd.jakarta.go.id",
            subject="100% diskon_besar",
            classification="TERBATAS",
        ),
        "d": put(
            store,
            received_at=NOW - 2 * DAY,
            sender="Sari@Bapenda.Jakarta.go.id",
            recipients=("teman@gmail.com",),
            subject="Laporan bulanan",
            classification=None,
            rules=("tak-terperiksa-keluar",),
        ),
        "e": put(store, received_at=NOW - 1 * DAY, sender="", subject="bounce"),
    }
    store.transition(ids["d"], RELEASED, "siti", "ok")
    return store, ids


def found(store: QuarantineStore, **kw: Any) -> list[str]:
    records, total = store.search(Search(sort="received_at", **kw))
    assert total == len(records)  # every case below fits on one page
    return [r.id for r in records]


CASES: list[tuple[dict[str, Any], str]] = [
    ({}, "abcde"),
    ({"q": "anggaran"}, "a"),  # subject, any case
    ({"q": "YAHOO"}, "b"),  # recipients
    ({"q": "bapenda"}, "d"),  # sender
    ({"q": "100%"}, "c"),  # % is a literal, not a wildcard
    ({"q": "a_"}, ""),  # so is _
    ({"q": "diskon_besar"}, "c"),
    ({"q": "1"}, "c"),  # shorter than an indexed trigram
    ({"q": 'x"y'}, ""),
    ({"q": "0%"}, "c"),
    ({"q": "WAJIB pajak"}, "b"),  # across a space: the exact comparison
    ({"sender": "budi@bpkd.jakarta.go.id"}, "a"),
    ({"sender": "SARI@bapenda.jakarta.go.id"}, "d"),
    ({"sender": "@bpkd.jakarta.go.id"}, "a"),  # exactly that domain
    ({"recipient": "rekan@yahoo.co.id"}, "b"),
    ({"recipient": "gmail.com"}, ""),  # a whole address, not a part
    ({"recipient": "teman@gmail.com"}, "acde"),
    ({"rule": "data-pribadi-massal"}, "b"),
    ({"rule": "data-pribadi"}, ""),  # a whole rule name
    ({"classification": "SANGAT_RAHASIA"}, "b"),
    ({"classification": "RAHASIA"}, "ae"),
    ({"status": "released"}, "d"),
    ({"status": "held"}, "abce"),
    ({"since": NOW - 3.5 * DAY}, "cde"),
    ({"until": NOW - 3.5 * DAY}, "ab"),
    ({"since": NOW - 4.5 * DAY, "until": NOW - 2.5 * DAY}, "bc"),
    ({"sender_domains": ("bpkd.jakarta.go.id",)}, "ab"),  # subdomains, not xbpkd
    ({"sender_domains": ("BPKD.jakarta.go.id", "bapenda.jakarta.go.id")}, "abd"),
    ({"sender_domains": ("jakarta.go.id",)}, "abcd"),
    ({"sender_domains": ()}, ""),
    ({"sender_domains": ("pajak.bpkd.jakarta.go.id",), "q": "pajak"}, "b"),
    ({"sender_domains": ("bpkd.jakarta.go.id",), "classification": "RAHASIA"}, "a"),
]


@pytest.mark.parametrize(("filters", "expected"), CASES)
def test_each_filter(
    seeded: tuple[QuarantineStore, dict[str, str]], filters: dict[str, Any], expected: str
) -> None:
    store, ids = seeded
    assert found(store, **filters) == [ids[k] for k in expected]


def test_sort_page_total(seeded: tuple[QuarantineStore, dict[str, str]]) -> None:
    store, ids = seeded
    newest, total = store.search(Search(per_page=2))
    assert total == 5 and [r.id for r in newest] == [ids["e"], ids["d"]]
    second, total = store.search(Search(per_page=2, page=2))
    assert total == 5 and [r.id for r in second] == [ids["c"], ids["b"]]
    last, _ = store.search(Search(per_page=2, page=3))
    assert [r.id for r in last] == [ids["a"]]
    beyond, total = store.search(Search(per_page=2, page=9))
    assert beyond == [] and total == 5
    biggest, _ = store.search(Search(sort="-size", per_page=1))
    assert [r.id for r in biggest] == [ids["b"]]
    by_subject, _ = store.search(Search(sort="subject", q="a"))
    assert [r.subject for r in by_subject] == sorted(r.subject for r in by_subject)
    full = store.search(Search(q="wajib"))[0][0]
    assert full == store.get(ids["b"])  # a whole record, as get returns it


@pytest.mark.parametrize(
    "bad",
    [
        {"sort": "findings"},
        {"sort": "-id; DROP TABLE audit"},
        {"page": 0},
        {"per_page": 0},
        {"per_page": 5000},
        {"status": "lost"},
    ],
)
def test_bad_search_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(QuarantineError):
        Search(**bad)


def test_pending_status_and_audit_for(store: QuarantineStore) -> None:
    qid = put(store, classification="SANGAT_RAHASIA")
    other = put(store)
    store.transition(qid, "pending", "siti", "first", action="approve")
    assert found(store, status="pending") == [qid]
    assert [(e.action, e.actor) for e in store.audit_for(qid)] == [
        ("quarantine", "gateway"),
        ("approve", "siti"),
    ]
    assert [e.action for e in store.audit_for(other)] == ["quarantine"]
    assert store.verify_audit() == []


def test_rows_from_before_search_are_found(backend: Backend) -> None:
    """A database written before ``sender_rdomain`` existed is filled in when opened."""
    store = backend.open()
    qid = put(store, sender="ani@pajak.bpkd.jakarta.go.id")
    assert isinstance(store, SqlStore)
    with store._transaction() as db:
        db.execute("UPDATE quarantine SET sender_rdomain = NULL")
        if backend.name == "sqlite":  # and before its text index
            db.execute("DROP TABLE quarantine_text")
            db.execute("DROP TRIGGER quarantine_text_insert")
            db.execute("DROP TRIGGER quarantine_text_delete")
    store.close()
    again = backend.open()
    assert found(again, sender_domains=("bpkd.jakarta.go.id",)) == [qid]
    assert found(again, q="pajak.bpkd") == [qid]
    later = put(again, subject="Pajak daerah")
    assert sorted(found(again, q="pajak")) == sorted([qid, later])


def test_facts_and_rejections(store: QuarantineStore) -> None:
    put(store, received_at=NOW - 10)
    b = put(store, received_at=NOW - 20, sender="x@bapenda.jakarta.go.id")
    put(store, received_at=NOW - 30 * DAY)
    store.transition(b, DELETED, "siti", "spam")
    store.record_rejection(
        at=NOW - 5,
        queue_id="Q9",
        sender="budi@pajak.bpkd.jakarta.go.id",
        recipients=["x@gmail.com"],
        rules=["lampiran-berbahaya"],
        clauses=["3.b"],
    )
    facts = store.facts(NOW - DAY, NOW + 1)
    assert sorted(f.status for f in facts) == sorted(["held", DELETED, REJECTED])
    mine = store.facts(NOW - DAY, NOW + 1, ("bpkd.jakarta.go.id",))
    assert sorted((f.status, f.rules) for f in mine) == [
        ("held", ("rahasia-keluar",)),
        (REJECTED, ("lampiran-berbahaya",)),
    ]
    assert store.facts(NOW - DAY, NOW + 1, ()) == []


def test_a_capped_count_stops_past_the_limit_and_pages_stay_right(
    store: QuarantineStore,
) -> None:
    """The list asks for an exact count only a little past its page: more matches
    than that are reported as ``count_limit + 1``, and the page itself (newest first,
    free text, the walk SQLite takes for many matches) is the same as uncapped."""
    ids = [
        put(store, received_at=NOW - i, subject=f"Nota anggaran {i}" if i % 2 else f"Rapat {i}")
        for i in range(60)
    ]
    newest_nota = [ids[i] for i in range(60) if i % 2][:5]
    exact = Search(q="anggaran", per_page=5)
    capped = Search(q="anggaran", per_page=5, count_limit=7)
    assert store.search(exact)[1] == 30
    records, total = store.search(capped)
    assert total == 8
    assert [r.id for r in records] == [r.id for r in store.search(exact)[0]] == newest_nota
    assert store.search(Search(q="rapat", per_page=5, count_limit=100))[1] == 30
    assert store.search(Search(q="tidak-ada", count_limit=0))[1] == 0
    # Page 6 of 5-per-page: the last five matches, also when the walk is taken.
    assert isinstance(store, SqlStore)
    store._WALK_FROM = 3  # type: ignore[attr-defined]
    last = store.search(Search(q="anggaran", per_page=5, page=6, count_limit=40))
    assert [r.id for r in last[0]] == [ids[i] for i in range(60) if i % 2][25:]
    assert last[1] == 30
