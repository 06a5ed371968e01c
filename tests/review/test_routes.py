"""The review UI's routes against a real SQLite store: sessions, roles, CSRF, throttling,
escaping, release and delete, audit; the same list and search path on PostgreSQL."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from milter.review.i18n import STRINGS
from milter.review.settings import default_secret_path
from tests.conftest import Sink
from tests.quarantine.conftest import pg_url
from tests.review.conftest import PASSWORD, ROLE_USERS, Env, csrf_of, hold, login, token

BPKD = "budi@bpkd.jakarta.go.id"
DISHUB = "sari@dishub.jakarta.go.id"


def test_healthz_needs_no_session_and_says_nothing(env: Env) -> None:
    r = env.client().get("/healthz")
    assert r.status_code == 200 and r.text == "ok"
    assert "set-cookie" not in r.headers


@pytest.mark.parametrize("path", ["/quarantine", "/audit", "/agency", "/users", "/queue",
                                  "/quarantine/XYZ", "/quarantine/XYZ/download", "/"])
def test_every_page_but_login_needs_a_session(env: Env, path: str) -> None:
    r = env.client().get(path)
    assert r.status_code == 303 and r.headers["location"] == "/login"


def test_login_sets_a_strict_cookie_and_audits_both_outcomes(env: Env) -> None:
    c = env.client()
    assert login(c, "petugas1", "salah-sandinya!!").status_code == 401
    r = login(c, "petugas1", PASSWORD)
    assert r.status_code == 303 and r.headers["location"] == "/quarantine"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Secure" not in cookie   # plain HTTP here; see the TLS test
    actions = [(e.actor, e.action) for e in env.store.audit_entries()]
    assert ("petugas1", "login-failed") in actions and ("petugas1", "login") in actions
    assert c.get("/quarantine").status_code == 200


def test_cookie_is_secure_when_served_over_tls(env: Env) -> None:
    env.settings = replace(env.settings, tls_cert="/x/cert.pem", tls_key="/x/key.pem")
    c = env.client(base_url="https://testserver")
    r = login(c, "petugas1", PASSWORD)
    assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]
    assert c.get("/quarantine").status_code == 200


def test_session_id_changes_at_sign_in(env: Env) -> None:
    c = env.client()
    c.get("/login")
    before = c.cookies.get("milter_review")
    env.login("officer", c)
    assert c.cookies.get("milter_review") not in (None, before)


def test_post_without_the_sessions_csrf_token_is_refused(env: Env) -> None:
    qid = hold(env.store, BPKD, ["x@gmail.com"], "[RAHASIA] Anggaran")
    c = env.login("officer")
    other = env.login("officer2")
    for data in ({"reason": "ok"}, {"reason": "ok", "csrf": token(other)},
                 {"reason": "ok", "csrf": "x"}):
        r = c.post(f"/quarantine/{qid}/delete", data=data)
        assert r.status_code == 403
    r = c.post("/login", data={"username": "petugas1", "password": PASSWORD})
    assert r.status_code in (303, 403)
    assert env.store.get(qid).status == "held"   # type: ignore[union-attr]
    r = c.post(f"/quarantine/{qid}/delete", data={"reason": "ok", "csrf": token(c)})
    assert r.status_code == 303 and env.store.get(qid).status == "deleted"  # type: ignore[union-attr]


def test_login_without_csrf_is_refused(env: Env) -> None:
    c = env.client()
    r = c.post("/login", data={"username": "petugas1", "password": PASSWORD})
    assert r.status_code == 403 and "milter_review" not in c.get("/quarantine").text


def test_throttle_per_account_then_lockout_ends(env: Env) -> None:
    c = env.client()
    for _ in range(5):
        assert login(c, "petugas1", "bukan-sandinya!!").status_code == 401
    r = login(c, "petugas1", PASSWORD)   # right password, but locked
    assert r.status_code == 429 and int(r.headers["retry-after"]) == 900
    assert login(c, "petugas2", PASSWORD).status_code == 429   # and this address too
    env.clock.advance(15 * 60 + 1)
    assert login(c, "petugas1", PASSWORD).status_code == 303


def test_throttle_per_address_across_names(env: Env) -> None:
    c = env.client()
    for i in range(5):
        assert login(c, f"tidak-ada-{i}", "bukan-sandinya!!").status_code == 401
    assert login(c, "auditor1", PASSWORD).status_code == 429


def test_throttle_settings_come_from_the_configuration(env_factory: Callable[..., Env]) -> None:
    e = env_factory(review={"login_throttle": {"attempts": 2, "window": "1m",
                                               "lockout": "1m"}})
    c = e.client()
    for _ in range(2):
        login(c, "petugas1", "bukan-sandinya!!")
    assert login(c, "petugas1", PASSWORD).status_code == 429
    e.clock.advance(61)
    assert login(c, "petugas1", PASSWORD).status_code == 303


def test_sessions_expire_on_the_server(env_factory: Callable[..., Env]) -> None:
    e = env_factory(review={"session_lifetime": "30s"})
    c = e.login("officer")
    assert c.get("/quarantine").status_code == 200
    e.clock.advance(31)
    r = c.get("/quarantine")
    assert r.status_code == 303 and r.headers["location"] == "/login"


def test_logout_ends_the_session_server_side(env: Env) -> None:
    c = env.login("officer")
    cookie = c.cookies.get("milter_review")
    assert c.post("/logout", data={"csrf": token(c)}).status_code == 303
    c.cookies.set("milter_review", cookie or "")
    assert c.get("/quarantine").status_code == 303


def test_disabled_account_loses_its_session_at_once(env: Env) -> None:
    c = env.login("officer")
    env.users.disable("petugas1")
    assert c.get("/quarantine").status_code == 303


def test_officer_searches_filters_and_pages(env: Env) -> None:
    for i in range(55):
        hold(env.store, BPKD, [f"r{i}@gmail.com"], f"Laporan {i}")
    hold(env.store, DISHUB, ["kontak@yahoo.com"], "[RAHASIA] Tender jembatan",
         rule="tender")
    c = env.login("officer")
    page = c.get("/quarantine")
    assert 'id="total">56<' in page.text and "1/2" in page.text
    assert 'name="q"' in page.text and 'name="since"' in page.text
    assert "Laporan 0" in c.get("/quarantine?page=2").text
    found = c.get("/quarantine", params={"q": "jembatan"}).text
    assert 'id="total">1<' in found and "Tender jembatan" in found
    assert 'id="total">1<' in c.get("/quarantine", params={"rule": "tender"}).text
    assert 'id="total">1<' in c.get("/quarantine", params={"recipient": "kontak@yahoo.com"}).text
    assert 'id="total">55<' in c.get("/quarantine", params={"sender": "@bpkd.jakarta.go.id"}).text
    assert 'id="total">0<' in c.get("/quarantine", params={"status": "released"}).text
    assert 'id="total">0<' in c.get("/quarantine", params={"until": "2001-01-01"}).text
    assert c.get("/quarantine", params={"page": "x", "since": "nope", "sort": "';--",
                                        "status": "bogus"}).status_code == 200


def test_head_sees_only_their_agency_by_every_url(env: Env) -> None:
    own = hold(env.store, "a@sub.bpkd.jakarta.go.id", ["x@gmail.com"], "Milik BPKD")
    other = hold(env.store, DISHUB, ["y@gmail.com"], "Milik Dishub")
    c = env.login("head")
    listing = c.get("/quarantine").text
    assert "Milik BPKD" in listing and "Milik Dishub" not in listing
    assert "Milik Dishub" not in c.get("/quarantine", params={"q": "Dishub"}).text
    assert c.get(f"/quarantine/{own}").status_code == 200
    assert c.get(f"/quarantine/{own}/download").status_code == 403   # officers only
    csrf = token(c)
    assert c.post(f"/quarantine/{own}/release", data={"reason": "x", "csrf": csrf}
                  ).status_code == 403
    for path in (f"/quarantine/{other}", f"/quarantine/{other}/html",
                 f"/quarantine/{other}/download"):
        r = c.get(path)
        assert r.status_code == 404 and "Dishub" not in r.text and DISHUB not in r.text
    for verb in ("release", "delete"):
        r = c.post(f"/quarantine/{other}/{verb}", data={"reason": "x", "csrf": csrf})
        assert r.status_code == 404
    assert c.get("/quarantine/NOPE").status_code == 404
    assert env.store.get(other).status == "held"   # type: ignore[union-attr]
    assert c.get("/audit").status_code == 403 and c.get("/users").status_code == 403


def test_admin_sees_no_mail_content(env: Env) -> None:
    qid = hold(env.store, BPKD, ["rahasia@gmail.com"], "Subjek sangat pribadi")
    c = env.login("admin")
    seen = []
    for path in ("/", "/users", "/quarantine", f"/quarantine/{qid}", f"/quarantine/{qid}/html",
                 f"/quarantine/{qid}/download", "/audit", "/agency", "/queue"):
        r = c.get(path)
        seen.append(r.text)
        assert r.status_code in (303, 200, 403, 404)
    text = "".join(seen)
    assert "Subjek sangat pribadi" not in text and "rahasia@gmail.com" not in text
    assert BPKD not in text


def test_admin_adds_and_disables_users(env: Env) -> None:
    c = env.login("admin")
    csrf = token(c, "/users")
    r = c.post("/users", data={"name": "kepala.dishub", "role": "head",
                               "password": "sandi-kepala-dishub",
                               "agencies": "dishub.jakarta.go.id", "csrf": csrf})
    assert r.status_code == 303
    assert env.users.get("kepala.dishub").agencies == ("dishub.jakarta.go.id",)  # type: ignore[union-attr]
    assert login(env.client(), "kepala.dishub", "sandi-kepala-dishub").status_code == 303
    r = c.post("/users/kepala.dishub/disable", data={"csrf": csrf})
    assert r.status_code == 303 and env.users.get("kepala.dishub").disabled  # type: ignore[union-attr]
    assert login(env.client(), "kepala.dishub", "sandi-kepala-dishub").status_code == 401
    actions = [(e.actor, e.action) for e in env.store.audit_entries()]
    assert ("admin1", "user-add") in actions and ("admin1", "user-disable") in actions
    assert env.login("officer").post("/users", data={"csrf": "x"}).status_code == 403


def test_message_page_escapes_highlights_and_frames(env: Env) -> None:
    subject = "[RAHASIA] <script>alert(1)</script> \x1b[31m\u202efdp.exe"
    html = ('<p onclick="x()">Hai<script>alert(2)</script><img src="http://127.0.0.1:9/a.png">'
            '<a href="javascript:alert(3)">klik</a></p>')
    qid = hold(env.store, BPKD, ["x@gmail.com"], subject, body="Dokumen [RAHASIA] terlampir.",
               html=html)
    c = env.login("officer")
    r = c.get(f"/quarantine/{qid}")
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    for part in ("default-src 'none'", "style-src 'self'", "img-src 'self' data:",
                 "form-action 'self'", "frame-ancestors 'none'", "base-uri 'none'",
                 "frame-src 'self'"):
        assert part in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "<script>alert" not in r.text and "&lt;script&gt;alert(1)" in r.text
    assert "\x1b" not in r.text and "\\x1b[31m" in r.text and "\\u202e" in r.text
    assert "<mark>[RAHASIA]</mark> terlampir" in r.text
    assert f'<iframe sandbox src="/quarantine/{qid}/html"' in r.text
    frame = c.get(f"/quarantine/{qid}/html")
    fcsp = frame.headers["content-security-policy"]
    assert "default-src 'none'" in fcsp and "sandbox" in fcsp and "allow-scripts" not in fcsp
    assert "style-src 'unsafe-inline'" in fcsp
    low = frame.text.lower()
    assert "<script" not in low and "onclick" not in low and "javascript:" not in low
    assert "http://" not in low and "Hai" in frame.text
    assert ("petugas1", "view", qid) in [(e.actor, e.action, e.qid)
                                        for e in env.store.audit_entries()]


def test_every_page_carries_the_strict_policy(env: Env) -> None:
    c = env.client()
    for path in ("/login", "/healthz", "/static/style.css"):
        r = c.get(path)
        assert "default-src 'none'" in r.headers["content-security-policy"], path
        assert r.headers["x-frame-options"] == "DENY"
    assert "<script" not in c.get("/login").text


def test_release_needs_a_reason_and_reaches_the_sink_once(env: Env, sink: Sink) -> None:
    qid = hold(env.store, BPKD, ["mitra@gmail.com"], "[RAHASIA] Kontrak")
    c = env.login("officer")
    csrf = token(c)
    assert c.post(f"/quarantine/{qid}/release", data={"reason": " ", "csrf": csrf}
                  ).status_code == 400
    r = c.post(f"/quarantine/{qid}/release", data={"reason": "izin kepala", "csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == f"/quarantine/{qid}"
    assert "released" in c.get(r.headers["location"]).text
    [got] = sink.wait_for(1)
    assert got.rcpt_tos == ["mitra@gmail.com"]
    assert c.post(f"/quarantine/{qid}/release", data={"reason": "lagi", "csrf": csrf}
                  ).status_code == 303
    assert len(sink.wait_for(2, timeout=0.5)) == 1   # never twice
    entries = [(e.actor, e.action) for e in env.store.audit_for(qid)]
    assert ("petugas1", "release") in entries


def test_two_person_release(env: Env, sink: Sink) -> None:
    qid = hold(env.store, BPKD, ["mitra@gmail.com"], "[SANGAT RAHASIA] Rencana",
               classification="SANGAT_RAHASIA")
    first, second = env.login("officer"), env.login("officer2")
    r = first.post(f"/quarantine/{qid}/release", data={"reason": "setuju", "csrf": token(first)})
    assert r.status_code == 303 and env.store.get(qid).status == "pending"  # type: ignore[union-attr]
    first.post(f"/quarantine/{qid}/release", data={"reason": "lagi", "csrf": token(first)})
    assert env.store.get(qid).status == "pending"  # type: ignore[union-attr]
    assert sink.messages == []
    second.post(f"/quarantine/{qid}/release", data={"reason": "setuju juga",
                                                    "csrf": token(second)})
    assert env.store.get(qid).status == "released"  # type: ignore[union-attr]
    assert len(sink.wait_for(1)) == 1
    trail = [(e.actor, e.action) for e in env.store.audit_for(qid)]
    assert ("petugas1", "approve") in trail and ("petugas2", "release") in trail


def test_bulk_delete_with_one_reason(env: Env) -> None:
    ids = [hold(env.store, BPKD, ["x@gmail.com"], f"Massal {i}") for i in range(3)]
    c = env.login("officer")
    r = c.post("/quarantine/bulk", data={"ids": ids[:2], "action": "delete",
                                         "reason": "spam internal", "csrf": token(c)})
    assert r.status_code == 303
    assert [env.store.get(q).status for q in ids] == ["deleted", "deleted", "held"]  # type: ignore[union-attr]
    assert all(e.reason == "spam internal" for q in ids[:2] for e in env.store.audit_for(q)
               if e.action == "delete")


def test_download_is_the_eml_and_audited(env: Env) -> None:
    qid = hold(env.store, BPKD, ["x@gmail.com"], "Unduh")
    r = env.login("officer").get(f"/quarantine/{qid}/download")
    assert r.status_code == 200 and r.content == env.store.read(qid)
    assert r.headers["content-type"].startswith("message/rfc822")
    assert "attachment" in r.headers["content-disposition"]
    assert ("petugas1", "download") in [(e.actor, e.action) for e in env.store.audit_for(qid)]


def test_audit_page_shows_the_chain_and_detects_tampering(env: Env, tmp_path: Path) -> None:
    hold(env.store, BPKD, ["x@gmail.com"], "Diaudit")
    c = env.login("auditor")
    page = c.get("/audit").text
    assert 'id="chain-state">terverifikasi<' in page and "auditor1" in page
    assert c.get("/quarantine").status_code == 403
    db = tmp_path / "a" / "db" / "q.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit SET actor = 'orang-lain' WHERE seq = 1")
    page = c.get("/audit?lang=en").text
    assert 'id="chain-state">BROKEN<' in page


def test_indonesian_first_english_remembered(env: Env) -> None:
    c = env.client()
    assert "Nama pengguna" in c.get("/login").text
    assert "Username" in c.get("/login?lang=en").text
    assert "Username" in c.get("/login").text
    assert set(STRINGS["id"]) == set(STRINGS["en"])


def test_base_path_prefixes_every_route_and_the_cookie(env_factory: Callable[..., Env]) -> None:
    e = env_factory(review={"base_path": "/review/"})
    c = e.client()
    assert c.get("/login").status_code == 404
    page = c.get("/review/login")
    assert page.status_code == 200 and 'action="/review/login"' in page.text
    assert 'href="/review/static/style.css"' in page.text
    r = c.post("/review/login", data={"username": "petugas1", "password": PASSWORD,
                                      "csrf": csrf_of(page.text)})
    assert r.status_code == 303 and r.headers["location"] == "/review/quarantine"
    assert "Path=/review" in r.headers["set-cookie"]
    assert c.get("/review/quarantine").status_code == 200


def test_secret_is_generated_once_and_private(env: Env) -> None:
    env.client()
    path = default_secret_path(env.config)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    before = path.read_bytes()
    c = env.login("officer")
    env.client()   # a second application object: same key, so the cookie still works
    assert path.read_bytes() == before and c.get("/quarantine").status_code == 200


def test_list_and_search_on_postgresql(pg_schema_factory: Callable[[], str],
                                       env_factory: Callable[..., Env]) -> None:
    e = env_factory(database=pg_url(pg_schema_factory()), sub="pg")
    hold(e.store, BPKD, ["x@gmail.com"], "PG milik BPKD")
    hold(e.store, DISHUB, ["y@gmail.com"], "PG milik Dishub")
    officer = e.login("officer")
    assert 'id="total">2<' in officer.get("/quarantine").text
    found = officer.get("/quarantine", params={"q": "dishub"}).text
    assert 'id="total">1<' in found and "PG milik Dishub" in found
    head = e.login("head").get("/quarantine").text
    assert "PG milik BPKD" in head and "PG milik Dishub" not in head
    qid = hold(e.store, DISHUB, ["z@gmail.com"], "PG lain")
    assert e.login("head").get(f"/quarantine/{qid}").status_code == 404


def test_every_role_has_an_account() -> None:
    assert {r for _, _, r in ROLE_USERS.values()} == {"officer", "head", "auditor", "admin"}


def test_officers_see_the_retry_queue_and_nobody_else_does(env: Env) -> None:
    import time

    from milter.quarantine.store import RetryEntry

    entry = RetryEntry(
        id="RQ1", queue_id="Q1", sender=BPKD, recipients=("rekan@dishub.jakarta.go.id",),
        route="upstream", created_at=time.time(), next_attempt=time.time() + 300,
        info={"subject": "Undangan rapat \x1b[31m"}, attempts=2,
        last_error="451 4.2.2 mailbox full <script>",
    )
    env.store.retry_add(entry, b"Subject: Undangan rapat\r\n\r\nisi\r\n")
    page = env.login("officer").get("/queue")
    assert page.status_code == 200
    for text in ("RQ1", "rekan@dishub.jakarta.go.id", "Undangan rapat \\x1b[31m",
                 "mailbox full &lt;script&gt;"):
        assert text in page.text, text
    assert "\x1b" not in page.text and "<script>" not in page.text
    for role in ("head", "auditor", "admin"):
        r = env.login(role).get("/queue")
        assert r.status_code in (403, 404) and "rekan@dishub" not in r.text, role
