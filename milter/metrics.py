"""Prometheus metrics, defined once.

With ``workers: N`` the parent process sets PROMETHEUS_MULTIPROC_DIR before any
worker imports this module, so every worker's counters are summed on one endpoint.

Two kinds of series are not counted by the workers but computed where ``/metrics`` is
served: the quarantine backlog (read from the quarantine database at scrape time,
because several nodes share one PostgreSQL quarantine and no single worker knows the
whole of it) and the expiry of the next hops' certificates (a probe that connects to
every route that uses TLS, at start and then hourly). Both are custom collectors on
the registry the endpoint serves, so they exist once per endpoint, not once per worker.

Every labelled series an alert or a dashboard refers to is created at zero when its
labels are known (at import, when the routes are known, when a policy is loaded), so
that ``rate()`` over a fresh gateway is 0 rather than absent. ``_created`` series are
switched off: they double the series count and nothing here reads them.
"""

from __future__ import annotations

import calendar
import functools
import logging
import os
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from milter.config import GatewayConfig, Route
    from milter.quarantine.store import QuarantineStore

disable_created_metrics()  # type: ignore[no-untyped-call]

MESSAGES = Counter(
    "milter_messages", "Messages by front-end and outcome of the reply", ["frontend", "outcome"]
)
RECIPIENTS = Counter(
    "milter_recipients", "Recipients by front-end and action taken", ["frontend", "action"]
)
FRONTENDS = ("smtp", "milter")
MILTER_CONNECTIONS = Gauge(
    "milter_milter_connections", "Milter-protocol connections open", multiprocess_mode="livesum"
)
MILTER_PROTOCOL_ERRORS = Counter(
    "milter_milter_protocol_errors",
    "Milter connections closed for bad input, by reason",
    ["reason"],
)
PROCESSING = Histogram(
    "milter_processing_seconds",
    "Time from end of DATA to the reply (inspection, policy, delivery)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
INSPECTION = Histogram(
    "milter_inspection_seconds",
    "Time spent inspecting one message",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
NEXTHOP_ERRORS = Counter(
    "milter_nexthop_errors", "Next-hop failures by route and kind", ["route", "kind"]
)
SESSIONS = Gauge(
    "milter_sessions_in_flight", "SMTP sessions currently open", multiprocess_mode="livesum"
)
POLICY_RELOADS = Counter("milter_policy_reloads", "Policy reloads by result", ["result"])
MESSAGE_BYTES = Counter("milter_message_bytes", "Bytes received in accepted DATA")
DKIM_FAILURES = Counter("milter_dkim_failures", "Messages sent unsigned because signing failed")

# Where a message's time goes, as the pipeline sees it: ``inspection`` (the inspector
# process, including the hand-over), ``policy`` (evaluation), ``quarantine`` (the
# durable write of one held copy) and ``delivery`` (one send to one route, the
# ``route`` label; empty for the other stages).
STAGES = ("inspection", "policy", "quarantine", "delivery")
STAGE_SECONDS = Histogram(
    "milter_stage_seconds",
    "Time spent in one stage of handling a message, by stage (and route for delivery)",
    ["stage", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# Rule hits count messages, once per rule however many recipients it matched, in every
# mode: an audit-mode rule's hits are what tells whether it is ready to enforce.
RULE_HITS = Counter(
    "milter_rule_hits",
    "Messages a policy rule matched, by rule, clause and mode",
    ["rule", "clause", "mode"],
)
CLAUSE_HITS = Counter(
    "milter_clause_hits",
    "Messages matched by a rule enforcing an SE 79/SE/2019 clause, by clause and rule mode",
    ["clause", "mode"],
)
RULE_MODES = ("enforce", "audit", "test")
QUARANTINE_WRITE_ERRORS = Counter(
    "milter_quarantine_write_errors",
    "Held copies that could not be stored (the client got 451 and retries)",
)
INSPECTED = Counter("milter_inspected_messages", "Messages the inspector examined")
UNSCANNABLE = Counter(
    "milter_unscannable_messages",
    "Inspected messages with something the inspector could not fully examine",
)
# A part whose text was read by OCR carries this flag in its findings.
OCR_FLAG = "ocr"
OCR_MESSAGES = Counter(
    "milter_ocr_messages", "Inspected messages with at least one part read by OCR"
)
# ``kind`` is the notice (quarantine-notice, officer-alert, audit-alert, rule-alert,
# dsn); ``result``: queued when decided, then sent or failed at the upstream.
NOTICE_KINDS = ("quarantine-notice", "officer-alert", "audit-alert", "rule-alert", "dsn")
NOTICE_RESULTS = ("queued", "sent", "failed")
NOTICES = Counter("milter_notices", "Notices by kind and result", ["kind", "result"])
# The retry queue (milter.app.retryqueue): recipients queued after another way out of
# their message accepted it; attempts by route and result (delivered, deferred, failed);
# final failures by route and reason (refused: a 5xx; expired: queue.max_age). Its size
# and oldest entry are read from the database at scrape time (``RetryQueueCollector``).
RETRY_RESULTS = ("delivered", "deferred", "failed")
RETRY_QUEUED = Counter(
    "milter_retry_queued_recipients", "Recipients put in the retry queue, by route", ["route"]
)
RETRIES = Counter(
    "milter_retry_attempts", "Retry queue attempts by route and result", ["route", "result"]
)
RETRY_FINAL_FAILURES = Counter(
    "milter_retry_final_failures",
    "Retry queue entries given up, by route and reason",
    ["route", "reason"],
)
# Why TLS with a next hop failed: ``not_offered`` (route requires TLS, no STARTTLS),
# ``starttls_refused``, ``handshake``, ``certificate`` (verification failed) and
# ``cleartext_injection`` (bytes after the 220 to STARTTLS).
TLS_FAILURE_REASONS = (
    "not_offered",
    "starttls_refused",
    "handshake",
    "certificate",
    "cleartext_injection",
)
NEXTHOP_TLS_FAILURES = Counter(
    "milter_nexthop_tls_failures",
    "Failed TLS set-ups with a next hop, by route and reason",
    ["route", "reason"],
)
NEXTHOP_ERROR_KINDS = ("temporary", "permanent")
OUTCOMES = ("delivered", "quarantined", "partial", "rejected", "deferred")
ACTIONS = ("delivered", "quarantined", "rejected", "refused", "deferred", "queued")

# How often the certificate probe runs; the certificates change rarely, an expiry
# alert needs days of warning, and each probe is one connection per route.
PROBE_INTERVAL = 3600.0

logger = logging.getLogger("milter.metrics")


def _declare_static() -> None:
    for frontend in FRONTENDS:
        for outcome in OUTCOMES:
            MESSAGES.labels(frontend, outcome)
        for action in ACTIONS:
            RECIPIENTS.labels(frontend, action)
    for result in ("ok", "error"):
        POLICY_RELOADS.labels(result)
    for kind in NOTICE_KINDS:
        for result in NOTICE_RESULTS:
            NOTICES.labels(kind, result)
    for stage in STAGES[:-1]:
        STAGE_SECONDS.labels(stage, "")


_declare_static()


def declare_routes(routes: Iterable[Route]) -> None:
    """Create the per-route series at zero (delivery time, next-hop and TLS failures)."""
    for route in routes:
        STAGE_SECONDS.labels("delivery", route.name)
        for kind in NEXTHOP_ERROR_KINDS:
            NEXTHOP_ERRORS.labels(route.name, kind)
        RETRY_QUEUED.labels(route.name)
        for result in RETRY_RESULTS:
            RETRIES.labels(route.name, result)
        for reason in ("refused", "expired"):
            RETRY_FINAL_FAILURES.labels(route.name, reason)
        if route.scheme != "maildir" and route.tls != "none":
            for reason in TLS_FAILURE_REASONS:
                NEXTHOP_TLS_FAILURES.labels(route.name, reason)


_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, remembered: the client library checks and locks on
    every call, and a message touches a handful of series. No series is ever removed,
    so a remembered child stays the one the registry exports."""
    key = (id(metric), values)
    found = _CHILDREN.get(key)
    if found is None:
        if len(_CHILDREN) >= 4096:  # rule names come from the policy: stay bounded
            _CHILDREN.clear()
        found = _CHILDREN[key] = metric.labels(*values)
    return found


@functools.lru_cache(maxsize=1024)
def _clauses(clause: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in re.split(r"[,;]", clause) if c.strip())


def clauses_of(clause: str | None) -> list[str]:
    """``"2.c, 3.b"`` -> ``["2.c", "3.b"]``; ``"2.c; UU 27/2022"`` -> ``["2.c", "UU
    27/2022"]``: a rule may enforce several clauses (and laws)."""
    return list(_clauses(clause or ""))


def declare_rules(rules: Iterable[Any]) -> None:
    """Create every rule's and clause's hit series at zero for a loaded policy.

    ``rules`` are ``milter.policy.schema.Rule`` (name, clause, mode).
    """
    for rule in rules:
        RULE_HITS.labels(rule.name, rule.clause or "", rule.mode)
        for clause in clauses_of(rule.clause):
            CLAUSE_HITS.labels(clause, rule.mode)


def count_rule_hits(results: Iterable[Any]) -> None:
    """Count one message's matched rules (``RuleResult``), each rule once."""
    seen: set[str] = set()
    for r in results:
        if not r.matched or r.name in seen:
            continue
        seen.add(r.name)
        child(RULE_HITS, r.name, r.clause or "", r.mode).inc()
        for clause in _clauses(r.clause or ""):
            child(CLAUSE_HITS, clause, r.mode).inc()


def count_findings(findings: Any) -> None:
    """Count one inspected message (``Findings``): the unscannable and OCR shares."""
    INSPECTED.inc()
    if findings.any_unscannable():
        UNSCANNABLE.inc()
    if any(OCR_FLAG in p.flags for p in findings.parts):
        OCR_MESSAGES.inc()


# -- computed where /metrics is served ------------------------------------------------


class QuarantineCollector(Collector):
    """The held backlog and the age of its oldest message, read at scrape time.

    Where the process already has the store open (one process serving both mail and
    metrics) that store is read: a second SQLite handle on the same file in one
    process would be closed and reopened after errors, and closing any descriptor of
    a file drops every POSIX lock the process holds on it, the pipeline's included.
    Otherwise (the supervisor of ``workers: N``) the store is opened on the first
    scrape, after the workers are forked, and reopened after a failure. A failure to
    read shows as ``milter_quarantine_up 0`` instead of failing the whole scrape.
    """

    def __init__(
        self,
        open_store: Callable[[], QuarantineStore],
        *,
        owned: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._open = open_store
        self._owned = owned
        self._clock = clock
        self._store: QuarantineStore | None = None
        self._lock = threading.Lock()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("milter_quarantine_held_messages", "Messages held in quarantine now"),
            GaugeMetricFamily(
                "milter_quarantine_oldest_held_age_seconds",
                "Age of the oldest message held in quarantine (0 when none is held)",
            ),
            GaugeMetricFamily(
                "milter_quarantine_up", "Whether the quarantine database could be read"
            ),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        held, oldest, up = self._families()
        try:
            count, age = self._read()
        except Exception as exc:
            logger.warning("quarantine backlog not readable: %s: %s", type(exc).__name__, exc)
            self._drop()
            up.add_metric([], 0)
        else:
            held.add_metric([], count)
            oldest.add_metric([], age)
            up.add_metric([], 1)
            yield held
            yield oldest
        yield up

    def _read(self) -> tuple[int, float]:
        with self._lock:
            if self._store is None:
                self._store = self._open()
            records = self._store.list(status="held")
        if not records:
            return 0, 0.0
        return len(records), max(0.0, self._clock() - records[0].received_at)

    def _drop(self) -> None:
        if not self._owned:
            return
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except Exception as exc:
                logger.debug("closing the quarantine store failed: %s", exc)


class CertificateProbe(Collector):
    """Expiry of the certificate each TLS route presents, probed at start and hourly.

    The probe connects as the gateway does (STARTTLS on ``smtp://``, TLS at once on
    ``smtps://``) without verifying, because the point is to see the date even on a
    certificate that no longer verifies. ``milter_route_certificate_probe_success`` is
    0 while a route cannot be probed (unreachable, no STARTTLS); its expiry then reads
    0, which the expiry alert ignores.
    """

    def __init__(self, routes: Sequence[Route], helo: str, interval: float = PROBE_INTERVAL):
        self.routes = [r for r in routes if r.scheme in ("smtp", "smtps") and r.tls != "none"]
        self.helo = helo
        self.interval = interval
        self._expiry: dict[str, float] = {r.name: 0.0 for r in self.routes}
        self._ok: dict[str, float] = {r.name: 0.0 for r in self.routes}
        self._stop = threading.Event()
        self.probed = threading.Event()  # set after each full round

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "milter_route_certificate_expiry_timestamp_seconds",
                "notAfter of the certificate a route's next hop presents (0 until probed)",
                labels=["route"],
            ),
            GaugeMetricFamily(
                "milter_route_certificate_probe_success",
                "Whether the last certificate probe of a route got a certificate (with the"
                " route's TLS policy: only required and verify routes must have one)",
                labels=["route", "tls"],
            ),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        expiry, ok = self._families()
        for route in self.routes:
            expiry.add_metric([route.name], self._expiry[route.name])
            ok.add_metric([route.name, route.tls], self._ok[route.name])
        yield expiry
        yield ok

    def probe_all(self) -> None:
        for route in self.routes:
            try:
                self._expiry[route.name] = probe_certificate(route, self.helo)
                self._ok[route.name] = 1.0
            except Exception as exc:
                self._ok[route.name] = 0.0
                logger.warning(
                    "certificate probe of route %s failed: %s: %s",
                    route.name,
                    type(exc).__name__,
                    exc,
                )
        self.probed.set()

    def start(self) -> None:
        if not self.routes:
            return

        def loop() -> None:
            while not self._stop.is_set():
                self.probe_all()
                self._stop.wait(self.interval)

        threading.Thread(target=loop, name="certificate-probe", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


class ProbeError(Exception):
    """A route's certificate could not be fetched."""


def probe_certificate(route: Route, helo: str) -> float:
    """The notAfter (seconds since the epoch) of the certificate ``route`` presents."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    timeout = min(route.timeout, 30.0)
    client: smtplib.SMTP
    if route.scheme == "smtps":
        client = smtplib.SMTP_SSL(
            route.host, route.port, local_hostname=helo, timeout=timeout, context=ctx
        )
    else:
        client = smtplib.SMTP(route.host, route.port, local_hostname=helo, timeout=timeout)
    with client:
        if route.scheme == "smtp":
            client.ehlo()
            if not client.has_extn("starttls"):
                raise ProbeError("STARTTLS not offered")
            client.starttls(context=ctx)
        sock = client.sock
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
    if not der:
        raise ProbeError("no certificate presented")
    return certificate_not_after(der)


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at ``pos``."""
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ProbeError("truncated certificate")
    return tag, pos, pos + length


def certificate_not_after(der: bytes) -> float:
    """notAfter of a DER X.509 certificate; the standard library parses certificates
    only after verifying them, and an expiring one is exactly what may not verify."""
    _, pos, _ = _tlv(der, 0)  # Certificate
    _, pos, _ = _tlv(der, pos)  # TBSCertificate
    tag, _, end = _tlv(der, pos)
    if tag == 0xA0:  # [0] version
        pos = end
    for _ in range(3):  # serialNumber, signature, issuer
        pos = _tlv(der, pos)[2]
    tag, pos, _ = _tlv(der, pos)  # Validity
    pos = _tlv(der, pos)[2]  # notBefore
    tag, start, end = _tlv(der, pos)
    text = der[start:end].decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ProbeError("unexpected notAfter encoding")
    return float(calendar.timegm(time.strptime(text[:14], "%Y%m%d%H%M%S")))


def serve(
    host: str,
    port: int,
    config: GatewayConfig | None = None,
    *,
    store: QuarantineStore | None = None,
    start_probe: bool = True,
) -> CertificateProbe | None:
    """Start the metrics endpoint (a daemon thread) in this process.

    With ``config``, the endpoint also reports the quarantine backlog (when a policy,
    and so a quarantine, is configured: ``store`` when this process has it open) and
    the routes' certificates. The probe is
    returned; ``start_probe=False`` leaves starting it to a caller about to fork.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    registry: CollectorRegistry = REGISTRY
    if directory:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    probe: CertificateProbe | None = None
    if config is not None:
        routes = [config.upstream, *config.routes.values()]
        declare_routes(routes)
        if store is not None:
            shared = store
            registry.register(QuarantineCollector(lambda: shared, owned=False))
            registry.register(RetryQueueCollector(lambda: shared, owned=False))
        elif config.policy:
            from milter.quarantine.store import open_store

            quarantine = config.quarantine
            registry.register(QuarantineCollector(lambda: open_store(quarantine)))
            registry.register(RetryQueueCollector(lambda: open_store(quarantine)))
        probe = CertificateProbe(routes, config.hostname)
        registry.register(probe)
    start_http_server(port, addr=host, registry=registry)
    if probe is not None and start_probe:
        probe.start()
    return probe


class RetryQueueCollector(Collector):
    """The retry queue's size and the age of its oldest entry, read at scrape time
    (shared by the nodes of one PostgreSQL quarantine, so no worker knows it alone).
    Opened and reopened like ``QuarantineCollector``."""

    def __init__(
        self,
        open_store: Callable[[], QuarantineStore],
        *,
        owned: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._open = open_store
        self._owned = owned
        self._clock = clock
        self._store: QuarantineStore | None = None
        self._lock = threading.Lock()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("milter_retry_queue_entries", "Entries waiting in the retry queue"),
            GaugeMetricFamily(
                "milter_retry_queue_oldest_age_seconds",
                "Age of the oldest entry of the retry queue (0 when it is empty)",
            ),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        size, oldest = self._families()
        try:
            with self._lock:
                if self._store is None:
                    self._store = self._open()
                count, first = self._store.retry_stats()
        except Exception as exc:
            logger.warning("retry queue not readable: %s: %s", type(exc).__name__, exc)
            with self._lock:
                store, self._store = self._store, None
                if store is not None and self._owned:
                    try:
                        store.close()
                    except Exception:
                        logger.debug("closing the retry queue's store failed", exc_info=True)
            return
        size.add_metric([], count)
        oldest.add_metric([], max(0.0, self._clock() - first) if first is not None else 0.0)
        yield size
        yield oldest


def process_exited(pid: int) -> None:
    """Forget a dead worker's live gauges (open sessions, connections)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
