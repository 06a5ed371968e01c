"""The Grafana dashboard and the Prometheus alert rules under deploy/, checked for real.

``promtool`` (Debian's ``prometheus`` package) parses every rule and runs the alert
unit tests; every query of the dashboard is parsed by promtool too, as a recording
rule; and every metric any of them names must be one a running gateway exports, so a
renamed metric cannot leave a panel or an alert silently empty.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, Sink, free_port, wait_port
from tests.test_metrics import POLICY, TlsSink, cert, tls_sink  # noqa: F401 - fixtures

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
RULES = ROOT / "deploy" / "prometheus" / "milter-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "milter-alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "milter-dashboard.json"
# Grafana's variables, as Grafana substitutes them, so the query is PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$instance": ".*"}
# Series Prometheus itself makes for every scrape target.
PROMETHEUS_SERIES = {"up"}
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
}

needs_promtool = pytest.mark.skipif(
    not Path(PROMTOOL).exists(), reason="promtool is not installed (Debian package prometheus)"
)


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_exprs() -> list[str]:
    out = []
    for p in dashboard()["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"]
            for var, val in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, val)
            out.append(expr)
    return out


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects: what is left once strings, label
    matchers, ranges, grouping clauses and function calls are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = m.group(0)
        if text[m.end():].lstrip().startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


@needs_promtool
def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"milter_dashboard:query_{i}", "expr": expr}
        for i, expr in enumerate(dashboard_exprs())
    ]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dashboard_is_a_grafana_model() -> None:
    d = dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "instance"} <= names
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, p["title"]
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"])
            assert p["datasource"]["uid"] == "${datasource}"


def test_every_metric_named_is_exported_by_a_real_gateway(
    gateway_factory: Any, tmp_path: Path, sink: Sink, tls_sink: TlsSink  # noqa: F811
) -> None:
    mport = free_port()
    gateway_factory(
        upstream=f"smtp://127.0.0.1:{sink.port}",
        routes={"sanapati": {"url": f"smtp://127.0.0.1:{tls_sink.port}", "tls": "required"}},
        policy=str(POLICY), notices={"enabled": False}, metrics=f"127.0.0.1:{mport}",
        workers=2,
    )
    wait_port(mport)
    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as r:
        text = r.read().decode()
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    used: dict[str, set[str]] = {}
    for where, exprs in (("dashboard", dashboard_exprs()), ("alerts", rule_exprs())):
        for expr in exprs:
            names = metric_names(expr)
            assert names, f"{where}: no metric in {expr!r}"
            for name in names:
                used.setdefault(name, set()).add(where)
    missing = {n: w for n, w in used.items() if n not in exported | PROMETHEUS_SERIES}
    assert not missing, f"not exported by the gateway: {missing}"
    # The operator's questions each have a panel and the important ones an alert.
    for name in ("milter_quarantine_held_messages", "milter_quarantine_oldest_held_age_seconds",
                 "milter_rule_hits_total", "milter_clause_hits_total", "milter_notices_total",
                 "milter_quarantine_write_errors_total", "milter_unscannable_messages_total",
                 "milter_ocr_messages_total", "milter_nexthop_tls_failures_total",
                 "milter_route_certificate_expiry_timestamp_seconds",
                 "milter_stage_seconds_bucket"):
        assert "dashboard" in used.get(name, set()), name
    for name in ("milter_quarantine_oldest_held_age_seconds", "milter_notices_total",
                 "milter_quarantine_write_errors_total", "milter_nexthop_tls_failures_total",
                 "milter_route_certificate_expiry_timestamp_seconds"):
        assert "alerts" in used.get(name, set()), name


def test_metric_names_are_read_from_promql() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, stage) (rate(milter_stage_seconds_bucket'
            '{stage="delivery", route=~"a|b"}[5m]))) > 1 and on (route) up == 0')
    assert metric_names(expr) == {"milter_stage_seconds_bucket", "up"}
