"""The operator's metrics, scraped from a real ``milter serve``.

Every series an alert or a panel uses must exist from the start at zero (a fresh
gateway's ``rate()`` is 0, not absent), move when the event it counts happens, and
appear once: no ``_created`` twins, one endpoint for all workers.
"""

from __future__ import annotations

import calendar
import io
import json
import smtplib
import ssl
import subprocess
import time
import urllib.request
import zipfile
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from milter import metrics
from tests.conftest import ROOT, Sink, free_port, wait_port
from tests.test_tls_and_reuse import TlsSink, cert  # noqa: F401 - the fixture

POLICY = ROOT / "policies" / "se-79-2019.yaml"
SENDER = "budi@dinas.jakarta.go.id"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def message(subject: str, to: str, attachment: tuple[str, bytes] | None = None) -> bytes:
    m = EmailMessage()
    m["From"] = SENDER
    m["To"] = to
    m["Subject"] = subject
    m.set_content("Isi pesan.")
    if attachment:
        m.add_attachment(attachment[1], maintype="application", subtype="zip",
                         filename=attachment[0])
    return m.as_bytes().replace(b"\n", b"\r\n")


def truncated_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "halo" * 1000)
    return buf.getvalue()[:60]


def send(port: int, rcpt: str, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.sendmail(SENDER, [rcpt], data)


def send_expect(port: int, rcpt: str, data: bytes, code: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        with pytest.raises(smtplib.SMTPDataError) as err:
            s.sendmail(SENDER, [rcpt], data)
        assert err.value.smtp_code == code


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def wait_metric(port: int, ready: Callable[[Samples], bool], timeout: float = 20.0) -> Samples:
    """Scrape until ``ready`` holds: the events behind a series are asynchronous (a
    probe thread, a worker that has not been scraped yet), so wait for them."""
    deadline = time.monotonic() + timeout
    while True:
        samples = parse(scrape_text(port))
        if ready(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never got ready:\n{scrape_text(port)}")
        time.sleep(0.1)


def not_after(crt: Path) -> float:
    out = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", str(crt)],
                         check=True, capture_output=True, text=True).stdout
    stamp = out.strip().split("=", 1)[1]  # e.g. "Jan  3 10:00:00 2030 GMT"
    return float(calendar.timegm(time.strptime(stamp, "%b %d %H:%M:%S %Y %Z")))


def gateway(factory: Any, tmp: Path, upstream: Sink, tls_sink: TlsSink, **more: Any) -> Any:
    mport = free_port()
    gw = factory(
        upstream=f"smtp://127.0.0.1:{upstream.port}",
        routes={"sanapati": {"url": f"smtp://127.0.0.1:{tls_sink.port}", "tls": "required"}},
        policy=str(POLICY),
        notices={"enabled": False},
        metrics=f"127.0.0.1:{mport}",
        **more,
    )
    gw.metrics_port = mport
    wait_port(mport)
    return gw


@pytest.fixture
def tls_sink(cert: tuple[Path, Path]) -> Any:  # noqa: F811 - the imported fixture
    s = TlsSink(cert)
    s.controller.start()
    yield s
    s.controller.stop()


def policy_rules() -> list[dict[str, Any]]:
    return list(yaml.safe_load(POLICY.read_text())["rules"])


@pytest.mark.parametrize("workers", [1, 2])
def test_series_exist_from_start_once_and_at_zero(
    gateway_factory: Any, tmp_path: Path, sink: Sink, tls_sink: TlsSink, workers: int
) -> None:
    gw = gateway(gateway_factory, tmp_path, sink, tls_sink, workers=workers)
    assert gw.wait_log('"event": "listening"', workers)
    # The certificate probe of the sanapati route (STARTTLS, self-signed) has run.
    samples = wait_metric(
        gw.metrics_port,
        lambda s: value(s, "milter_route_certificate_probe_success", route="sanapati",
                        tls="required") == 1.0,
    )
    text = scrape_text(gw.metrics_port)
    assert "_created" not in text
    # One endpoint for all workers: each series appears exactly once.
    lines = [ln.rsplit(" ", 1)[0] for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == len(set(lines))

    zero = {
        ("milter_quarantine_held_messages", ()): 0.0,
        ("milter_quarantine_oldest_held_age_seconds", ()): 0.0,
        ("milter_quarantine_up", ()): 1.0,
        ("milter_quarantine_write_errors_total", ()): 0.0,
        ("milter_inspected_messages_total", ()): 0.0,
        ("milter_unscannable_messages_total", ()): 0.0,
        ("milter_ocr_messages_total", ()): 0.0,
        ("milter_notices_total", (("kind", "dsn"), ("result", "failed"))): 0.0,
        ("milter_notices_total", (("kind", "quarantine-notice"), ("result", "queued"))): 0.0,
        ("milter_nexthop_tls_failures_total", (("route", "sanapati"), ("reason", "handshake"))):
            0.0,
        ("milter_nexthop_tls_failures_total",
         (("route", "upstream"), ("reason", "not_offered"))): 0.0,
        ("milter_stage_seconds_count", (("stage", "inspection"), ("route", ""))): 0.0,
        ("milter_stage_seconds_count", (("stage", "policy"), ("route", ""))): 0.0,
        ("milter_stage_seconds_count", (("stage", "quarantine"), ("route", ""))): 0.0,
        ("milter_stage_seconds_count", (("stage", "delivery"), ("route", "sanapati"))): 0.0,
        ("milter_stage_seconds_count", (("stage", "delivery"), ("route", "upstream"))): 0.0,
        ("milter_nexthop_errors_total", (("route", "sanapati"), ("kind", "temporary"))): 0.0,
        ("milter_messages_total", (("frontend", "smtp"), ("outcome", "deferred"))): 0.0,
    }
    for (name, labels), want in zero.items():
        assert samples.get((name, frozenset(labels))) == want, (name, labels)
    for rule in policy_rules():
        mode = rule.get("mode", "enforce")
        assert value(samples, "milter_rule_hits_total", rule=rule["name"],
                     clause=rule.get("clause", ""), mode=mode) == 0.0, rule["name"]
        for clause in metrics.clauses_of(rule.get("clause")):
            assert value(samples, "milter_clause_hits_total", clause=clause, mode=mode) == 0.0


def test_events_move_their_series(
    gateway_factory: Any, tmp_path: Path, sink: Sink, tls_sink: TlsSink
) -> None:
    gw = gateway(gateway_factory, tmp_path, sink, tls_sink)
    port = gw.metrics_port
    started = time.time()
    send(gw.port, "sari@example.org", message("[RAHASIA] Nota dinas", "sari@example.org"))
    send(gw.port, "sari@example.org",
         message("Data", "sari@example.org", ("data.zip", truncated_zip())))
    send(gw.port, "ani@bpkd.jakarta.go.id", message("Laporan", "ani@bpkd.jakarta.go.id"))
    send(gw.port, "kepala@bssn.sanapati.net",
         message("[SANGAT RAHASIA] Nota", "kepala@bssn.sanapati.net"))
    assert len(sink.wait_for(1)) == 1
    samples = wait_metric(port, lambda s: value(s, "milter_inspected_messages_total") == 4.0)
    assert value(samples, "milter_quarantine_held_messages") == 2.0
    age = value(samples, "milter_quarantine_oldest_held_age_seconds")
    assert age is not None and 0.0 <= age <= time.time() - started + 1
    assert value(samples, "milter_unscannable_messages_total") == 1.0
    assert value(samples, "milter_ocr_messages_total") == 0.0
    for rule, clause, hits in (("rahasia-terbatas-keluar", "2.c, 3.b", 1.0),
                               ("tak-terperiksa-keluar", "3.b", 1.0),
                               ("sangat-rahasia-sanapati", "2.c, 3.a, 3.b", 1.0)):
        assert value(samples, "milter_rule_hits_total", rule=rule, clause=clause,
                     mode="enforce") == hits, rule
    assert value(samples, "milter_clause_hits_total", clause="3.b", mode="enforce") == 3.0
    stage = "milter_stage_seconds_count"
    assert value(samples, stage, stage="inspection", route="") == 4.0
    assert value(samples, stage, stage="policy", route="") == 4.0
    assert value(samples, stage, stage="quarantine", route="") == 2.0
    assert value(samples, stage, stage="delivery", route="upstream") == 1.0
    assert value(samples, stage, stage="delivery", route="sanapati") == 1.0
    assert tls_sink.tls_seen == [True]

    # The backlog is the database's: a release elsewhere (another node, the CLI)
    # shows at the next scrape without this gateway doing anything.
    held = subprocess.run(
        [str(ROOT / ".venv/bin/milter"), "-c", str(gw.config_path), "quarantine", "list",
         "--status", "held", "--json"], check=True, capture_output=True, text=True)
    first = json.loads(held.stdout)[0]["id"]
    subprocess.run(
        [str(ROOT / ".venv/bin/milter"), "-c", str(gw.config_path), "quarantine", "delete",
         first, "--reason", "uji"], check=True, capture_output=True)
    wait_metric(port, lambda s: value(s, "milter_quarantine_held_messages") == 1.0)


def test_quarantine_write_error_is_counted(
    gateway_factory: Any, tmp_path: Path, sink: Sink, tls_sink: TlsSink
) -> None:
    gw = gateway(gateway_factory, tmp_path, sink, tls_sink)
    # The spool's temporary directory turned into a file: the held copy cannot be
    # written (root ignores permissions, so break the path instead).
    tmpdir = tmp_path / "spool" / "tmp"
    tmpdir.rmdir()
    tmpdir.write_text("not a directory")
    send_expect(gw.port, "sari@example.org", message("[RAHASIA] Nota", "sari@example.org"), 451)
    samples = wait_metric(gw.metrics_port,
                          lambda s: value(s, "milter_quarantine_write_errors_total") == 1.0)
    assert value(samples, "milter_quarantine_held_messages") == 0.0
    assert value(samples, "milter_messages_total", frontend="smtp", outcome="deferred") == 1.0


def test_tls_failure_per_route(
    gateway_factory: Any, tmp_path: Path, sink: Sink, tls_sink: TlsSink
) -> None:
    # The upstream (a plain sink) is required to speak TLS and does not offer it;
    # sanapati's self-signed certificate does not verify.
    mport = free_port()
    gw = gateway_factory(
        upstream={"url": f"smtp://127.0.0.1:{sink.port}", "tls": "required"},
        routes={"sanapati": {"url": f"smtp://127.0.0.1:{tls_sink.port}", "tls": "verify"}},
        policy=str(POLICY), notices={"enabled": False}, metrics=f"127.0.0.1:{mport}",
    )
    wait_port(mport)
    send_expect(gw.port, "ani@bpkd.jakarta.go.id",
                message("Laporan", "ani@bpkd.jakarta.go.id"), 451)
    send_expect(gw.port, "kepala@bssn.sanapati.net",
                message("[SANGAT RAHASIA] Nota", "kepala@bssn.sanapati.net"), 451)
    samples = wait_metric(mport, lambda s: value(
        s, "milter_nexthop_tls_failures_total", route="sanapati", reason="certificate") == 1.0)
    assert value(samples, "milter_nexthop_tls_failures_total", route="upstream",
                 reason="not_offered") == 1.0
    assert value(samples, "milter_nexthop_tls_failures_total", route="sanapati",
                 reason="handshake") == 0.0
    assert sink.messages == [] and tls_sink.handler.messages == []
    # Probed without verifying: the date of a certificate that does not verify is
    # still known; the plain upstream has none to show.
    samples = wait_metric(mport, lambda s: value(
        s, "milter_route_certificate_probe_success", route="sanapati", tls="verify") == 1.0)
    assert value(samples, "milter_route_certificate_probe_success", route="upstream",
                 tls="required") == 0.0
    assert value(samples, "milter_route_certificate_expiry_timestamp_seconds",
                 route="upstream") == 0.0


def test_certificate_expiry_of_the_sanapati_route(
    gateway_factory: Any, tmp_path: Path, sink: Sink, tls_sink: TlsSink,
    cert: tuple[Path, Path],  # noqa: F811
) -> None:
    gw = gateway(gateway_factory, tmp_path, sink, tls_sink)
    samples = wait_metric(gw.metrics_port, lambda s: value(
        s, "milter_route_certificate_probe_success", route="sanapati", tls="required") == 1.0)
    expiry = value(samples, "milter_route_certificate_expiry_timestamp_seconds",
                   route="sanapati")
    assert expiry == not_after(cert[0])
    # The plain aiosmtpd upstream (opportunistic) offers no STARTTLS: nothing to date.
    assert value(samples, "milter_route_certificate_probe_success", route="upstream",
                 tls="opportunistic") == 0.0


def test_not_after_parser_reads_utc_and_generalized_time(tmp_path: Path) -> None:
    """UTCTime until 2049, GeneralizedTime from 2050 (RFC 5280 section 4.1.2.5)."""
    for days in (2, 40 * 365):
        key, crt = tmp_path / f"k{days}.pem", tmp_path / f"c{days}.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out",
                        str(crt), "-days", str(days), "-subj", "/CN=relay.sanapati.test"],
                       check=True, capture_output=True, timeout=60)
        der = ssl.PEM_cert_to_DER_cert(crt.read_text())
        assert metrics.certificate_not_after(der) == not_after(crt)
