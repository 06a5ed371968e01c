"""The web UI's settings, read once from the gateway configuration's ``review:`` section.

The configuration loader owns the syntax (durations, ``host:port``); this module only
turns whatever shape it produced into one frozen value with the documented defaults,
so the routes never look anything up in the configuration themselves.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from milter.config import GatewayConfig

DEFAULT_LISTEN = ("127.0.0.1", 8025)
DEFAULT_LIFETIME = 8 * 3600.0
DEFAULT_TWO_PERSON = ("SANGAT_RAHASIA",)
SECRET_NAME = "review-secret"


@dataclass(frozen=True)
class ReviewSettings:
    """Everything ``create_app`` and ``milter review`` need beyond the store."""

    listen: tuple[str, int] = DEFAULT_LISTEN
    base_path: str = ""  # "" for "/", else "/prefix" without a trailing slash
    session_lifetime: float = DEFAULT_LIFETIME
    two_person: tuple[str, ...] = DEFAULT_TWO_PERSON
    throttle_attempts: int = 5
    throttle_window: float = 15 * 60.0
    throttle_lockout: float = 15 * 60.0
    tls_cert: str | None = None
    tls_key: str | None = None
    secret_file: str | None = None

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert and self.tls_key)


def normalise_base_path(value: str | None) -> str:
    """``/``, ``""`` -> ``""``; ``review/`` -> ``/review``: one form for prefixing URLs."""
    path = (value or "").strip().strip("/")
    return f"/{path}" if path else ""


def settings_of(config: GatewayConfig) -> ReviewSettings:
    """The ``review:`` section (validated by the loader) as the UI's settings."""
    review = config.review
    throttle = review.login_throttle
    return ReviewSettings(
        listen=review.listen,
        base_path=normalise_base_path(review.base_path),
        session_lifetime=review.session_lifetime,
        two_person=tuple(review.two_person),
        throttle_attempts=throttle.attempts,
        throttle_window=throttle.window,
        throttle_lockout=throttle.lockout,
        tls_cert=review.tls_cert,
        tls_key=review.tls_key,
        secret_file=review.secret_file,
    )


def default_secret_path(config: GatewayConfig) -> Path:
    """Beside the SQLite database; beside the spool for a PostgreSQL quarantine."""
    url = config.quarantine.database
    if url.startswith("sqlite:///"):
        rest = url[len("sqlite:///") :]
        return Path(rest if rest.startswith("/") else "/" + rest).parent / SECRET_NAME
    return Path(config.quarantine.spool).parent / SECRET_NAME


def load_secret(settings: ReviewSettings, config: GatewayConfig) -> bytes:
    """The key that signs session cookies: the configured file, else one generated once
    and kept (mode 0600) so that sessions survive a restart and every process agrees."""
    if settings.secret_file:
        data = Path(settings.secret_file).read_bytes().strip()
        if len(data) < 16:
            raise ValueError(f"{settings.secret_file}: the secret is shorter than 16 bytes")
        return data
    path = default_secret_path(config)
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secret + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process won the race: use theirs
    except FileExistsError:
        secret = path.read_bytes().strip()
    finally:
        tmp.unlink()
    return secret
