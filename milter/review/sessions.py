"""Sessions of the web UI: kept on the server, named by a signed random id in a cookie.

The cookie carries nothing but the id and its HMAC, so it cannot be forged or
extended; the server decides expiry (``session_lifetime`` from sign-in, whatever the
browser keeps) and forgets a session at sign-out. Each session holds its own CSRF
token (the synchronizer pattern): a form posted from another site cannot know it.
Visitors who have not signed in get a session too, so that the sign-in form has a
token and the language choice is remembered; their number is bounded.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "milter_review"
MAX_SESSIONS = 20_000


@dataclass
class Session:
    sid: str
    created: float
    csrf: str
    user: str | None = None
    lang: str = "id"
    flash: list[str] = field(default_factory=list)


class Sessions:
    """The table of live sessions, safe to use from the server's threads."""

    def __init__(
        self,
        secret: bytes,
        lifetime: float,
        clock: Callable[[], float] = time.time,
        limit: int = MAX_SESSIONS,
    ) -> None:
        self._key = hashlib.sha256(b"milter-review-session\0" + secret).digest()
        self.lifetime = lifetime
        self.clock = clock
        self.limit = limit
        # Visitors and signed-in people apart: a flood of sign-in pages evicts only
        # other visitors' sessions, never someone's who is signed in.
        self._visitors: OrderedDict[str, Session] = OrderedDict()
        self._signed: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def _sign(self, sid: str) -> str:
        return hmac.new(self._key, sid.encode(), hashlib.sha256).hexdigest()

    def cookie_value(self, session: Session) -> str:
        return f"{session.sid}.{self._sign(session.sid)}"

    def new(self, lang: str = "id") -> Session:
        session = Session(secrets.token_urlsafe(32), self.clock(), secrets.token_urlsafe(32))
        session.lang = lang
        self._keep(self._visitors, session)
        return session

    def _keep(self, table: OrderedDict[str, Session], session: Session) -> None:
        with self._lock:
            table[session.sid] = session
            while len(table) > self.limit:
                table.popitem(last=False)  # the oldest goes first

    def lookup(self, cookie: str | None) -> Session | None:
        """The live session a cookie names; None when unsigned, unknown or expired."""
        if not cookie or "." not in cookie:
            return None
        sid, _, sig = cookie.rpartition(".")
        if not hmac.compare_digest(sig, self._sign(sid)):
            return None
        with self._lock:
            session = self._signed.get(sid) or self._visitors.get(sid)
            if session is None:
                return None
            if self.clock() - session.created >= self.lifetime:
                self._signed.pop(sid, None)
                self._visitors.pop(sid, None)
                return None
            return session

    def drop(self, session: Session) -> None:
        with self._lock:
            self._signed.pop(session.sid, None)
            self._visitors.pop(session.sid, None)

    def sign_in(self, old: Session | None, user: str) -> Session:
        """A fresh session for ``user``: a new id and token, so an id planted before
        sign-in (session fixation) is worth nothing after it."""
        lang = old.lang if old is not None else "id"
        if old is not None:
            self.drop(old)
        session = Session(secrets.token_urlsafe(32), self.clock(), secrets.token_urlsafe(32))
        session.lang, session.user = lang, user
        self._keep(self._signed, session)
        return session

    def check_csrf(self, session: Session | None, token: str | None) -> bool:
        return bool(session is not None and token and hmac.compare_digest(session.csrf, str(token)))
