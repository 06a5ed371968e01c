"""The review web UI: officers review the quarantine, heads of agency watch their agency.

``create_app(config)`` builds the Starlette application that ``milter review`` serves
and that tests call in-process. Routes are thin: they check the session and the role,
call the store, the accounts (``milter.quarantine.users``) and the release rules
(``milter.app.release``), and render a template. Whatever a person does here is in the
hash-chained audit log under their authenticated account name, never a typed one.

Visibility is decided once, in ``_visible``: a message a user may not see does not
exist for them (404 from every URL), so a head of agency learns nothing about another
agency's mail, not even that an id is valid.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from milter.app.report import ALL, AgencyWeek, agency_weeks
from milter.config import GatewayConfig
from milter.quarantine.store import (
    STATUSES,
    NotFound,
    QuarantineError,
    QuarantineRecord,
    QuarantineStore,
    Search,
    open_store,
)
from milter.quarantine.users import ROLES, User, UserError, users_of
from milter.review import charts
from milter.review.actions import Actions
from milter.review.i18n import DEFAULT, LANGUAGES, translator
from milter.review.mailview import frame_html, highlight, mail_view, match_terms
from milter.review.sessions import COOKIE, Session, Sessions
from milter.review.settings import ReviewSettings, load_secret, settings_of
from milter.text import printable

PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
MESSAGE_CSP = PAGE_CSP + "; frame-src 'self'"
# The held message's own HTML: nothing loads, nothing runs, nothing submits.
FRAME_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; base-uri 'none'; "
    "frame-ancestors 'self'; sandbox"
)
PER_PAGE = 50
# The list counts this many matches past the current page, then says "N+": enough to
# page on, without counting every match of a broad search.
COUNT_AHEAD = 1000
AUDIT_PER_PAGE = 100
SORTS = {
    "newest": "-received_at",
    "oldest": "received_at",
    "largest": "-size",
    "sender": "sender",
}
MAIL_ROLES = ("officer", "head")
JAKARTA = dt.timezone(dt.timedelta(hours=7))
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class SecurityHeaders:
    """The headers every response carries; a route may set a stricter CSP of its own."""

    def __init__(self, app: ASGIApp, tls: bool = False) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "content-security-policy" not in headers:
                    headers["Content-Security-Policy"] = PAGE_CSP
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                if "x-frame-options" not in headers:
                    headers["X-Frame-Options"] = "DENY"
                headers["Cache-Control"] = "no-store"
                headers["Cross-Origin-Opener-Policy"] = "same-origin"
                headers["Cross-Origin-Resource-Policy"] = "same-origin"
                if self.tls:
                    headers["Strict-Transport-Security"] = "max-age=31536000"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _day(ts: float) -> str:
    """The date a week starts on, in Jakarta time as the report counts weeks."""
    return dt.datetime.fromtimestamp(ts, JAKARTA).strftime("%Y-%m-%d")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n} {unit}" if unit == "B" else f"{n:.0f} {unit}"
        n = n // 1024 if unit == "B" else n / 1024  # type: ignore[assignment]
    return f"{n:.1f} GB"


def _finalize(value: Any) -> Any:
    """Every string a template prints goes through ``printable`` (then autoescape)."""
    if isinstance(value, Markup):
        return value
    if isinstance(value, str):
        return printable(value)
    return value


def _date(value: str, end: bool = False) -> float | None:
    """``YYYY-MM-DD`` (UTC) as a timestamp; ``end`` gives the end of that day."""
    if not value or not _DATE.match(value):
        return None
    try:
        day = dt.datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    if end:
        day += dt.timedelta(days=1)
    return day.timestamp()


def _int(value: str | None, default: int, lo: int = 1, hi: int = 100_000) -> int:
    try:
        return min(hi, max(lo, int(value or default)))
    except ValueError:
        return default


def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _list(form: FormData, name: str) -> list[str]:
    return [v for v in form.getlist(name) if isinstance(v, str) and v]


RULE_KEYS = ("name", "clause", "recipient", "reasons")
LABEL_KEYS = ("raw", "source", "level")


def _entries(value: Any, keys: Sequence[str]) -> list[dict[str, Any]]:
    """Findings as stored, with every key a template reads present: records written by
    older versions (or by hand) may lack some."""
    if not isinstance(value, list):
        return []
    out = []
    for item in value:
        if isinstance(item, Mapping):
            entry = {k: item.get(k) for k in keys}
            if "reasons" in entry:
                reasons = entry["reasons"]
                entry["reasons"] = [str(r) for r in reasons] if isinstance(reasons, list) else []
            out.append(entry)
    return out


def _detectors(value: Any) -> list[tuple[str, str]]:
    """``name -> {count, confidence}`` as (name, "count (confidence)") pairs."""
    if not isinstance(value, Mapping):
        return []
    out = []
    for name, v in value.items():
        if isinstance(v, Mapping):
            out.append((str(name), f"{v.get('count', '?')} ({v.get('confidence', '?')})"))
        else:
            out.append((str(name), str(v)))
    return out


class Denied(Exception):
    """A request answered with an error page (404 hides, 403 refuses, 400 is malformed)."""

    def __init__(self, status: int, key: str) -> None:
        super().__init__(key)
        self.status, self.key = status, key


class ReviewApp:
    """The routes and what they share: store, accounts, sessions, templates."""

    def __init__(
        self,
        config: GatewayConfig,
        settings: ReviewSettings,
        store: QuarantineStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.settings = settings
        self.store = store
        self.users = users_of(store)
        self.clock = clock
        self.sessions = Sessions(load_secret(settings, config), settings.session_lifetime, clock)
        self.actions = Actions(config, store)
        self.base = settings.base_path
        self.env = Environment(
            loader=PackageLoader("milter.review", "templates"),
            autoescape=True,
            finalize=_finalize,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["when"] = _when
        self.env.filters["size"] = _size
        self.env.globals["url"] = self.url

    # -- plumbing ---------------------------------------------------------------------

    def url(self, path: str) -> str:
        return self.base + path

    def _session(self, request: Request) -> Session | None:
        return self.sessions.lookup(request.cookies.get(COOKIE))

    def _user(self, session: Session | None) -> User | None:
        """The signed-in account, re-read each time: a disabled account loses access
        at once, not when its session ends."""
        if session is None or session.user is None:
            return None
        user = self.users.get(session.user)
        if user is None or user.disabled:
            self.sessions.drop(session)
            return None
        return user

    def _set_cookie(self, response: Response, session: Session) -> None:
        response.set_cookie(
            COOKIE,
            self.sessions.cookie_value(session),
            max_age=int(self.settings.session_lifetime),
            path=self.base or "/",
            secure=self.settings.tls,
            httponly=True,
            samesite="strict",
        )

    def _lang(self, request: Request, session: Session | None) -> str:
        asked = request.query_params.get("lang")
        if asked in LANGUAGES and session is not None:
            session.lang = asked
        if session is not None:
            return session.lang
        return asked if asked in LANGUAGES else DEFAULT

    def render(
        self,
        request: Request,
        session: Session | None,
        user: User | None,
        template: str,
        *,
        status: int = 200,
        csp: str | None = None,
        **context: Any,
    ) -> Response:
        lang = self._lang(request, session)
        flash = []
        if session is not None:
            flash, session.flash = session.flash, []
        body = self.env.get_template(template).render(
            t=translator(lang),
            lang=lang,
            other_lang="en" if lang == "id" else "id",
            user=user,
            csrf=session.csrf if session is not None else "",
            flash=flash,
            path=request.url.path,
            **context,
        )
        response = Response(body, status, media_type="text/html; charset=utf-8")
        if csp:
            response.headers["Content-Security-Policy"] = csp
        return response

    def redirect(self, path: str) -> Response:
        return RedirectResponse(self.url(path), status_code=303)

    def home(self, user: User) -> str:
        return {"officer": "/quarantine", "head": "/quarantine", "auditor": "/audit"}.get(
            user.role, "/users"
        )

    def error(
        self, request: Request, session: Session | None, user: User | None, denied: Denied
    ) -> Response:
        return self.render(
            request, session, user, "error.html", status=denied.status, message_key=denied.key
        )

    def page(
        self, roles: Sequence[str], handler: Callable[[Request, Session, User], Response]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A GET endpoint for signed-in users of ``roles``; the store work runs in a thread."""

        def run(request: Request) -> Response:
            session = self._session(request)
            user = self._user(session)
            if session is None or user is None:
                return self.redirect("/login")
            try:
                if user.role not in roles:
                    raise Denied(403, "forbidden")
                return handler(request, session, user)
            except Denied as denied:
                return self.error(request, session, user, denied)

        async def endpoint(request: Request) -> Response:
            return await run_in_threadpool(run, request)

        return endpoint

    def action(
        self,
        roles: Sequence[str],
        handler: Callable[[Request, Session, User, FormData], Response],
    ) -> Callable[[Request], Awaitable[Response]]:
        """A POST endpoint: signed in, of ``roles``, with the session's CSRF token."""

        async def endpoint(request: Request) -> Response:
            session = self._session(request)
            try:
                form = await request.form(max_files=0, max_fields=2000)
            except Exception:  # malformed bodies of any kind are the client's fault
                return PlainTextResponse("bad request", status_code=400)

            def run() -> Response:
                user = self._user(session)
                if session is None or user is None:
                    return self.redirect("/login")
                try:
                    csrf = form.get("csrf")
                    if not self.sessions.check_csrf(
                        session, csrf if isinstance(csrf, str) else None
                    ):
                        raise Denied(403, "csrf_failed")
                    if user.role not in roles:
                        raise Denied(403, "forbidden")
                    return handler(request, session, user, form)
                except Denied as denied:
                    return self.error(request, session, user, denied)

            return await run_in_threadpool(run)

        return endpoint

    def _visible(self, user: User, qid: str) -> QuarantineRecord:
        """The record, when ``user`` may see it; else Denied(404), whatever the reason."""
        record = self.store.get(qid) if len(qid) <= 200 else None
        if record is None or not user.sees_sender(record.sender):
            raise Denied(404, "not_found")
        return record

    # -- sign-in ----------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        session = self._session(request)
        user = await run_in_threadpool(self._user, session)
        if user is not None:
            return self.redirect(self.home(user))
        fresh = session is None
        if session is None:
            session = self.sessions.new(self._lang(request, None))
        response = self.render(request, session, None, "login.html")
        if fresh:
            self._set_cookie(response, session)
        return response

    def _locked(self, name: str, address: str, now: float) -> bool:
        s = self.settings
        by_name, by_address = self.users.recent_failures(name, address, now - s.throttle_window)
        if max(by_name, by_address) >= s.throttle_attempts:
            return True
        # Still inside the lockout that an earlier burst of failures started.
        since = now - s.throttle_lockout
        by_name, by_address = self.users.recent_failures(name, address, since)
        return max(by_name, by_address) >= s.throttle_attempts

    async def login(self, request: Request) -> Response:
        session = self._session(request)
        try:
            form = await request.form(max_files=0, max_fields=20)
        except Exception:
            return PlainTextResponse("bad request", status_code=400)
        name = _field(form, "username")[:200]
        password = form.get("password")
        token = form.get("csrf")
        address = request.client.host if request.client else "-"

        def run() -> Response:
            nonlocal session
            if not self.sessions.check_csrf(session, token if isinstance(token, str) else None):
                # A forged sign-in from elsewhere changes nothing, not even who is signed in.
                fresh = session is None
                if session is None:
                    session = self.sessions.new(DEFAULT)
                response = self.render(
                    request, session, None, "login.html", status=403, error_key="csrf_failed"
                )
                if fresh:
                    self._set_cookie(response, session)
                return response
            now = self.clock()
            if self._locked(name, address, now):
                response = self.render(
                    request, session, None, "login.html", status=429, error_key="too_many"
                )
                response.headers["Retry-After"] = str(int(self.settings.throttle_lockout))
                return response
            user = None
            if name and isinstance(password, str) and password:
                user = self.users.authenticate(name, password)
            if user is None:
                self.users.note_login_failure(name, address, now)
                self.store.append_audit(name or "-", "login-failed", "", f"from {address}")
                return self.render(
                    request, session, None, "login.html", status=401, error_key="login_failed"
                )
            self.store.append_audit(user.name, "login", "", f"from {address}")
            new = self.sessions.sign_in(session, user.name)
            response = self.redirect(self.home(user))
            self._set_cookie(response, new)
            return response

        return await run_in_threadpool(run)

    def logout(self, request: Request, session: Session, user: User, form: FormData) -> Response:
        self.sessions.drop(session)
        response = self.redirect("/login")
        response.delete_cookie(COOKIE, path=self.base or "/")
        return response

    async def root(self, request: Request) -> Response:
        user = await run_in_threadpool(self._user, self._session(request))
        return self.redirect(self.home(user) if user else "/login")

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    # -- the quarantine ---------------------------------------------------------------

    def search_of(self, request: Request, user: User) -> tuple[Search, dict[str, str]]:
        p = request.query_params
        values = {
            k: p.get(k, "").strip()[:200]
            for k in ("q", "sender", "recipient", "rule", "classification", "status")
        }
        values["since"] = p.get("since", "")[:10]
        values["until"] = p.get("until", "")[:10]
        sort = p.get("sort", "newest")
        values["sort"] = sort if sort in SORTS else "newest"
        if values["status"] not in STATUSES:
            values["status"] = ""
        page = _int(p.get("page"), 1)
        search = Search(
            q=values["q"],
            sender=values["sender"],
            recipient=values["recipient"],
            rule=values["rule"],
            classification=values["classification"],
            status=values["status"],
            since=_date(values["since"]),
            until=_date(values["until"], end=True),
            sender_domains=None if user.role == "officer" else tuple(user.agencies),
            sort=SORTS[values["sort"]],
            page=page,
            per_page=PER_PAGE,
            count_limit=page * PER_PAGE + COUNT_AHEAD,
        )
        return search, values

    def quarantine(self, request: Request, session: Session, user: User) -> Response:
        search, values = self.search_of(request, user)
        records, total = self.store.search(search)
        pages = max(1, (total + PER_PAGE - 1) // PER_PAGE)
        limit = search.count_limit
        more = limit is not None and total > limit
        shown = f"{limit:,}+".replace(",", ".") if more else str(total)
        query = {k: v for k, v in values.items() if v}

        def page_url(n: int) -> str:
            from urllib.parse import urlencode

            return self.url("/quarantine") + "?" + urlencode({**query, "page": str(n)})

        return self.render(
            request,
            session,
            user,
            "list.html",
            records=records,
            total=shown,
            page=search.page,
            pages=f"{pages - 1}+" if more else pages,
            has_next=search.page < pages,
            page_url=page_url,
            values=values,
            statuses=STATUSES,
            sorts=tuple(SORTS),
        )

    def message(self, request: Request, session: Session, user: User) -> Response:
        qid = request.path_params["qid"]
        record = self._visible(user, qid)
        self.store.append_audit(user.name, "view", record.id, "")
        try:
            data: bytes | None = self.store.read(record.id)
        except QuarantineError:
            data = None
        view = mail_view(record, data) if data is not None else None
        terms = match_terms(record)
        return self.render(
            request,
            session,
            user,
            "message.html",
            csp=MESSAGE_CSP,
            r=record,
            d=record.to_dict(),
            view=view,
            subject=highlight(record.subject, terms),
            body=highlight(view.text, terms) if view else Markup(""),
            history=self.store.audit_for(record.id),
            rule_results=_entries(record.findings.get("rules"), RULE_KEYS),
            labels=_entries(record.findings.get("labels"), LABEL_KEYS),
            detectors=_detectors(record.findings.get("detectors")),
            can_act=user.role == "officer" and record.status in ("held", "pending"),
        )

    def frame(self, request: Request, session: Session, user: User) -> Response:
        record = self._visible(user, request.path_params["qid"])
        try:
            data = self.store.read(record.id)
        except QuarantineError:
            raise Denied(404, "not_found") from None
        response = Response(frame_html(data), media_type="text/html; charset=utf-8")
        response.headers["Content-Security-Policy"] = FRAME_CSP
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
        return response

    def download(self, request: Request, session: Session, user: User) -> Response:
        record = self._visible(user, request.path_params["qid"])
        if user.role != "officer":
            raise Denied(403, "forbidden")
        try:
            data = self.store.read(record.id)
        except NotFound:
            raise Denied(404, "not_kept") from None
        self.store.append_audit(user.name, "download", record.id, "")
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", record.id)
        return Response(
            data,
            media_type="message/rfc822",
            headers={"Content-Disposition": f'attachment; filename="{name}.eml"'},
        )

    def _act(self, user: User, qid: str, verb: str, reason: str, to: Sequence[str]) -> str:
        """One release or delete; the flash line that reports it."""
        record = self._visible(user, qid)
        if verb == "release":
            result = self.actions.release(record.id, user.name, reason, to)
        else:
            result = self.actions.delete(record.id, user.name, reason)
        return f"{record.id}: {result.status}" + (f" ({result.message})" if result.message else "")

    def act_one(self, request: Request, session: Session, user: User, form: FormData) -> Response:
        qid = request.path_params["qid"]
        verb = request.path_params["verb"]
        self._visible(user, qid)  # 404 before anything else for what one may not see
        reason = _field(form, "reason")
        if not reason:
            raise Denied(400, "reason_required")
        to = re.split(r"[\s,;]+", _field(form, "to")) if verb == "release" else []
        session.flash.append(self._act(user, qid, verb, reason[:1000], [a for a in to if a]))
        return self.redirect(f"/quarantine/{qid}")

    def act_bulk(self, request: Request, session: Session, user: User, form: FormData) -> Response:
        verb = _field(form, "action")
        reason = _field(form, "reason")
        ids = _list(form, "ids")[: PER_PAGE * 4]
        if verb not in ("release", "delete"):
            raise Denied(400, "bad_request")
        if not reason:
            raise Denied(400, "reason_required")
        if not ids:
            raise Denied(400, "none_selected")
        for qid in ids:
            try:
                session.flash.append(self._act(user, qid, verb, reason[:1000], ()))
            except Denied:
                session.flash.append(f"{qid}: not found")
        return self.redirect("/quarantine")

    # -- audit, agency, users ---------------------------------------------------------

    def audit(self, request: Request, session: Session, user: User) -> Response:
        entries = self.store.audit_entries()
        problems = self.store.verify_audit()
        page = _int(request.query_params.get("page"), 1)
        newest_first = entries[::-1]
        start = (page - 1) * AUDIT_PER_PAGE
        shown = newest_first[start : start + AUDIT_PER_PAGE]
        return self.render(
            request,
            session,
            user,
            "audit.html",
            entries=shown,
            total=len(entries),
            problems=problems,
            page=page,
            more=start + AUDIT_PER_PAGE < len(entries),
        )

    def queue(self, request: Request, session: Session, user: User) -> Response:
        """The retry queue, read-only: officers see what the gateway still owes a
        next hop; acting on it (retry now, delete with a reason) is ``milter queue``."""
        entries = self.store.retry_list()
        return self.render(request, session, user, "queue.html", entries=entries)

    def agency(self, request: Request, session: Session, user: User) -> Response:
        now = self.clock()
        weeks = _int(request.query_params.get("weeks"), 8, 1, 52)
        agencies = None if user.role == "officer" else tuple(user.agencies)
        rows = agency_weeks(self.store, agencies, now - weeks * 7 * 86400, now)
        by_agency: dict[str, list[AgencyWeek]] = {}
        for row in rows:
            by_agency.setdefault(row.agency, []).append(row)
        t = translator(self._lang(request, session))
        panels = []
        for name, items in by_agency.items():  # the report's order: agencies, then ALL
            cats = [_day(w.week_start) for w in items]
            chart = charts.grouped_bars(
                cats,
                [
                    (t["held"], [int(w.held) for w in items]),
                    (t["released"], [int(w.released) for w in items]),
                    (t["deleted"], [int(w.deleted) for w in items]),
                    (t["rejected"], [int(w.rejected) for w in items]),
                ],
                title=f"{name}",
            )
            tops = {}
            for key in ("top_rules", "top_clauses", "top_destinations"):
                total: dict[str, int] = {}
                for w in items:
                    pairs: list[tuple[str, int]] = getattr(w, key)
                    for label, count in pairs:
                        total[str(label)] = total.get(str(label), 0) + int(count)
                best = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:8]
                tops[key] = charts.hbars(best, title=t[key]) if best else None
            weeks_shown = [(day, w) for day, w in zip(cats, items, strict=True)]
            shown = t["all_agencies"] if name == ALL else name
            panels.append({"name": shown, "weeks": weeks_shown, "chart": chart, "tops": tops})
        return self.render(request, session, user, "agency.html", panels=panels, weeks=weeks)

    def users_page(self, request: Request, session: Session, user: User) -> Response:
        return self.render(
            request, session, user, "users.html", accounts=self.users.list(), roles=ROLES
        )

    def user_add(self, request: Request, session: Session, user: User, form: FormData) -> Response:
        name, role = _field(form, "name"), _field(form, "role")
        password = form.get("password")
        agencies = _field(form, "agencies").replace(",", " ").split()
        try:
            added = self.users.add(
                name, role, password if isinstance(password, str) else "", agencies
            )
        except UserError as exc:
            session.flash.append(str(exc))
            return self.redirect("/users")
        self.store.append_audit(user.name, "user-add", "", f"{added.name} ({added.role})")
        session.flash.append(f"{added.name}: {translator(session.lang)['user_added']}")
        return self.redirect("/users")

    def user_disable(
        self, request: Request, session: Session, user: User, form: FormData
    ) -> Response:
        name = request.path_params["name"]
        try:
            self.users.disable(name)
        except UserError:
            raise Denied(404, "not_found") from None
        self.store.append_audit(user.name, "user-disable", "", name[:200])
        session.flash.append(f"{name}: {translator(session.lang)['user_disabled']}")
        return self.redirect("/users")

    # -- the routing table ------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        static = Path(__file__).with_name("static")
        return [
            Route("/", self.root),
            Route("/healthz", self.healthz),
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.action(ROLES, self.logout), methods=["POST"]),
            Route("/quarantine", self.page(MAIL_ROLES, self.quarantine)),
            Route("/quarantine/bulk", self.action(("officer",), self.act_bulk), methods=["POST"]),
            Route("/quarantine/{qid}", self.page(MAIL_ROLES, self.message)),
            Route("/quarantine/{qid}/html", self.page(MAIL_ROLES, self.frame)),
            Route("/quarantine/{qid}/download", self.page(MAIL_ROLES, self.download)),
            Route(
                "/quarantine/{qid}/{verb:str}",
                self.action(("officer", "head"), self._verb),
                methods=["POST"],
            ),
            Route("/audit", self.page(("auditor", "officer"), self.audit)),
            Route("/queue", self.page(("officer",), self.queue)),
            Route("/agency", self.page(MAIL_ROLES, self.agency)),
            Route("/users", self.page(("admin",), self.users_page)),
            Route("/users", self.action(("admin",), self.user_add), methods=["POST"]),
            Route(
                "/users/{name}/disable",
                self.action(("admin",), self.user_disable),
                methods=["POST"],
            ),
            Mount("/static", StaticFiles(directory=static), name="static"),
        ]

    def _verb(self, request: Request, session: Session, user: User, form: FormData) -> Response:
        """``release`` and ``delete``; a head reaches here only to learn 404 or 403."""
        verb = request.path_params["verb"]
        if verb not in ("release", "delete"):
            raise Denied(404, "not_found")
        self._visible(user, request.path_params["qid"])
        if user.role != "officer":
            raise Denied(403, "forbidden")
        return self.act_one(request, session, user, form)


def create_app(
    config: GatewayConfig,
    *,
    store: QuarantineStore | None = None,
    settings: ReviewSettings | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The web UI over ``config``'s quarantine (or ``store``); closes the store it opened
    when the application shuts down."""
    settings = settings or settings_of(config)
    own = store is None
    the_store = store if store is not None else open_store(config.quarantine)
    review = ReviewApp(config, settings, the_store, clock)
    routes = review.routes()
    if settings.base_path:
        routes = [Mount(settings.base_path, routes=routes)]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if own:
            the_store.close()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(SecurityHeaders, tls=settings.tls)],
        max_body_size=1 << 20,
    )
    app.state.review = review
    return app
