"""End to end in a real browser: a real gateway holds mail sent over SMTP, ``milter
review`` serves the UI, and Debian's Chromium (driven by Playwright, no browser
download) is the officer, the second officer, the head of agency and the auditor.

The hostile message carries every way HTML has to run code or reach out (script,
event handlers, ``javascript:`` links, remote images, CSS ``url()`` and ``@import``,
meta refresh, forms, frames, link preloads), all pointing at a loopback "remote"
server that records each hit: the page must make none and run nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import ROOT, GatewayProcess, Sink, free_port, wait_port
from tests.test_gateway_policy import POLICY, transaction

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "sandi-rahasia-e2e"
BPKD = "budi@bpkd.jakarta.go.id"
DISHUB = "sari@dishub.jakarta.go.id"
SCREENSHOTS = ROOT / "docs" / "screenshots"


class Remote:
    """A loopback web server standing in for the sender's tracking host."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def hostile_html(remote: Remote) -> str:
    u = remote.url
    return f"""<html><head>
<meta http-equiv="refresh" content="0;url={u('/refresh')}">
<base href="{u('/base/')}">
<link rel="stylesheet" href="{u('/link.css')}">
<link rel="preload" as="image" href="{u('/preload.png')}">
<style>@import url("{u('/import.css')}"); body {{ background: url('{u('/bg.png')}'); }}</style>
<script>fetch("{u('/script')}"); console.log("script ran");</script>
</head><body onload="fetch('{u('/onload')}')">
<p>Undangan rapat koordinasi anggaran</p>
<img src="{u('/pixel.png')}" onerror="fetch('{u('/onerror')}')">
<img srcset="{u('/srcset.png')} 2x">
<div style="background-image:url({u('/inline.png')})">latar</div>
<a href="javascript:fetch('{u('/js-link')}')">klik di sini</a>
<form action="{u('/form')}" method="post"><input name="a" value="b" autofocus
 onfocus="fetch('{u('/onfocus')}')"><button>Kirim</button></form>
<iframe src="{u('/frame')}"></iframe>
<svg><image href="{u('/svg.png')}"/></svg>
<video poster="{u('/poster.png')}"></video>
</body></html>"""


def mail(sender: str, rcpt: str, subject: str, body: str, html: str | None = None) -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = rcpt
    m["Subject"] = subject
    m["Message-ID"] = f"<{abs(hash((subject, sender)))}@jakarta.go.id>"
    m.set_content(body)
    if html is not None:
        m.add_alternative(html, subtype="html")
    return m.as_bytes().replace(b"\n", b"\r\n")


@dataclass
class Stack:
    gateway: GatewayProcess
    sink: Sink
    remote: Remote
    review_url: str
    ids: dict[str, str] = field(default_factory=dict)
    shots: Path = Path()

    def milter(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "milter", "-c", str(self.gateway.config_path), *args],
            input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60)

    def outgoing(self) -> list[Any]:
        """What reached the next hop from a sender (notices have the null sender)."""
        return [m for m in self.sink.messages if m.mail_from not in ("", "<>")]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("review-e2e")
    sink = Sink()
    sink.controller.start()
    remote = Remote()
    remote.thread.start()
    review_port = free_port()
    gateway = GatewayProcess(tmp, {
        "upstream": f"smtp://127.0.0.1:{sink.port}",
        "routes": {"sanapati": f"smtp://127.0.0.1:{sink.port}"},
        "policy": [POLICY],
        "review": {"listen": f"127.0.0.1:{review_port}", "session_lifetime": "1h"},
    })
    review: subprocess.Popen[bytes] | None = None
    log = open(tmp / "review.log", "wb")  # noqa: SIM115 - closed below
    try:
        gateway.start()
        s = Stack(gateway, sink, remote, f"http://127.0.0.1:{review_port}", shots=tmp)
        for name, role, agency in (("petugas1", "officer", None), ("petugas2", "officer", None),
                                   ("kepala.bpkd", "head", "bpkd.jakarta.go.id"),
                                   ("auditor1", "auditor", None)):
            extra = ["--agency", agency] if agency else []
            r = s.milter("user", "add", name, "--role", role, *extra, stdin=PASSWORD + "\n")
            assert r.returncode == 0, r.stderr
        sent = {
            "officer": (BPKD, "mitra@gmail.com", "[RAHASIA] Kontrak jembatan Ciliwung",
                        "Dokumen [RAHASIA] kontrak terlampir.", None),
            "dishub": (DISHUB, "vendor@gmail.com", "[RAHASIA] Anggaran Dishub",
                       "Anggaran.", None),
            "hostile": (BPKD, "tamu@gmail.com", "[RAHASIA] Undangan rapat",
                        "Undangan rapat.", hostile_html(remote)),
            "two": (BPKD, "konsultan@gmail.com", "[SANGAT RAHASIA] Rencana strategis",
                    "Rencana.", None),
        }
        for key, (sender, rcpt, subject, body, html) in sent.items():
            code, text = transaction(gateway.port, sender, [rcpt],
                                     mail(sender, rcpt, subject, body, html))
            assert code == 250, text
            listed = json.loads(s.milter("quarantine", "list", "--json").stdout)
            s.ids[key] = next(x["id"] for x in listed if x["subject"] == subject)
        review = subprocess.Popen(
            [sys.executable, "-m", "milter", "-c", str(gateway.config_path), "review"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=dict(os.environ))
        wait_port(review_port, proc=review)
        yield s
    finally:
        if review is not None:
            review.send_signal(signal.SIGTERM)
            try:
                review.wait(15)
            except subprocess.TimeoutExpired:
                review.kill()
                review.wait()
        log.close()
        gateway.stop()
        remote.server.shutdown()
        remote.server.server_close()
        sink.controller.stop()
        text = (tmp / "review.log").read_text(errors="replace")
        assert "Traceback" not in text, text


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@dataclass
class Watched:
    page: Page
    requests: list[str]
    console: list[str]
    dialogs: list[str]


def open_page(browser: Browser) -> Watched:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    w = Watched(page, [], [], [])
    page.on("request", lambda r: w.requests.append(r.url))
    page.on("console", lambda m: w.console.append(m.text))
    page.on("dialog", lambda d: (w.dialogs.append(d.message), d.dismiss()))
    return w


def sign_in(stack: Stack, browser: Browser, name: str) -> Watched:
    w = open_page(browser)
    w.page.goto(stack.review_url + "/login")
    w.page.fill("input[name=username]", name)
    w.page.fill("input[name=password]", PASSWORD)
    w.page.click("button[type=submit]")
    w.page.wait_for_load_state()
    assert "/login" not in w.page.url, w.page.content()[:2000]
    return w


def keep_screenshot(stack: Stack, page: Page, name: str) -> None:
    """Into the test's directory; into docs/screenshots when MILTER_SCREENSHOTS is set."""
    path = stack.shots / name
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("MILTER_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOTS / name)


def test_officer_finds_opens_and_releases_once(stack: Stack, browser: Browser) -> None:
    w = sign_in(stack, browser, "petugas1")
    page = w.page
    assert page.locator("#total").inner_text() == "4"
    keep_screenshot(stack, page, "review-list.png")
    page.fill("input[name=q]", "jembatan")
    page.click("#search")
    page.wait_for_load_state()
    assert "q=jembatan" in page.url and page.locator("#total").inner_text() == "1"
    page.click("a.subject")
    page.wait_for_load_state()
    qid = stack.ids["officer"]
    assert page.url.endswith(f"/quarantine/{qid}")
    assert page.locator("#body mark").first.inner_text() == "RAHASIA"
    keep_screenshot(stack, page, "review-message.png")
    csrf = page.locator("#release-form input[name=csrf]").get_attribute("value") or ""
    page.fill("#release-form input[name=reason]", "izin tertulis kepala BPKD")
    page.click("#release-form button[type=submit]")
    page.wait_for_load_state()
    assert page.locator("#status").inner_text() == "released"
    assert [m.rcpt_tos for m in stack.sink.wait_for(1)
            if m.mail_from not in ("", "<>")] == [["mitra@gmail.com"]]
    # The same form sent again (a double click, a replay): the hold is closed already.
    again = page.request.post(f"{stack.review_url}/quarantine/{qid}/release",
                              form={"reason": "sekali lagi", "csrf": csrf})
    assert again.ok and "released" in again.text()
    assert len([m for m in stack.outgoing() if m.rcpt_tos == ["mitra@gmail.com"]]) == 1
    assert w.console == [] and w.dialogs == []


def test_head_sees_only_their_agency(stack: Stack, browser: Browser) -> None:
    w = sign_in(stack, browser, "kepala.bpkd")
    page = w.page
    listing = page.content()
    assert "Kontrak jembatan" in listing and "Anggaran Dishub" not in listing
    response = page.goto(f"{stack.review_url}/quarantine/{stack.ids['dishub']}")
    assert response is not None and response.status == 404
    assert "Anggaran Dishub" not in page.content() and DISHUB not in page.content()
    response = page.goto(f"{stack.review_url}/quarantine/{stack.ids['dishub']}/download")
    assert response is not None and response.status == 404
    page.goto(f"{stack.review_url}/agency")
    assert "bpkd.jakarta.go.id" in page.content() and "dishub" not in page.content()
    assert page.locator("svg.chart").count() >= 1
    keep_screenshot(stack, page, "review-agency.png")


def test_hostile_html_runs_nothing_and_fetches_nothing(stack: Stack, browser: Browser) -> None:
    # The "remote" server does record what reaches it.
    urllib.request.urlopen(stack.remote.url("/probe"), timeout=5).read()
    assert stack.remote.hits == ["/probe"]
    stack.remote.hits.clear()
    w = sign_in(stack, browser, "petugas1")
    page = w.page
    qid = stack.ids["hostile"]
    page.goto(f"{stack.review_url}/quarantine/{qid}")
    page.wait_for_load_state("networkidle")
    frame = page.frame_locator("iframe.htmlbody")
    assert "Undangan rapat koordinasi" in frame.locator("body").inner_text()
    frame.locator("a").first.click(timeout=5000)   # the javascript: link
    page.wait_for_load_state("networkidle")
    sandbox = page.locator("iframe.htmlbody").get_attribute("sandbox")
    assert sandbox == ""   # present, allowing nothing
    own = stack.review_url + "/"
    assert [u for u in w.requests if not u.startswith(own)] == []
    assert stack.remote.hits == []
    assert w.console == [] and w.dialogs == []
    assert page.url.endswith(f"/quarantine/{qid}")


def test_two_officers_release_sangat_rahasia(stack: Stack, browser: Browser) -> None:
    qid = stack.ids["two"]
    first = sign_in(stack, browser, "petugas1").page
    first.goto(f"{stack.review_url}/quarantine/{qid}")
    first.fill("#release-form input[name=reason]", "disetujui petugas pertama")
    first.click("#release-form button[type=submit]")
    first.wait_for_load_state()
    assert first.locator("#status").inner_text() == "pending"
    assert [m for m in stack.outgoing() if m.rcpt_tos == ["konsultan@gmail.com"]] == []
    second = sign_in(stack, browser, "petugas2").page
    second.goto(f"{stack.review_url}/quarantine/{qid}")
    second.fill("#release-form input[name=reason]", "disetujui petugas kedua")
    second.click("#release-form button[type=submit]")
    second.wait_for_load_state()
    assert second.locator("#status").inner_text() == "released"
    stack.sink.wait_for(len(stack.sink.messages) + 1, timeout=2)
    assert len([m for m in stack.outgoing() if m.rcpt_tos == ["konsultan@gmail.com"]]) == 1


def test_audit_page_shows_every_step_and_verifies(stack: Stack, browser: Browser) -> None:
    page = sign_in(stack, browser, "auditor1").page
    assert page.url.endswith("/audit")
    assert page.locator("#chain-state").inner_text() == "terverifikasi"
    rows = [r.split("\t") for r in page.locator("table.audit tbody tr").all_inner_texts()]
    seen = {(r[2].strip(), r[3].strip(), r[4].strip()) for r in rows}
    ids = stack.ids
    for step in (("petugas1", "login", ""), ("petugas1", "view", ids["officer"]),
                 ("petugas1", "release", ids["officer"]), ("kepala.bpkd", "login", ""),
                 ("petugas1", "view", ids["hostile"]), ("petugas1", "approve", ids["two"]),
                 ("petugas2", "release", ids["two"]), ("auditor1", "login", "")):
        assert step in seen, step
    assert ("kepala.bpkd", "view", ids["dishub"]) not in seen
    r = stack.milter("quarantine", "audit", "--verify")
    assert r.returncode == 0, r.stdout + r.stderr
