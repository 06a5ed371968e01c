"""Every route with every method, signed out and as each role, with real and hostile
ids: the UI answers each one without a server error, and the agency dashboard shows
each person only the agencies they may see."""

from __future__ import annotations

from starlette.routing import Mount, Route

from milter.review.app import create_app
from tests.review.conftest import ROLE_USERS, Env, hold, token

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")
HOSTILE_IDS = ("NOPE", "..%2F..%2Fetc%2Fpasswd", "%00", "a" * 300, "%3Cscript%3E", "'--")


def paths(env: Env, ids: list[str]) -> list[str]:
    """The concrete URLs of every route of the application (templates filled in)."""
    app = create_app(env.config, store=env.store, settings=env.settings)
    out: list[str] = []
    for route in app.routes:
        if isinstance(route, Mount):
            out += ["/static/style.css", "/static/nothing.css", "/static/../app.py"]
            continue
        assert isinstance(route, Route)
        template = route.path
        for qid in ids:
            for verb in ("release", "delete", "bulk", "html", "x"):
                out.append(template.replace("{qid}", qid).replace("{verb:str}", verb)
                           .replace("{name}", "petugas2"))
    return sorted(set(out))


def test_no_route_and_method_yields_a_server_error(env: Env) -> None:
    own = hold(env.store, "a@bpkd.jakarta.go.id", ["x@gmail.com"], "Milik BPKD")
    other = hold(env.store, "b@dishub.jakarta.go.id", ["y@gmail.com"], "Milik Dishub",
                 html="<p>hai</p>")
    urls = paths(env, [own, other, *HOSTILE_IDS])
    assert "/quarantine/{qid}" not in urls and len(urls) > 40
    clients = {"anonymous": env.client()}
    for role in ROLE_USERS:
        clients[role] = env.login(role)
    failures = []
    for who, client in clients.items():
        home = {"anonymous": "/login", "auditor": "/audit", "admin": "/users"}
        csrf = token(client, home.get(who, "/quarantine"))
        for url in urls:
            if url.endswith("/logout") or "/disable" in url:
                continue   # would end the crawl's own session or accounts; tested apart
            for method in METHODS:
                data = {"reason": "crawl", "csrf": csrf, "ids": [own, "NOPE"],
                        "action": "delete"} if method == "POST" else None
                r = client.request(method, url, data=data)
                if r.status_code >= 500:
                    failures.append((who, method, url, r.status_code))
    assert failures == []
    # Hostile bodies too: no form encoding, a huge body, a multipart upload.
    c = clients["officer"]
    for kwargs in ({"content": b"\xff\xfe"}, {"content": b"x" * (2 << 20)},
                   {"files": {"f": ("a.txt", b"data")}}):
        assert c.post("/login", **kwargs).status_code < 500   # type: ignore[arg-type]
        assert c.post(f"/quarantine/{own}/release", **kwargs).status_code < 500  # type: ignore[arg-type]


def test_agency_dashboard_per_role(env: Env) -> None:
    hold(env.store, "a@bpkd.jakarta.go.id", ["x@gmail.com"], "Milik BPKD", rule="aturan-bpkd")
    hold(env.store, "b@dishub.jakarta.go.id", ["y@yahoo.com"], "Milik Dishub",
         rule="aturan-dishub")
    head = env.login("head").get("/agency")
    assert head.status_code == 200
    assert "bpkd.jakarta.go.id" in head.text and "dishub" not in head.text
    assert "<svg" in head.text and "aturan-bpkd" in head.text and "gmail.com" in head.text
    assert "<script" not in head.text and "http://" not in head.text.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    officer = env.login("officer").get("/agency?lang=en").text
    assert "All senders" in officer and "aturan-dishub" in officer
    assert env.login("auditor").get("/agency").status_code == 403
