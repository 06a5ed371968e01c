"""``milter review`` as a real process: HTTPS from ``review.tls``, under
``review.base_path``, with the cookie marked Secure."""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from tests.conftest import ROOT, free_port, wait_port


def test_review_serves_https_under_its_base_path(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                        "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "listen": [f"127.0.0.1:{free_port()}"],
        "quarantine": {"database": f"sqlite:///{tmp_path}/q.sqlite3",
                       "spool": str(tmp_path / "spool")},
        "review": {"listen": f"127.0.0.1:{port}", "base_path": "/karantina",
                   "tls": {"cert": str(cert), "key": str(key)}},
    }))
    log = tmp_path / "review.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "milter", "-c", str(config), "review"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_port(port, proc=proc)
            context = ssl.create_default_context(cafile=str(cert))
            base = f"https://127.0.0.1:{port}"
            with urllib.request.urlopen(f"{base}/karantina/login", context=context,
                                        timeout=10) as page:
                assert page.status == 200
                cookie = page.headers["Set-Cookie"]
                assert "Secure" in cookie and "HttpOnly" in cookie and "Path=/karantina" in cookie
                assert "max-age" in page.headers["Strict-Transport-Security"]
                assert 'action="/karantina/login"' in page.read().decode()
            with urllib.request.urlopen(f"{base}/karantina/healthz", context=context,
                                        timeout=10) as health:
                assert health.read() == b"ok"
            try:
                urllib.request.urlopen(f"{base}/login", context=context, timeout=10)
                raise AssertionError("a page outside the base path answered")
            except urllib.error.HTTPError as exc:
                assert exc.code == 404
        finally:
            proc.send_signal(signal.SIGTERM)
            # uvicorn shuts down cleanly, then re-raises the signal it caught (systemd
            # counts a SIGTERM end as a clean stop).
            assert proc.wait(15) in (0, -signal.SIGTERM)
    text = log.read_text()
    assert "Traceback" not in text and "Finished server process" in text
