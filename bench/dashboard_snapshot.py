"""Draw deploy/grafana/milter-dashboard.png from a real gateway under a bounded load.

Grafana is packaged neither by Debian 12 nor on PyPI, so the picture in the README is
drawn here instead: a real ``milter serve`` (two workers, the shipped policy, a
STARTTLS sanapati route) is scraped every second by a real Prometheus (Debian's
``prometheus`` package), while client threads send a mix of ordinary, classified,
unscannable and forbidden mail for ``--seconds``. Halfway through, the sanapati relay
stops offering STARTTLS for a while, as a misconfigured relay would. Afterwards every
panel's own query from the dashboard JSON is evaluated by that Prometheus over the run
and drawn with matplotlib in the dashboard's layout.

    .venv/bin/python -m bench.dashboard_snapshot --seconds 90
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import yaml
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "milter-dashboard.json"
OUTPUT = ROOT / "deploy" / "grafana" / "milter-dashboard.png"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


class Counting:
    """An upstream that accepts everything."""

    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 2.0.0 Ok"


def mail(subject: str, to: str, attachment: tuple[str, bytes] | None = None) -> bytes:
    m = EmailMessage()
    m["From"] = "budi@dinas.jakarta.go.id"
    m["To"] = to
    m["Subject"] = subject
    m.set_content("Selamat pagi.\n\n" + "Laporan kegiatan mingguan dinas. " * 40)
    if attachment:
        m.add_attachment(attachment[1], maintype="application", subtype="octet-stream",
                         filename=attachment[0])
    return m.as_bytes()


def truncated_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("data.csv", "nama,nik\n" * 200)
    return buf.getvalue()[:80]


EXE = b"MZ\x90\x00" + b"\x00" * 60 + b"PE\x00\x00" + b"\x00" * 200
# (weight, recipient, message): what an agency sends on an ordinary day, roughly.
MIX = [
    (55, "sari@example.org", mail("Undangan rapat", "sari@example.org")),
    (15, "ani@bpkd.jakarta.go.id", mail("[RAHASIA] Nota dinas", "ani@bpkd.jakarta.go.id")),
    (8, "sari@example.org", mail("[RAHASIA] Nota dinas", "sari@example.org")),
    (6, "kepala@bssn.sanapati.net", mail("[SANGAT RAHASIA] Nota", "kepala@bssn.sanapati.net")),
    (5, "sari@example.org", mail("Data", "sari@example.org", ("data.zip", truncated_zip()))),
    (3, "sari@example.org", mail("Alat", "sari@example.org", ("setup.exe", EXE))),
    (3, "kabag@kemendagri.go.id", mail("[TERBATAS] Surat", "kabag@kemendagri.go.id")),
]


def load(port: int, until: float, stats: dict[str, int], seed: int) -> None:
    rnd = random.Random(seed)
    weights = [w for w, _, _ in MIX]
    client: smtplib.SMTP | None = None
    while time.monotonic() < until:
        _, rcpt, data = rnd.choices(MIX, weights)[0]
        try:
            if client is None:
                client = smtplib.SMTP("127.0.0.1", port, timeout=60)
            client.sendmail("budi@dinas.jakarta.go.id", [rcpt], data)
            stats["sent"] += 1
        except smtplib.SMTPResponseException as exc:
            stats[str(exc.smtp_code)[0] + "xx"] = stats.get(str(exc.smtp_code)[0] + "xx", 0) + 1
            if client is not None:
                try:
                    client.rset()
                except smtplib.SMTPException:
                    client = None
        except (OSError, smtplib.SMTPException):
            client = None
        time.sleep(rnd.uniform(0.0, 0.05))
    if client is not None:
        client.quit()


def certificate(directory: Path) -> ssl.SSLContext:
    key, crt = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-days", "45", "-subj", "/CN=relay.sanapati.test"],
                   check=True, capture_output=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(crt), str(key))
    return ctx


def query_range(prom: int, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 1})
    with urllib.request.urlopen(f"http://127.0.0.1:{prom}/api/v1/query_range?{q}") as r:
        body = json.load(r)
    return list(body["data"]["result"])


def legend(fmt: str, labels: dict[str, str]) -> str:
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v or "-")
    return out


def human(value: float, unit: str) -> str:
    if unit == "s":
        for size, name in ((86400, "d"), (3600, "h"), (60, "min")):
            if value >= size:
                return f"{value / size:.1f} {name}"
        return f"{value:.3g} s"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    return f"{value:.4g}"


def draw(prom: int, start: float, end: float, rate_interval: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(24, height * 0.42), facecolor="#111217")
    grid = GridSpec(height, 24, figure=fig, hspace=2.2, wspace=1.2, top=0.97, bottom=0.02,
                    left=0.02, right=0.99)
    variables = {"$__rate_interval": rate_interval, "$__range": f"{int(end - start)}s",
                 "$instance": ".*"}
    for p in panels:
        pos = p["gridPos"]
        ax = fig.add_subplot(grid[pos["y"]: pos["y"] + pos["h"], pos["x"]: pos["x"] + pos["w"]])
        ax.set_facecolor("#181b1f")
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.tick_params(colors="#ccccdc", labelsize=7)
        if p["type"] == "row":
            ax.axis("off")
            ax.text(0, 0.5, p["title"], color="#ccccdc", fontsize=13, weight="bold",
                    transform=ax.transAxes, va="center")
            continue
        ax.set_title(p["title"], color="#ccccdc", fontsize=10, loc="left")
        unit = p["fieldConfig"]["defaults"].get("unit", "short")
        series = []
        for t in p["targets"]:
            expr = t["expr"]
            for var, val in variables.items():
                expr = expr.replace(var, val)
            for r in query_range(prom, expr, start, end):
                xs = [float(v[0]) - start for v in r["values"]]
                ys = [float(v[1]) for v in r["values"]]
                ys = [y if math.isfinite(y) else float("nan") for y in ys]
                series.append((legend(t["legendFormat"], r["metric"]), xs, ys))
        if p["type"] == "stat":
            ax.set_xticks([])
            ax.set_yticks([])
            if series:
                name, xs, ys = series[0]
                ax.plot(xs, ys, color="#73bf69", alpha=0.4)
                last = next((y for y in reversed(ys) if not math.isnan(y)), 0.0)
                text = "\n".join(
                    f"{n}: {human(next((y for y in reversed(v) if not math.isnan(y)), 0.0), unit)}"
                    for n, _, v in series
                ) if len(series) > 1 else human(last, unit)
                ax.text(0.5, 0.5, text, color="#73bf69", fontsize=20 if len(series) == 1 else 11,
                        weight="bold", ha="center", va="center", transform=ax.transAxes)
            continue
        if p["type"] == "bargauge":
            names = [s[0] for s in series]
            values = [next((y for y in reversed(s[2]) if not math.isnan(y)), 0.0) for s in series]
            ax.barh(names, values, color="#5794f2")
            ax.invert_yaxis()
            continue
        for name, xs, ys in series:
            ax.plot(xs, ys, linewidth=1.2, label=name)
        ax.set_xlabel("seconds into the run", color="#8e8e8e", fontsize=7)
        ax.grid(color="#2c3235", linewidth=0.5)
        if series:
            ax.legend(fontsize=6, loc="upper left", ncol=2, facecolor="#181b1f",
                      labelcolor="#ccccdc", edgecolor="#2c3235")
        else:
            ax.text(0.5, 0.5, "no data", color="#8e8e8e", ha="center", transform=ax.transAxes)
    fig.suptitle(f"{dash['title']} (real gateway, 2 workers, {int(end - start)} s of load; "
                 "queries from milter-dashboard.json evaluated by Prometheus)",
                 color="#ccccdc", fontsize=14, x=0.02, y=0.995, ha="left")
    fig.savefig(OUTPUT, dpi=70, facecolor=fig.get_facecolor(), bbox_inches="tight")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    if not Path(PROMETHEUS).exists():
        print("needs Prometheus: apt-get install prometheus", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="milter-snapshot-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upstream = Counting()
        up_port, sec_port, smtp_port, metrics_port, prom_port = (free_port() for _ in range(5))
        up = Controller(upstream, hostname="127.0.0.1", port=up_port)
        up.start()
        tls = certificate(work)
        secure = Counting()
        sanapati = Controller(secure, hostname="127.0.0.1", port=sec_port, tls_context=tls)
        sanapati.start()
        config = {
            "listen": [f"127.0.0.1:{smtp_port}"], "hostname": "gw1.jakarta.go.id",
            "clients": ["127.0.0.0/8"], "workers": 2, "metrics": f"127.0.0.1:{metrics_port}",
            "upstream": f"smtp://127.0.0.1:{up_port}",
            "routes": {"sanapati": {"url": f"smtp://127.0.0.1:{sec_port}", "tls": "required"}},
            "policy": str(ROOT / "policies" / "se-79-2019.yaml"),
            "quarantine": {"database": f"sqlite:///{work}/q.sqlite3", "spool": str(work / "spool")},
            "notices": {
                "from": "postmaster@jakarta.go.id",
                "officers": ["kepatuhan@jakarta.go.id"],
            },
            "log_level": "WARNING",
        }
        (work / "gateway.yaml").write_text(yaml.safe_dump(config))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "milter", "-c", str(work / "gateway.yaml"), "serve"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(work / "gateway.log", "wb")))  # noqa: SIM115
        wait_port(smtp_port)
        wait_port(metrics_port)
        (work / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "milter", "static_configs": [
                {"targets": [f"127.0.0.1:{metrics_port}"], "labels": {"instance": "gw1"}}]}],
        }))
        procs.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={work}/prometheus.yml",
             f"--storage.tsdb.path={work}/tsdb", f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(prom_port)
        time.sleep(3)  # a few scrapes of the idle gateway: the series start at zero
        start = time.time()
        until = time.monotonic() + args.seconds
        stats: dict[str, int] = {"sent": 0}
        clients = [threading.Thread(target=load, args=(smtp_port, until, stats, i))
                   for i in range(args.clients)]
        for c in clients:
            c.start()
        # The incident: from 40% to 60% of the run the relay offers no STARTTLS.
        time.sleep(args.seconds * 0.4)
        sanapati.stop()
        plain = Controller(secure, hostname="127.0.0.1", port=sec_port)
        plain.start()
        time.sleep(args.seconds * 0.2)
        plain.stop()
        sanapati = Controller(secure, hostname="127.0.0.1", port=sec_port, tls_context=tls)
        sanapati.start()
        for c in clients:
            c.join()
        time.sleep(5)
        end = time.time()
        draw(prom_port, start - 3, end, "5s")
        print(f"{stats} upstream={upstream.count} sanapati={secure.count} -> {OUTPUT}")
        up.stop()
        sanapati.stop()
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        if not os.environ.get("KEEP"):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
