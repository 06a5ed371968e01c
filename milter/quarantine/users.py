"""Accounts of the review UI, kept in the quarantine database so every node shares them.

Four roles, each seeing as little as its work needs: an officer sees and acts on all
held mail; a head of agency (kepala perangkat daerah, SE 79 clause 3.b) reads only the
mail sent from the sender domains of their agencies, subdomains included; an auditor
reads the audit log; an admin manages accounts and sees no mail at all.

Passwords are hashed with argon2id. ``authenticate`` spends the same work on an unknown
or disabled name as on a real one, so timing does not tell which names exist, and
rehashes a stored hash whose parameters are older than the current ones.
"""

from __future__ import annotations

import builtins
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from milter.quarantine.sql import SqlStore
from milter.quarantine.store import QuarantineError, QuarantineStore

ROLES = ("officer", "head", "auditor", "admin")

_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")
# Login failures older than this are of no use to any throttle and are dropped.
_FAILURE_MEMORY = 86400.0
# Passwords shorter than this are refused: the accounts open held official mail.
MIN_PASSWORD = 10

_USER_COLUMNS = "name, role, agencies, disabled, created_at, email"
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


class UserError(QuarantineError):
    """An account operation that cannot be done (unknown user, bad role, exists...)."""


class UserExists(UserError):
    """``add`` of a name that is already taken."""


def normalise_name(name: str) -> str:
    """The stored form of an account name: case does not make a different account."""
    return name.strip().lower()


def normalise_agency(domain: str) -> str:
    """``@BPKD.jakarta.go.id`` or ``*.bpkd.jakarta.go.id`` -> ``bpkd.jakarta.go.id``."""
    d = domain.strip().lower().lstrip("@")
    d = d.removeprefix("*.").rstrip(".")
    if not _DOMAIN.match(d):
        raise UserError(f"not a mail domain: {domain!r}")
    return d


def sender_in(sender: str, domains: Sequence[str]) -> bool:
    """Whether ``sender``'s domain is one of ``domains`` or a subdomain of one."""
    domain = sender.rpartition("@")[2].strip().rstrip(".").lower()
    if not domain or "@" not in sender:
        return False
    return any(domain == d or domain.endswith("." + d) for d in domains)


@dataclass(frozen=True)
class User:
    """An account as the UI sees it (never its password hash)."""

    name: str
    role: str
    agencies: tuple[str, ...]
    disabled: bool
    created_at: float
    email: str = ""  # where the weekly digest goes (heads of agency)

    def sees_sender(self, sender: str) -> bool:
        """Whether this account may see mail from ``sender`` at all.

        Officers see everything; heads only their agencies' senders; auditors and
        admins no mail.
        """
        if self.role == "officer":
            return True
        if self.role == "head":
            return sender_in(sender, self.agencies)
        return False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "agencies": list(self.agencies),
            "disabled": self.disabled,
            "created_at": self.created_at,
            "email": self.email,
        }

    @property
    def address(self) -> str:
        """Where mail for this account goes: its email, else its name when that is an
        address; empty when neither."""
        if self.email:
            return self.email
        return self.name if _ADDRESS.match(self.name) else ""


def _row_to_user(row: Sequence[Any]) -> User:
    return User(
        name=str(row[0]),
        role=str(row[1]),
        agencies=tuple(json.loads(row[2] or "[]")),
        disabled=bool(row[3]),
        created_at=float(row[4]),
        email=str(row[5] or ""),
    )


class Users:
    """The accounts in one quarantine database (``review_users``, ``login_failures``)."""

    def __init__(self, store: SqlStore, hasher: PasswordHasher | None = None) -> None:
        self._store = store
        # argon2-cffi's defaults are argon2id with RFC 9106's low-memory parameters.
        self._hasher = hasher or PasswordHasher()
        self._dummy: str | None = None

    # -- plumbing ---------------------------------------------------------------------

    def _check_password(self, password: str) -> None:
        if len(password) < MIN_PASSWORD:
            raise UserError(f"the password must have at least {MIN_PASSWORD} characters")
        if "\n" in password or "\r" in password:
            raise UserError("the password must be one line")

    def _dummy_hash(self) -> str:
        """A hash to verify against when the name is unknown, for the same work."""
        if self._dummy is None:
            self._dummy = self._hasher.hash("not a password of anybody")
        return self._dummy

    # -- the interface ----------------------------------------------------------------

    def add(
        self,
        name: str,
        role: str,
        password: str,
        agencies: Sequence[str] = (),
        *,
        email: str = "",
    ) -> User:
        """Create an account; a head needs at least one agency, other roles none."""
        key = normalise_name(name)
        if not _NAME.match(key):
            raise UserError(
                f"not a valid account name: {name!r} (letters, digits, . _ @ -; 64 at most)"
            )
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        domains = tuple(dict.fromkeys(normalise_agency(d) for d in agencies))
        if role == "head" and not domains:
            raise UserError("a head of agency needs at least one --agency DOMAIN")
        if role != "head" and domains:
            raise UserError(f"only a head of agency has agencies, not a {role}")
        email = email.strip()
        if email and not _ADDRESS.match(email):
            raise UserError(f"not a mail address: {email!r}")
        self._check_password(password)
        digest = self._hasher.hash(password)
        now = time.time()
        s = self._store
        with s._transaction() as db:
            if db.execute(s._sql("SELECT 1 FROM review_users WHERE name = ?"), (key,)).fetchone():
                raise UserExists(f"user {key} exists already")
            db.execute(
                s._sql(
                    "INSERT INTO review_users (name, role, agencies, disabled, created_at, "
                    "password_hash, email) VALUES (?, ?, ?, 0, ?, ?, ?)"
                ),
                (key, role, json.dumps(list(domains)), now, digest, email),
            )
        return User(key, role, domains, False, now, email)

    def get(self, name: str) -> User | None:
        s = self._store
        with s._reading() as db:
            row = db.execute(
                s._sql(f"SELECT {_USER_COLUMNS} FROM review_users WHERE name = ?"),
                (normalise_name(name),),
            ).fetchone()
        return _row_to_user(row) if row else None

    def list(self) -> builtins.list[User]:
        with self._store._reading() as db:
            rows = db.execute(f"SELECT {_USER_COLUMNS} FROM review_users ORDER BY name")
            return [_row_to_user(r) for r in rows.fetchall()]

    def _update(self, name: str, assignments: str, values: Sequence[Any]) -> None:
        s = self._store
        with s._transaction() as db:
            row = db.execute(
                s._sql(f"UPDATE review_users SET {assignments} WHERE name = ? RETURNING name"),
                (*values, normalise_name(name)),
            ).fetchone()
        if row is None:
            raise UserError(f"no user {normalise_name(name)}")

    def disable(self, name: str) -> None:
        """Refuse every later login of ``name``; the account stays for the audit trail."""
        self._update(name, "disabled = ?", (1,))

    def set_password(self, name: str, password: str) -> None:
        self._check_password(password)
        self._update(name, "password_hash = ?", (self._hasher.hash(password),))

    def authenticate(self, name: str, password: str) -> User | None:
        """The account when ``password`` is right and it is enabled; None otherwise."""
        s = self._store
        with s._reading() as db:
            row = db.execute(
                s._sql(f"SELECT {_USER_COLUMNS}, password_hash FROM review_users WHERE name = ?"),
                (normalise_name(name),),
            ).fetchone()
        digest = str(row[6]) if row else self._dummy_hash()
        try:
            self._hasher.verify(digest, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None:  # cannot happen (the dummy matches no password); be explicit
            return None
        user = _row_to_user(row)
        if user.disabled:
            return None
        if self._hasher.check_needs_rehash(digest):
            self._update(user.name, "password_hash = ?", (self._hasher.hash(password),))
        return user

    def note_login_failure(self, name: str, address: str, now: float) -> None:
        """Count a failed login for the throttle (shared by every node)."""
        s = self._store
        with s._transaction() as db:
            db.execute(
                s._sql("INSERT INTO login_failures (name, address, at) VALUES (?, ?, ?)"),
                (normalise_name(name)[:200], address[:200], now),
            )
            db.execute(s._sql("DELETE FROM login_failures WHERE at < ?"), (now - _FAILURE_MEMORY,))

    def recent_failures(self, name: str, address: str, since: float) -> tuple[int, int]:
        """(failures for this account, failures from this address) since ``since``."""
        s = self._store
        with s._reading() as db:
            by_name = db.execute(
                s._sql("SELECT COUNT(*) FROM login_failures WHERE name = ? AND at >= ?"),
                (normalise_name(name)[:200], since),
            ).fetchone()
            by_address = db.execute(
                s._sql("SELECT COUNT(*) FROM login_failures WHERE address = ? AND at >= ?"),
                (address[:200], since),
            ).fetchone()
        return int(by_name[0]), int(by_address[0])


def users_of(store: QuarantineStore) -> Users:
    """The accounts kept in ``store``'s database."""
    if not isinstance(store, SqlStore):
        raise UserError("this quarantine store keeps no accounts")
    return Users(store)
