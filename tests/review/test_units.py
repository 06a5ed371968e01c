"""The review UI's pure parts: sessions, the HTML made inert, the charts, highlighting."""

from __future__ import annotations

import pytest

from milter.review.charts import grouped_bars, hbars
from milter.review.htmlsafe import html_text, inert_html
from milter.review.mailview import highlight
from milter.review.sessions import Sessions
from tests.review.conftest import Clock


def test_cookie_is_signed_and_sessions_expire() -> None:
    clock = Clock()
    sessions = Sessions(b"k" * 32, 60.0, clock)
    s = sessions.sign_in(sessions.new(), "petugas1")
    cookie = sessions.cookie_value(s)
    assert sessions.lookup(cookie) is s
    sid, _, sig = cookie.rpartition(".")
    assert sessions.lookup(f"{sid}.{'0' * len(sig)}") is None
    assert sessions.lookup(sid) is None and sessions.lookup("") is None
    other = Sessions(b"x" * 32, 60.0, clock)
    assert other.lookup(cookie) is None   # another key: not ours
    clock.advance(61)
    assert sessions.lookup(cookie) is None


def test_visitors_cannot_evict_signed_in_sessions() -> None:
    sessions = Sessions(b"k" * 32, 3600.0, limit=10)
    signed = sessions.sign_in(None, "petugas1")
    first_visitor = sessions.new()
    for _ in range(50):
        sessions.new()
    assert sessions.lookup(sessions.cookie_value(signed)) is signed
    assert sessions.lookup(sessions.cookie_value(first_visitor)) is None


def test_csrf_token_belongs_to_its_session() -> None:
    sessions = Sessions(b"k" * 32, 3600.0)
    a, b = sessions.new(), sessions.new()
    assert sessions.check_csrf(a, a.csrf)
    assert not sessions.check_csrf(a, b.csrf)
    assert not sessions.check_csrf(a, "") and not sessions.check_csrf(None, a.csrf)


@pytest.mark.parametrize("hostile", [
    '<script>alert(1)</script>',
    '<img src="http://evil.example/x.png" onerror="alert(1)">',
    '<a href="javascript:alert(1)">x</a>',
    '<a href=" jav&#x09;ascript:alert(1)">x</a>',
    '<div style="background:url(http://evil.example/a)">x</div>',
    '<style>@import "http://evil.example/a.css"; p{background:url(//evil.example/b)}</style>',
    '<meta http-equiv="refresh" content="0;url=http://evil.example/">',
    '<form action="http://evil.example/"><input name=a></form>',
    '<iframe src="http://evil.example/"></iframe><object data="http://evil.example/o">',
    '<svg><image href="http://evil.example/s.png"/></svg>',
    '<base href="http://evil.example/"><link rel=stylesheet href="http://evil.example/c">',
    '<img srcset="http://evil.example/1x.png 1x">',
    '<p/onmouseover=alert(1)>x</p>',
])
def test_inert_html_keeps_no_way_to_run_or_fetch(hostile: str) -> None:
    out = inert_html(hostile).lower()
    for bad in ("<script", "onerror", "onmouseover", "javascript", "evil.example", "<meta",
                "<form", "<iframe", "<object", "<base", "<link", "url(", "@import"):
        assert bad not in out, (hostile, out)


def test_inert_html_keeps_the_readable_markup() -> None:
    out = inert_html('<p class="x">Halo <b>dunia</b> &amp; <a href="#atas">atas</a></p>')
    assert out == '<p class="x">Halo <b>dunia</b> &amp; <a href="#atas">atas</a></p>'
    assert html_text("<p>Satu</p><script>x()</script><p>Dua &amp; tiga</p>") == \
        "Satu\nDua & tiga"


def test_highlight_escapes_around_marks() -> None:
    out = str(highlight("<b>[rahasia]</b> \x1b", ["[RAHASIA]"]))
    assert out == "&lt;b&gt;<mark>[rahasia]</mark>&lt;/b&gt; \\x1b"
    assert str(highlight("satu\r\ndua\rtiga\n", [])) == "satu\ndua\ntiga\n"


def test_charts_escape_labels_and_load_nothing() -> None:
    svg = str(grouped_bars(["<w1>"], [("held", [3])], title="<t>")) + str(
        hbars([("<script>", 2)], title="x"))
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "&lt;w1&gt;" in svg
    assert "href" not in svg and "http://" not in svg.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")


def test_unnamed_bodies_show_the_true_type_the_inspector_found() -> None:
    """Bodies have no file name: they are matched with the findings by section number,
    numbered as the inspector numbers them."""
    from bench.messages import report_message
    from milter.inspect import inspect_message
    from milter.quarantine.store import QuarantineRecord
    from milter.review.mailview import _parse, _parts

    data = report_message()
    record = QuarantineRecord(
        id="x", received_at=0, client="", sender="", recipients=(), subject="",
        size=len(data), findings=inspect_message(data).to_dict(),
    )
    shown = {v.path: v.true_type for v in _parts(_parse(data), record)}
    assert shown["1.1"] == "text/plain" and shown["1.2"] == "text/html"
    assert shown["laporan-triwulan.pdf"] == "application/pdf"
