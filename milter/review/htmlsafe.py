"""A held message's HTML made inert, and its text for reading.

The frame that shows the HTML is the real barrier: a sandbox without scripts and a
Content-Security-Policy of ``default-src 'none'`` (nothing is fetched). This rewrite
is the second one, for a browser that ignores either: it keeps the markup people
need to read the mail and drops what acts (scripts, event handlers, refreshes, forms,
frames) or fetches (every URL but an in-message ``cid:`` or a fragment).
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

# Elements dropped with their content, and elements dropped but whose content stays.
_DROP_WITH_CONTENT = {
    "script",
    "noscript",
    "template",
    "object",
    "embed",
    "applet",
    "iframe",
    "frame",
    "frameset",
    "svg",
    "math",
    "title",
    "head",
}
_DROP_TAG_ONLY = {
    "meta",
    "link",
    "base",
    "form",
    "input",
    "button",
    "select",
    "textarea",
    "option",
    "html",
    "body",
    "portal",
    "audio",
    "video",
    "source",
    "track",
    "picture",
    "param",
}
_URL_ATTRS = {
    "href",
    "src",
    "srcset",
    "action",
    "formaction",
    "background",
    "poster",
    "lowsrc",
    "dynsrc",
    "data",
    "codebase",
    "cite",
    "longdesc",
    "usemap",
    "ping",
    "xlink:href",
    "manifest",
    "archive",
    "profile",
}
_CSS_URL = re.compile(
    r"url\s*\(|@import|expression\s*\(|image-set\s*\(|-moz-binding", re.IGNORECASE
)
_VOID = {"br", "hr", "img", "col", "area", "wbr"}


def _safe_url(value: str) -> bool:
    v = re.sub(r"[\s\x00-\x1f]", "", html.unescape(value)).lower()
    return v.startswith("#")


def _safe_css(value: str) -> str:
    return "" if _CSS_URL.search(html.unescape(value)) else value


class _Sanitiser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.out: list[str] = []
        self.skip = 0  # depth inside a dropped-with-content element
        self.in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _DROP_WITH_CONTENT:
            if tag not in _VOID:
                self.skip += 1
            return
        if self.skip or tag in _DROP_TAG_ONLY:
            return
        if tag == "style":
            self.in_style = True
        kept = []
        for raw_name, raw_value in attrs:
            name, value = raw_name.lower(), raw_value
            if name.startswith("on") or name in ("http-equiv", "srcdoc", "formaction"):
                continue
            if name in _URL_ATTRS and (value is None or not _safe_url(value)):
                continue
            if name == "style" and value is not None:
                value = _safe_css(value)
            if not re.fullmatch(r"[a-z][a-z0-9_:.-]*", name):
                continue
            if value is None:
                kept.append(f" {name}")
            else:
                kept.append(f' {name}="{html.escape(html.unescape(value), quote=True)}"')
        self.out.append(f"<{tag}{''.join(kept)}>")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID and tag not in _DROP_WITH_CONTENT:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROP_WITH_CONTENT:
            self.skip = max(0, self.skip - 1)
            return
        if self.skip or tag in _DROP_TAG_ONLY or tag in _VOID:
            return
        if tag == "style":
            self.in_style = False
        self.out.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.in_style:
            self.out.append(html.escape(_safe_css(data), quote=False))
        else:
            self.out.append(html.escape(data, quote=False))

    def handle_entityref(self, name: str) -> None:
        if not self.skip:
            self.out.append(f"&{name};" if name.isalnum() else "")

    def handle_charref(self, name: str) -> None:
        if not self.skip:
            self.out.append(f"&#{name};" if name.lstrip("xX").isalnum() else "")


def inert_html(source: str) -> str:
    """``source`` without anything that runs, navigates, submits or fetches."""
    parser = _Sanitiser()
    parser.feed(source)
    parser.close()
    return "".join(parser.out)


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head", "title"):
            self.skip += 1
        elif tag in ("br", "p", "div", "tr", "li", "h1", "h2", "h3", "table"):
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "title"):
            self.skip = max(0, self.skip - 1)

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data)


def html_text(source: str) -> str:
    """The readable text of an HTML body (no markup, no scripts or styles)."""
    parser = _Text()
    parser.feed(source)
    parser.close()
    text = "".join(parser.out)
    return re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+", " ", text)).strip()
