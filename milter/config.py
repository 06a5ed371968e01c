"""Gateway configuration: read once, validated entirely at start.

A gateway that starts with a typo in its configuration relays mail in a way
nobody intended; so every key is known, every value checked, and the first
problem is reported as ``file:line:col: key: message`` before a socket opens.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from milter import shipped
from milter.yamlsource import KeyPath, Source, SourceError, load_file

DEFAULT_PATH = "/etc/milter/gateway.yaml"
TLS_POLICIES = ("none", "opportunistic", "required", "verify")
ON_ERROR = ("tempfail", "deliver", "quarantine")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(i?[bB])?\s*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


class ConfigError(SourceError):
    """An invalid gateway configuration."""


def default_config_path() -> str:
    return os.environ.get("MILTER_CONFIG") or DEFAULT_PATH


@dataclass(frozen=True)
class Route:
    """A next hop: ``smtp://host:port``, ``smtps://host:port`` or ``maildir:PATH``."""

    name: str
    url: str = field(repr=False)  # may hold user:password; display_url is the safe form
    tls: str = "opportunistic"
    scheme: str = "smtp"
    host: str = ""
    port: int = 25
    path: str = ""  # maildir
    timeout: float = 60.0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def display_url(self) -> str:
        """The URL as logs and replies may show it: never the password."""
        if self.scheme == "maildir":
            return f"maildir:{self.path}"
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{user}{host}:{self.port}"


@dataclass(frozen=True)
class OcrConfig:
    """``inspect.ocr``: scanned letters read by OCR (``milter.inspect.ocr``). Its time
    budget is the message's OCR allowance, on top of ``inspect.time_budget``."""

    enabled: bool = True
    languages: tuple[str, ...] = ("ind", "eng")
    max_pages: int = 10  # image pages (scans, photos, PDF pages) per message
    max_pixels: int = 40_000_000  # per image, checked before it is decoded
    time_budget: float = 20.0
    engine: str = "tesseract"  # or "rapidocr" (bench/bench_ocr.py compares them)
    # OCR processes per gateway worker, beside the inspection processes, so a scan being
    # read never holds one other mail needs (0: OCR in the inspection processes).
    processes: int = 1


@dataclass(frozen=True)
class InspectLimits:
    """Bounds on inspection; reaching one is an ``unscannable`` finding, never a crash."""

    max_bytes: int = 50 << 20
    mime_depth: int = 20
    mime_parts: int = 500
    archive_depth: int = 4
    archive_entries: int = 1000
    expanded_bytes: int = 100 << 20
    expansion_ratio: float = 100.0
    text_bytes: int = 2 << 20
    time_budget: float = 10.0
    # Inspection processes per gateway worker (0: a thread of the worker, which a
    # hostile message can keep busy past its budget).
    processes: int = 2
    # Messages up to this size made of text parts only are inspected in the worker
    # itself: their cost is bounded by their size (milter.inspect.simple). 0: never.
    inline_max: int = 32 << 10
    ocr: OcrConfig = field(default_factory=OcrConfig)


@dataclass(frozen=True)
class QuarantineConfig:
    database: str = "sqlite:///var/lib/milter/quarantine.sqlite3"
    spool: str = "/var/lib/milter/spool"
    retention: float = 30 * 86400.0
    # How long a store call may take before the message gets a prompt 451: shorter
    # than clients' own timeouts, so a frozen database costs them a retry, not a hang.
    timeout: float = 5.0


@dataclass(frozen=True)
class QueueConfig:
    """The gateway's own retry queue: recipients left deferred after another way out
    of the same message accepted it (``milter.app.retryqueue``)."""

    # Delays between attempts; the last one repeats.
    retry: tuple[float, ...] = (300.0, 900.0, 1800.0, 3600.0, 2 * 3600.0, 4 * 3600.0)
    max_age: float = 5 * 86400.0  # then the entry fails for good (DSN to an internal sender)
    delay_notice_after: float = 4 * 3600.0  # one RFC 3464 "delayed" notice after this long


@dataclass(frozen=True)
class NoticesConfig:
    sender: str = "postmaster@jakarta.go.id"
    officers: tuple[str, ...] = ()
    templates: str | None = None
    rate_limit: int = 20  # notices per sender per hour
    enabled: bool = True
    timezone: str = "Asia/Jakarta"  # dates in notices are local time (WIB by default)
    # Delays between attempts at a notice the next hop did not take; the last repeats.
    retry: tuple[float, ...] = (60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)
    give_up: float = 2 * 86400.0  # a notice not taken after this long is given up


@dataclass(frozen=True)
class LoginThrottle:
    """After ``attempts`` failed logins for one account or from one address within
    ``window`` seconds, further attempts are refused for ``lockout`` seconds."""

    attempts: int = 5
    window: float = 15 * 60.0
    lockout: float = 15 * 60.0


@dataclass(frozen=True)
class ReviewConfig:
    """The review web UI (``milter review``) and the release rules it shares with the CLI."""

    listen: tuple[str, int] = ("127.0.0.1", 8025)
    base_path: str = "/"
    session_lifetime: float = 8 * 3600.0
    # Classifications whose release needs two different officers (SE 79 keeps
    # SANGAT_RAHASIA to the fewest hands).
    two_person: tuple[str, ...] = ("SANGAT_RAHASIA",)
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)
    tls_cert: str | None = None
    tls_key: str | None = None
    secret_file: str | None = None


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    key_file: str
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class MilterConfig:
    """The milter-protocol front-end (Postfix ``smtpd_milters``, Sendmail ``INPUT_MAIL_FILTER``).

    ``listen`` holds libmilter-style socket specs: ``inet:HOST:PORT``, ``inet6:[HOST]:PORT``
    or ``unix:/path``. ``progress_interval`` is how often a message still being decided
    tells the MTA to keep waiting (it must stay under Postfix's milter_content_timeout).
    """

    listen: tuple[str, ...] = ()
    timeout: float = 300.0
    progress_interval: float = 10.0


_MILTER_SPEC = re.compile(r"^(inet:[^:\s]+:\d{1,5}|inet6:\[[^\]\s]+\]:\d{1,5}|unix:/\S+)$")


@dataclass(frozen=True)
class GatewayConfig:
    """The whole gateway configuration (DESIGN.md section 3)."""

    path: str = ""
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 2525),)
    hostname: str = "localhost"
    clients: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    max_message_size: int = 50 << 20
    max_recipients: int = 1000
    max_line_length: int = 64 * 1024  # DATA lines; RFC 5322 says 1000, real mail exceeds it
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    max_connections_per_client: int = 100
    max_connections: int = 1000
    spool_threshold: int = 1 << 20
    spool_dir: str = ""
    upstream: Route = field(
        default_factory=lambda: Route(
            "upstream", "smtp://127.0.0.1:10025", host="127.0.0.1", port=10025
        )
    )
    routes: dict[str, Route] = field(default_factory=dict)
    policy: tuple[str, ...] = ()
    quarantine: QuarantineConfig = field(default_factory=QuarantineConfig)
    notices: NoticesConfig = field(default_factory=NoticesConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    dkim: tuple[DkimKey, ...] = ()
    metrics: tuple[str, int] | None = None
    on_error: str = "tempfail"
    workers: int = 1
    tls_cert: str | None = None
    tls_key: str | None = None
    inspect: InspectLimits = field(default_factory=InspectLimits)
    log_level: str = "INFO"
    shutdown_grace: float = 30.0
    milter: MilterConfig = field(default_factory=MilterConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)

    def route(self, name: str) -> Route:
        return self.upstream if name == "upstream" else self.routes[name]


def parse_size(value: Any) -> int:
    """``50MB``, ``512k``, ``1048576`` -> bytes (binary multiples, as Postfix does)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 50MB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"expected a size such as 50MB, got {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_duration(value: Any) -> float:
    """``30d``, ``5m``, ``90s``, ``250ms``, ``60`` (seconds) -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30d")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"expected a duration such as 30d or 5m, got {value!r}")
    return float(m.group(1)) * _SECONDS[m.group(2)]


def parse_hostport(value: Any, default_port: int | None = None) -> tuple[str, int]:
    """``127.0.0.1:2525``, ``[::1]:2525``, ``localhost:25`` -> (host, port)."""
    text = str(value).strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_s = rest.lstrip(":")
    elif text.count(":") == 1:
        host, _, port_s = text.partition(":")
    elif ":" not in text and default_port is not None:
        host, port_s = text, str(default_port)
    else:
        raise ValueError(f"expected host:port, got {value!r}")
    if not host:
        raise ValueError(f"missing host in {value!r}")
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"bad port in {value!r}")
    return host, int(port_s)


class _Reader:
    """Walks the YAML data, checking types and keys, raising located errors."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self.base = Path(src.file).resolve().parent

    def fail(self, path: KeyPath, message: str, at_key: bool = False) -> ConfigError:
        e = self.src.error(path, message, at_key)
        return ConfigError(e.file, e.line, e.col, e.message)

    def mapping(self, value: Any, path: KeyPath, known: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, "expected a mapping")
        for k in value:
            if k not in known:
                hint = ", ".join(sorted(known))
                raise self.fail((*path, k), f"unknown key (known keys: {hint})", at_key=True)
        return value

    def conv(self, value: Any, path: KeyPath, fn: Any) -> Any:
        try:
            return fn(value)
        except (ValueError, TypeError) as exc:
            raise self.fail(path, str(exc)) from None

    def string(self, value: Any, path: KeyPath) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, "expected a non-empty string")
        return value.strip()

    def integer(self, value: Any, path: KeyPath, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(path, f"expected an integer >= {minimum}")
        return value

    def boolean(self, value: Any, path: KeyPath) -> bool:
        """YAML's true/false only: ``bool("false")`` is True, the opposite of what the
        administrator wrote."""
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {value!r}")
        return value

    def strings(self, value: Any, path: KeyPath) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(path, "expected a list of strings")
        return tuple(self.string(v, (*path, i)) for i, v in enumerate(value))

    def path(self, value: Any, path: KeyPath) -> str:
        p = Path(self.string(value, path)).expanduser()
        return str(p if p.is_absolute() else (self.base / p))

    def readable(self, value: Any, path: KeyPath) -> str:
        p = self.path(value, path)
        try:
            with open(p, "rb"):
                pass
        except OSError as exc:
            raise self.fail(path, f"cannot read {p}: {exc.strerror}") from None
        return p

    def policy_file(self, value: Any, path: KeyPath) -> str:
        """A ``policy:`` entry: a file path, or ``shipped:NAME`` for a policy the package
        carries (its path inside the installed package is not stable enough to write
        into a configuration that outlives upgrades)."""
        try:
            resolved = shipped.resolve(self.string(value, path))
        except shipped.UnknownShippedPolicy as exc:
            raise self.fail(path, str(exc)) from None
        return self.readable(resolved if resolved is not None else value, path)

    def route(self, name: str, value: Any, path: KeyPath) -> Route:
        if isinstance(value, str):
            value = {"url": value}
        spec = self.mapping(value, path, {"url", "tls", "timeout", "username", "password"})
        if "url" not in spec:
            raise self.fail(path, "a route needs a url")
        url = self.string(spec["url"], (*path, "url"))
        tls = spec.get("tls", "opportunistic")
        if tls not in TLS_POLICIES:
            raise self.fail((*path, "tls"), f"expected one of {', '.join(TLS_POLICIES)}")
        timeout = self.conv(spec.get("timeout", 60), (*path, "timeout"), parse_duration)
        user = spec.get("username")
        password = spec.get("password")
        if url.startswith("maildir:"):
            return Route(
                name,
                url,
                "none",
                "maildir",
                path=self.path(url[len("maildir:") :], (*path, "url")),
                timeout=timeout,
            )
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps"):
            raise self.fail(
                (*path, "url"), "expected smtp://host:port, smtps://host:port or maildir:PATH"
            )
        if not parts.hostname:
            raise self.fail((*path, "url"), "missing host")
        try:
            port = parts.port or (465 if parts.scheme == "smtps" else 25)
        except ValueError:
            raise self.fail((*path, "url"), "bad port") from None
        if parts.scheme == "smtps" and tls in ("none", "opportunistic"):
            tls = "required"
        return Route(
            name,
            url,
            tls,
            parts.scheme,
            parts.hostname,
            port,
            timeout=timeout,
            username=user if isinstance(user, str) else parts.username,
            password=password if isinstance(password, str) else parts.password,
        )


_TOP = {
    "listen",
    "hostname",
    "clients",
    "max_message_size",
    "max_recipients",
    "max_line_length",
    "command_timeout",
    "data_timeout",
    "max_connections_per_client",
    "max_connections",
    "spool_threshold",
    "spool_dir",
    "upstream",
    "routes",
    "policy",
    "quarantine",
    "notices",
    "queue",
    "dkim",
    "metrics",
    "on_error",
    "workers",
    "tls",
    "inspect",
    "log_level",
    "shutdown_grace",
    "milter",
    "review",
}


def from_source(src: Source) -> GatewayConfig:
    """Validate parsed YAML into a GatewayConfig, or raise ConfigError naming the spot."""
    r = _Reader(src)
    d = r.mapping(src.data, (), _TOP)
    kw: dict[str, Any] = {"path": src.file}
    if "listen" in d:
        kw["listen"] = tuple(
            r.conv(v, ("listen", i), parse_hostport)
            for i, v in enumerate(r.strings(d["listen"], ("listen",)))
        )
    if "milter" in d:
        mc = r.mapping(d["milter"], ("milter",), {"listen", "timeout", "progress_interval"})
        mkw: dict[str, Any] = {}
        if "listen" in mc:
            specs = r.strings(mc["listen"], ("milter", "listen"))
            for i, listen_spec in enumerate(specs):
                if not _MILTER_SPEC.match(listen_spec):
                    raise r.fail(
                        ("milter", "listen", i),
                        "expected inet:HOST:PORT, inet6:[HOST]:PORT or unix:/PATH, "
                        f"got {listen_spec!r}",
                    )
            mkw["listen"] = specs
        for key in ("timeout", "progress_interval"):
            if key in mc:
                mkw[key] = r.conv(mc[key], ("milter", key), parse_duration)
        kw["milter"] = MilterConfig(**mkw)
    if "listen" in kw and not kw["listen"] and not kw.get("milter", MilterConfig()).listen:
        raise r.fail(("listen",), "nothing to serve: no listen address and no milter.listen")
    if "hostname" in d:
        kw["hostname"] = r.string(d["hostname"], ("hostname",))
    if "clients" in d:
        kw["clients"] = tuple(
            r.conv(v, ("clients", i), lambda s: ipaddress.ip_network(s, False))
            for i, v in enumerate(r.strings(d["clients"], ("clients",)))
        )
    for key in ("max_message_size", "spool_threshold"):
        if key in d:
            kw[key] = r.conv(d[key], (key,), parse_size)
    for key in (
        "max_recipients",
        "max_line_length",
        "max_connections_per_client",
        "max_connections",
    ):
        if key in d:
            kw[key] = r.integer(d[key], (key,), 1)
    for key in ("command_timeout", "data_timeout", "shutdown_grace"):
        if key in d:
            kw[key] = r.conv(d[key], (key,), parse_duration)
    if "spool_dir" in d:
        kw["spool_dir"] = r.path(d["spool_dir"], ("spool_dir",))
    if "upstream" in d:
        kw["upstream"] = r.route("upstream", d["upstream"], ("upstream",))
    if "routes" in d:
        routes = d["routes"]
        if not isinstance(routes, dict):
            raise r.fail(("routes",), "expected a mapping of route names")
        if "upstream" in routes:
            raise r.fail(("routes", "upstream"), "'upstream' is reserved for the upstream key")
        kw["routes"] = {n: r.route(n, v, ("routes", n)) for n, v in routes.items()}
    if "policy" in d:
        kw["policy"] = tuple(
            r.policy_file(v, ("policy", i) if isinstance(d["policy"], list) else ("policy",))
            for i, v in enumerate(r.strings(d["policy"], ("policy",)))
        )
    if "quarantine" in d:
        q = r.mapping(
            d["quarantine"], ("quarantine",), {"database", "spool", "retention", "timeout"}
        )
        qkw: dict[str, Any] = {}
        if "database" in q:
            db = r.string(q["database"], ("quarantine", "database"))
            if db.startswith("sqlite:///"):
                rel = db[len("sqlite:///") :]
                db = "sqlite:///" + (rel if rel.startswith("/") else str(r.base / rel))
            elif not db.startswith(("postgresql://", "postgres://")):
                raise r.fail(
                    ("quarantine", "database"), "expected sqlite:///PATH or postgresql://..."
                )
            qkw["database"] = db
        if "spool" in q:
            qkw["spool"] = r.path(q["spool"], ("quarantine", "spool"))
        if "retention" in q:
            qkw["retention"] = r.conv(q["retention"], ("quarantine", "retention"), parse_duration)
        if "timeout" in q:
            qkw["timeout"] = r.conv(q["timeout"], ("quarantine", "timeout"), parse_duration)
            if qkw["timeout"] <= 0:
                raise r.fail(("quarantine", "timeout"), "expected a positive duration")
        kw["quarantine"] = QuarantineConfig(**qkw)
    if "queue" in d:
        kw["queue"] = _queue_config(r, d["queue"])
    if "notices" in d:
        n = r.mapping(
            d["notices"],
            ("notices",),
            {
                "from",
                "officers",
                "templates",
                "rate_limit",
                "enabled",
                "timezone",
                "retry",
                "give_up",
            },
        )
        nkw: dict[str, Any] = {}
        if "from" in n:
            nkw["sender"] = _address(r, n["from"], ("notices", "from"))
        if "officers" in n:
            nkw["officers"] = tuple(
                _address(r, a, ("notices", "officers", i))
                for i, a in enumerate(r.strings(n["officers"], ("notices", "officers")))
            )
        if "templates" in n:
            nkw["templates"] = r.path(n["templates"], ("notices", "templates"))
        if "rate_limit" in n:
            nkw["rate_limit"] = r.integer(n["rate_limit"], ("notices", "rate_limit"))
        if "enabled" in n:
            nkw["enabled"] = r.boolean(n["enabled"], ("notices", "enabled"))
        if "timezone" in n:
            import zoneinfo

            def known_zone(value: Any) -> str:
                name = str(value).strip()
                try:
                    zoneinfo.ZoneInfo(name)
                except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                    raise ValueError(f"unknown time zone {name!r}, e.g. Asia/Jakarta") from None
                return name

            nkw["timezone"] = r.conv(n["timezone"], ("notices", "timezone"), known_zone)
        if "retry" in n:
            delays = n["retry"] if isinstance(n["retry"], list) else [n["retry"]]
            if not delays:
                raise r.fail(("notices", "retry"), "expected at least one delay, e.g. [1m, 5m]")
            nkw["retry"] = tuple(
                r.conv(v, ("notices", "retry", i), parse_duration) for i, v in enumerate(delays)
            )
        if "give_up" in n:
            nkw["give_up"] = r.conv(n["give_up"], ("notices", "give_up"), parse_duration)
        kw["notices"] = NoticesConfig(**nkw)
    if "dkim" in d:
        keys = d["dkim"] or []
        if not isinstance(keys, list):
            raise r.fail(("dkim",), "expected a list of keys")
        out = []
        for i, k in enumerate(keys):
            p: KeyPath = ("dkim", i)
            spec = r.mapping(k, p, {"domain", "selector", "key_file", "headers"})
            for req in ("domain", "selector", "key_file"):
                if req not in spec:
                    raise r.fail(p, f"missing {req}")
            out.append(
                DkimKey(
                    r.string(spec["domain"], (*p, "domain")).lower(),
                    r.string(spec["selector"], (*p, "selector")),
                    r.readable(spec["key_file"], (*p, "key_file")),
                    r.strings(spec.get("headers", []), (*p, "headers")),
                )
            )
        kw["dkim"] = tuple(out)
    if d.get("metrics") is not None:
        kw["metrics"] = r.conv(d["metrics"], ("metrics",), parse_hostport)
    if "on_error" in d:
        if d["on_error"] not in ON_ERROR:
            raise r.fail(("on_error",), f"expected one of {', '.join(ON_ERROR)}")
        kw["on_error"] = d["on_error"]
    if "workers" in d:
        kw["workers"] = r.integer(d["workers"], ("workers",), 1)
    if "tls" in d:
        t = r.mapping(d["tls"], ("tls",), {"cert", "key"})
        if "cert" not in t or "key" not in t:
            raise r.fail(("tls",), "STARTTLS needs both cert and key")
        kw["tls_cert"] = r.readable(t["cert"], ("tls", "cert"))
        kw["tls_key"] = r.readable(t["key"], ("tls", "key"))
    if "inspect" in d:
        names = set(InspectLimits.__dataclass_fields__)
        lim = r.mapping(d["inspect"], ("inspect",), names)
        lkw: dict[str, Any] = {}
        for k, v in lim.items():
            p = ("inspect", k)
            if k in ("max_bytes", "expanded_bytes", "text_bytes", "inline_max"):
                lkw[k] = r.conv(v, p, parse_size)
            elif k == "time_budget":
                lkw[k] = r.conv(v, p, parse_duration)
            elif k == "expansion_ratio":
                lkw[k] = r.conv(v, p, float)
            elif k == "ocr":
                lkw[k] = _ocr_config(r, v)
            else:
                lkw[k] = r.integer(v, p, 0 if k == "processes" else 1)
        kw["inspect"] = InspectLimits(**lkw)
    if "log_level" in d:
        lvl = str(d["log_level"]).upper()
        if lvl not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise r.fail(("log_level",), "expected DEBUG, INFO, WARNING or ERROR")
        kw["log_level"] = lvl
    if "review" in d:
        kw["review"] = _review_config(r, d["review"])
    return GatewayConfig(**kw)


def _review_config(r: _Reader, value: Any) -> ReviewConfig:
    """``review:``, the web UI; durations in the configuration's syntax (``8h``)."""
    known = {"listen", "base_path", "session_lifetime", "two_person", "login_throttle"}
    v = r.mapping(value, ("review",), known | {"tls", "secret_file"})
    kw: dict[str, Any] = {}
    if "listen" in v:
        kw["listen"] = r.conv(v["listen"], ("review", "listen"), parse_hostport)
    if "base_path" in v:
        base = r.string(v["base_path"], ("review", "base_path"))
        if not base.startswith("/") or any(c in base for c in "?#\\ "):
            raise r.fail(("review", "base_path"), "expected a URL path starting with /")
        kw["base_path"] = base.rstrip("/") or "/"  # "/review/" and "/review" alike
    if "session_lifetime" in v:
        p = ("review", "session_lifetime")
        kw["session_lifetime"] = r.conv(v["session_lifetime"], p, parse_duration)
        if kw["session_lifetime"] <= 0:
            raise r.fail(p, "expected a positive duration")
    if "two_person" in v:
        tp = v["two_person"]
        kw["two_person"] = () if tp in (None, []) else r.strings(tp, ("review", "two_person"))
    if "login_throttle" in v:
        p = ("review", "login_throttle")
        t = r.mapping(v["login_throttle"], p, {"attempts", "window", "lockout"})
        tkw: dict[str, Any] = {}
        if "attempts" in t:
            tkw["attempts"] = r.integer(t["attempts"], (*p, "attempts"), 1)
        for k in ("window", "lockout"):
            if k in t:
                tkw[k] = r.conv(t[k], (*p, k), parse_duration)
                if tkw[k] <= 0:
                    raise r.fail((*p, k), "expected a positive duration")
        kw["login_throttle"] = LoginThrottle(**tkw)
    if "tls" in v:
        t = r.mapping(v["tls"], ("review", "tls"), {"cert", "key"})
        if "cert" not in t or "key" not in t:
            raise r.fail(("review", "tls"), "HTTPS needs both cert and key")
        kw["tls_cert"] = r.readable(t["cert"], ("review", "tls", "cert"))
        kw["tls_key"] = r.readable(t["key"], ("review", "tls", "key"))
    if "secret_file" in v:
        kw["secret_file"] = r.path(v["secret_file"], ("review", "secret_file"))
    return ReviewConfig(**kw)


def _ocr_config(r: _Reader, value: Any) -> OcrConfig:
    p = ("inspect", "ocr")
    o = r.mapping(value, p, set(OcrConfig.__dataclass_fields__))
    okw: dict[str, Any] = {}
    if "enabled" in o:
        okw["enabled"] = r.boolean(o["enabled"], (*p, "enabled"))
    if "languages" in o:
        okw["languages"] = r.strings(o["languages"], (*p, "languages"))
    if "max_pages" in o:
        okw["max_pages"] = r.integer(o["max_pages"], (*p, "max_pages"), 0)
    if "max_pixels" in o:
        okw["max_pixels"] = r.integer(o["max_pixels"], (*p, "max_pixels"), 1)
    if "processes" in o:
        okw["processes"] = r.integer(o["processes"], (*p, "processes"), 0)
    if "time_budget" in o:
        okw["time_budget"] = r.conv(o["time_budget"], (*p, "time_budget"), parse_duration)
    if "engine" in o:
        okw["engine"] = r.string(o["engine"], (*p, "engine"))
        if okw["engine"] not in ("tesseract", "rapidocr"):
            raise r.fail((*p, "engine"), "expected tesseract or rapidocr")
    return OcrConfig(**okw)


def _queue_config(r: _Reader, value: Any) -> QueueConfig:
    """``queue:``: ``retry`` is a list of delays, or ``{base, max}`` for doubling
    delays from ``base`` up to ``max``."""
    q = r.mapping(value, ("queue",), {"retry", "max_age", "delay_notice_after"})
    qkw: dict[str, Any] = {}
    if "retry" in q:
        spec = q["retry"]
        if isinstance(spec, dict):
            m = r.mapping(spec, ("queue", "retry"), {"base", "max"})
            if "base" not in m:
                raise r.fail(("queue", "retry"), "missing base")
            base = r.conv(m["base"], ("queue", "retry", "base"), parse_duration)
            top = r.conv(m.get("max", "4h"), ("queue", "retry", "max"), parse_duration)
            if base <= 0 or top < base:
                raise r.fail(("queue", "retry"), "expected 0 < base <= max")
            delays = [base]
            while delays[-1] * 2 < top and len(delays) < 64:
                delays.append(delays[-1] * 2)
            delays.append(top)
            qkw["retry"] = tuple(delays)
        else:
            items = spec if isinstance(spec, list) else [spec]
            if not items:
                raise r.fail(("queue", "retry"), "expected at least one delay, e.g. [5m, 15m]")
            qkw["retry"] = tuple(
                r.conv(v, ("queue", "retry", i), parse_duration) for i, v in enumerate(items)
            )
            if any(x <= 0 for x in qkw["retry"]):
                raise r.fail(("queue", "retry"), "delays must be positive")
    for key in ("max_age", "delay_notice_after"):
        if key in q:
            qkw[key] = r.conv(q[key], ("queue", key), parse_duration)
    return QueueConfig(**qkw)


def _address(r: _Reader, value: Any, path: KeyPath) -> str:
    s = r.string(value, path)
    if s.count("@") != 1 or s.startswith("@") or s.endswith("@") or any(c in s for c in " <>"):
        raise r.fail(path, f"not a mail address: {s!r}")
    return s


def load(path: str | Path) -> GatewayConfig:
    """Read and validate the gateway configuration file."""
    try:
        src = load_file(path)
    except SourceError as exc:
        raise ConfigError(exc.file, exc.line, exc.col, exc.message) from None
    return from_source(src)
