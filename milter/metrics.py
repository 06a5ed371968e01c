"""Prometheus metrics, defined once.

With ``workers: N`` the parent process sets PROMETHEUS_MULTIPROC_DIR before any
worker imports this module, so every worker's counters are summed on one endpoint.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

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


# Every front-end's series exist from the start at zero, so a rate() over a fresh
# gateway is 0, not absent.
for _frontend in FRONTENDS:
    for _outcome in ("delivered", "quarantined", "partial", "rejected", "deferred"):
        MESSAGES.labels(_frontend, _outcome)


def serve(host: str, port: int) -> None:
    """Start the metrics endpoint (a daemon thread) in this process."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        start_http_server(port, addr=host, registry=registry)
    else:
        start_http_server(port, addr=host)
