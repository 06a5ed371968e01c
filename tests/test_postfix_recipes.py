"""The three Postfix recipes of examples/postfix/, each behind a real Postfix.

For every recipe: a private Postfix (tests/postfixlab.py) with the recipe's main.cf
and master.cf lines applied, a real gateway with the recipe's gateway-*.yaml (ports,
paths and routes adapted), the in-test upstream ``sink`` as Postfix's relayhost and
a second sink as the ``sanapati`` route; swaks (or smtplib, for what swaks cannot
say) is the client, binding to 127.0.0.2 so that what Postfix saw of the client
differs from what the gateway sees of Postfix.

Contract assumed of the milter front-end and of the origin fields (not all landed):
  * gateway configuration ``milter: {listen: ["inet:HOST:PORT"]}`` with ``listen: []``;
  * ``quarantine list --json`` entries carry ``frontend`` ("milter" or "smtp"),
    ``client_address`` and ``client_name`` (as Postfix saw the client: milter macros
    or XFORWARD), ``login`` (SASL login, ``{auth_authen}``) and ``queue_id``
    (Postfix's queue id: macro ``i``, or XFORWARD IDENT after the queue);
  * the milter front-end removes held and sanapati-routed recipients from Postfix's
    envelope and delivers the sanapati copy itself; Postfix delivers the rest.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import smtplib
import socketserver
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, GatewayProcess, Received, Sink, free_port
from tests.postfixlab import (
    PostfixLab,
    have_postfix,
    port_open,
    postfix_lab_factory,
    wait_until,
)

pytestmark = pytest.mark.skipif(not have_postfix(), reason="/usr/sbin/postfix is not installed")

RECIPES_DIR = ROOT / "examples" / "postfix"
POLICY = str(ROOT / "policies" / "se-79-2019.yaml")
RECIPES = ["milter", "proxy", "content_filter"]
SENDER = "budi@dinas.jakarta.go.id"
CLIENT_ADDR = "127.0.0.2"
SASL_USER, SASL_PASSWORD = "budi", "sandi-lab-7"
EXE = (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + b"\x00" * 50
       + b"PE\x00\x00L\x01" + b"\x00" * 200)
# The shipped policy's refusal of executables, in both languages.
EXE_REFUSAL = ("tidak boleh dikirim", "are not allowed")


# -- the pieces -----------------------------------------------------------------


def recipe_files(recipe: str) -> list[Path]:
    """The Postfix files of a recipe, main.cf first."""
    return [p for p in (RECIPES_DIR / f"{recipe}.main.cf", RECIPES_DIR / f"{recipe}.master.cf")
            if p.exists()]


class RecipeGateway(GatewayProcess):
    """``milter serve`` with a complete configuration given by the test; its port is
    the milter port when the SMTP proxy is off."""

    def __init__(self, tmp: Path, cfg: dict[str, Any]) -> None:
        self.tmp = tmp
        milter_listen = (cfg.get("milter") or {}).get("listen") or []
        first = cfg["listen"][0] if cfg["listen"] else milter_listen[0]
        self.port = int(str(first).rsplit(":", 1)[1])
        self.config_path = tmp / f"gateway-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.log_path = tmp / f"gateway-{self.port}.log"
        self.proc = None

    def start(self) -> RecipeGateway:
        """Start, and fail at once (with its log) when the gateway exits instead."""
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "milter", "-c", str(self.config_path),
                                      "serve"], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=ROOT)
        try:
            wait_until(f"the gateway on port {self.port}", self._up, 20.0)
        except (TimeoutError, RuntimeError) as exc:
            self.stop()
            raise RuntimeError(f"{exc}\n{self.log()}") from None
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {self.proc.returncode}")
        return port_open(self.port)


class SaslHandler(socketserver.StreamRequestHandler):
    """Postfix's Dovecot SASL protocol (smtpd_sasl_type = dovecot), server side:
    PLAIN for one user. Postfix speaks it over TCP as well as over a UNIX socket."""

    def handle(self) -> None:
        self.wfile.write(b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nSPID\t1\nCUID\t1\n"
                         b"COOKIE\t0123456789abcdef0123456789abcdef\nDONE\n")
        for raw in self.rfile:
            fields = raw.decode().rstrip("\n").split("\t")
            if fields[0] != "AUTH":
                continue
            rid = fields[1]
            resp = next((f[5:] for f in fields if f.startswith("resp=")), None)
            if resp is None:
                self.wfile.write(f"CONT\t{rid}\t\n".encode())
                line = self.rfile.readline().decode().rstrip("\n").split("\t")
                resp = line[2] if len(line) > 2 else ""
            try:
                _, user, password = base64.b64decode(resp).decode().split("\0")
            except ValueError:
                user, password = "", ""
            if (user, password) == (SASL_USER, SASL_PASSWORD):
                self.wfile.write(f"OK\t{rid}\tuser={user}\n".encode())
            else:
                self.wfile.write(f"FAIL\t{rid}\tuser={user}\treason=bad password\n".encode())
            self.wfile.flush()


@dataclass
class Deployment:
    recipe: str
    lab: PostfixLab
    gateway: RecipeGateway
    sink: Sink        # Postfix's relayhost: where the mail Postfix delivers arrives
    secure: Sink      # the gateway's sanapati route

    @property
    def port(self) -> int:
        return self.lab.smtpd_port

    def held(self) -> list[dict[str, Any]]:
        r = subprocess.run([sys.executable, "-m", "milter", "-c", str(self.gateway.config_path),
                            "quarantine", "list", "--json"], capture_output=True, text=True,
                           cwd=ROOT, timeout=30)
        assert r.returncode == 0, r.stderr
        try:
            return list(json.loads(r.stdout))
        except json.JSONDecodeError as exc:
            raise AssertionError(f"quarantine list --json printed no JSON ({exc}):\n"
                                 f"{r.stdout[:2000]}") from None

    def wait_held(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []

        def enough() -> bool:
            found[:] = self.held()
            return len(found) >= count

        wait_until(f"{count} message(s) in quarantine", enough, timeout, self.detail)
        return found

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until Postfix has nothing left to deliver (every copy that will
        arrive has arrived)."""
        self.lab.wait_queue_empty(timeout)

    def delivered(self, rcpt: str | None = None) -> list[Received]:
        """What Postfix delivered to the relayhost with a real sender (not notices,
        bounces or DSNs), optionally only copies for ``rcpt``."""
        return [m for m in self.sink.messages
                if m.mail_from not in ("", "<>") and (rcpt is None or rcpt in m.rcpt_tos)]

    def detail(self) -> str:
        return (f"--- Postfix log ---\n{self.lab.log()[-3000:]}\n"
                f"--- gateway log ---\n{self.gateway.log()[-3000:]}")


@dataclass
class Reply:
    code: int
    text: str
    transcript: str


def message(subject: str, to: str = "sari@gmail.com", body: str = "Isi pesan.",
            attachment: tuple[str, bytes] | None = None) -> bytes:
    m = EmailMessage()
    m["From"] = SENDER
    m["To"] = to
    m["Subject"] = subject
    m["Message-ID"] = f"<{abs(hash(subject))}@dinas.jakarta.go.id>"
    m.set_content(body)
    if attachment:
        name, data = attachment
        m.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return m.as_bytes()


def swaks(dep: Deployment, rcpts: list[str], data: bytes, *extra: str) -> Reply:
    """One ESMTP transaction by swaks from 127.0.0.2; the reply to the final dot."""
    path = dep.gateway.tmp / f"swaks-{abs(hash(data))}.eml"
    path.write_bytes(data)
    r = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(dep.port),
                        "--local-interface", CLIENT_ADDR, "--protocol", "ESMTP",
                        "--ehlo", "pc-budi.dinas.jakarta.go.id", "--from", SENDER,
                        "--to", ",".join(rcpts), "--data", str(path), "--timeout", "120",
                        *extra], capture_output=True, text=True, timeout=180)
    out = r.stdout + r.stderr
    lines = out.splitlines()
    try:
        start = max(i for i, x in enumerate(lines) if x.strip() == "-> .")
    except ValueError:
        raise AssertionError(f"swaks did not reach the end of DATA:\n{out}\n"
                             f"{dep.detail()}") from None
    reply: list[str] = []
    for x in lines[start + 1:]:
        m = re.match(r"^<(?:-|\*\*)\s+(\d{3})([- ])(.*)$", x)
        if not m:
            continue
        reply.append(m.group(3))
        if m.group(2) == " ":
            return Reply(int(m.group(1)), " ".join(reply), out)
    raise AssertionError(f"no reply to the end of DATA:\n{out}\n{dep.detail()}")


def queue_id_of(reply: Reply) -> str:
    m = re.search(r"queued as ([0-9A-Za-z]+)", reply.text)
    assert m, reply.text
    return m.group(1)


# -- fixtures -------------------------------------------------------------------


@pytest.fixture
def postfix_lab() -> Iterator[Callable[..., PostfixLab]]:
    """A factory of private Postfix instances (not started); all are stopped and
    removed after the test, whatever its outcome."""
    with postfix_lab_factory() as make:
        yield make


@pytest.fixture
def secure_sink() -> Iterator[Sink]:
    s = Sink()
    s.controller.start()
    yield s
    s.controller.stop()


@contextlib.contextmanager
def sasl_server() -> Iterator[int]:
    """The Dovecot-protocol SASL server on a free port; yields the port."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), SaslHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def gateway_config(recipe: str, tmp: Path, *, gw_port: int, milter_port: int,
                   reinject_port: int, secure_port: int) -> dict[str, Any]:
    """The recipe's gateway-*.yaml with the test's ports, policy and state paths."""
    cfg: dict[str, Any] = yaml.safe_load((RECIPES_DIR / f"gateway-{recipe}.yaml").read_text())
    if cfg.get("listen"):
        cfg["listen"] = [f"127.0.0.1:{gw_port}"]
    if cfg.get("milter"):
        cfg["milter"] = {"listen": [f"inet:127.0.0.1:{milter_port}"]}
    assert cfg["upstream"] == "smtp://127.0.0.1:10025"
    cfg["upstream"] = f"smtp://127.0.0.1:{reinject_port}"
    cfg["routes"] = {"sanapati": {"url": f"smtp://127.0.0.1:{secure_port}", "tls": "none"}}
    cfg["policy"] = POLICY
    cfg["quarantine"] = {"database": f"sqlite:///{tmp}/q.sqlite3", "spool": str(tmp / "spool")}
    cfg["workers"] = 1
    cfg["shutdown_grace"] = "5s"
    return cfg


@pytest.fixture(params=RECIPES)
def deployed(request: pytest.FixtureRequest, postfix_lab: Callable[..., PostfixLab],
             sink: Sink, secure_sink: Sink, tmp_path: Path) -> Iterator[Deployment]:
    recipe: str = request.param
    gw_port, milter_port, reinject_port = free_port(), free_port(), free_port()
    gw = RecipeGateway(tmp_path, gateway_config(
        recipe, tmp_path, gw_port=gw_port, milter_port=milter_port,
        reinject_port=reinject_port, secure_port=secure_sink.port))
    lab = postfix_lab(relay_port=sink.port, name=recipe)
    ports: dict[str, int | str] = {
        "inet:127.0.0.1:8890": milter_port, "127.0.0.1:2525": gw_port,
        "[127.0.0.1]:2525": gw_port, "127.0.0.1:10025": reinject_port,
        "submission": f"127.0.0.1:{lab.smtpd_port}"}
    for path in recipe_files(recipe):
        if path.name.endswith(".main.cf"):
            lab.set_main(path.read_text(), ports)
        else:
            lab.add_master(path.read_text(), ports)
    with contextlib.ExitStack() as stack:
        # SASL on the client-facing smtpd, so that the login can travel to the gateway.
        sasl_port = stack.enter_context(sasl_server())
        lab.set_main({"smtpd_sasl_auth_enable": "yes", "smtpd_sasl_type": "dovecot",
                      "smtpd_sasl_path": f"inet:127.0.0.1:{sasl_port}"})
        stack.callback(gw.stop)
        stack.callback(lab.stop)   # callbacks run last-in first-out: Postfix first

        gw.start()
        lab.start()
        lab.wait_listening(reinject_port)
        yield Deployment(recipe, lab, gw, sink, secure_sink)


# -- the tests ------------------------------------------------------------------


def test_recipe_files_are_complete() -> None:
    for recipe in RECIPES:
        assert recipe_files(recipe), recipe
        assert (RECIPES_DIR / f"gateway-{recipe}.yaml").exists(), recipe
    proxy = (RECIPES_DIR / "proxy.master.cf").read_text()
    assert "smtpd_proxy_filter=127.0.0.1:2525" in proxy
    assert "content_filter = milter:[127.0.0.1]:2525" in \
        (RECIPES_DIR / "content_filter.main.cf").read_text()
    assert "smtpd_milters = inet:127.0.0.1:8890" in (RECIPES_DIR / "milter.main.cf").read_text()


def test_readme_shows_recipes() -> None:
    """README.md shows every recipe file exactly as shipped, so a paste works."""
    readme = (ROOT / "README.md").read_text()
    for path in sorted(RECIPES_DIR.glob("*.cf")) + sorted(RECIPES_DIR.glob("gateway-*.yaml")):
        assert path.read_text() in readme, f"README.md does not show {path.name} verbatim"


def test_clean_message_is_delivered_once(deployed: Deployment) -> None:
    reply = swaks(deployed, ["sari@gmail.com"], message("Undangan rapat koordinasi"))
    assert reply.code == 250, reply.transcript
    deployed.sink.wait_for(1, timeout=30)
    deployed.settle()
    got = deployed.delivered()
    assert len(got) == 1, deployed.detail()
    assert got[0].rcpt_tos == ["sari@gmail.com"]
    assert b"Subject: Undangan rapat koordinasi" in got[0].data
    assert deployed.secure.messages == []


def test_rahasia_to_outside_is_held_and_client_gets_250(deployed: Deployment) -> None:
    reply = swaks(deployed, ["sari@gmail.com"], message("[RAHASIA] Nota dinas anggaran"))
    assert reply.code == 250, reply.transcript
    [held] = deployed.wait_held(1)
    assert held["recipients"] == ["sari@gmail.com"]
    assert held["classification"] == "RAHASIA"
    deployed.settle()
    assert deployed.delivered("sari@gmail.com") == [], deployed.detail()


def test_executable_is_refused_with_the_bilingual_text(deployed: Deployment) -> None:
    data = message("Aplikasi", to="adi@dinas.jakarta.go.id", attachment=("setup.pdf", EXE))
    reply = swaks(deployed, ["adi@dinas.jakarta.go.id"], data)
    if deployed.recipe == "content_filter":
        # After the queue Postfix has already said 250; the gateway's 550 to Postfix's
        # "milter" transport becomes a bounce to the sender, carrying the text.
        assert reply.code == 250, reply.transcript
        deployed.lab.wait_log(r"status=bounced .*5\.7\.1", timeout=30)
        deployed.settle()
        bounces = [m for m in deployed.sink.messages
                   if m.mail_from in ("", "<>") and SENDER in m.rcpt_tos]
        assert bounces, deployed.detail()
        text = re.sub(rb"\s+", b" ", bounces[0].data).decode(errors="replace")
        assert all(t in text for t in EXE_REFUSAL), text[:3000]
    else:
        assert reply.code == 550, reply.transcript
        assert "5.7.1" in reply.text
        assert all(t in reply.text for t in EXE_REFUSAL), reply.text
        deployed.settle()
    assert deployed.delivered() == [], deployed.detail()


def test_sanapati_recipient_goes_through_the_route(deployed: Deployment) -> None:
    reply = swaks(deployed, ["tim@sanapati.net"], message("[RAHASIA] Nota", to="tim@sanapati.net"))
    assert reply.code == 250, reply.transcript
    [secure] = deployed.secure.wait_for(1, timeout=30)
    assert secure.rcpt_tos == ["tim@sanapati.net"]
    assert b"X-Klasifikasi: RAHASIA\r\n" in secure.data
    deployed.settle()
    assert deployed.delivered("tim@sanapati.net") == [], deployed.detail()


def test_dsn_parameters_survive(deployed: Deployment) -> None:
    """RET/ENVID/NOTIFY from the client: the message is delivered, and the success
    notification Postfix sends at the end of the path names the client's ENVID (so
    the parameters travelled through the gateway into Postfix's queue). swaks
    20201014 has no DSN options: smtplib speaks for the client here."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", deployed.port, timeout=120,
                      source_address=(CLIENT_ADDR, 0)) as s:
        s.ehlo("pc-budi.dinas.jakarta.go.id")
        assert s.has_extn("dsn")
        refused = s.sendmail(SENDER, ["sari@gmail.com"], message("Laporan DSN"),
                             mail_options=["RET=HDRS", "ENVID=x"],
                             rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
        assert refused == {}
    deployed.sink.wait_for(2, timeout=30)
    deployed.settle()
    got = deployed.delivered()
    assert [m.rcpt_tos for m in got] == [["sari@gmail.com"]], deployed.detail()
    notices = [m for m in deployed.sink.messages
               if m.mail_from in ("", "<>") and SENDER in m.rcpt_tos]
    # The notice of the last hop (the relayhost answers "queued as SINK1"), not one
    # Postfix may write when it hands the message to the gateway.
    final = [m for m in notices if b"queued as SINK1" in m.data]
    assert len(final) == 1, deployed.detail()
    assert b"Original-Envelope-Id: x" in final[0].data
    assert b"Action: relayed" in final[0].data
    assert b"text/rfc822-headers" in final[0].data     # RET=HDRS


def test_mixed_recipients_split(deployed: Deployment) -> None:
    rcpts = ["adi@bpkd.jakarta.go.id", "sari@gmail.com", "tim@sanapati.net"]
    reply = swaks(deployed, rcpts, message("[RAHASIA] Nota dinas", to=", ".join(rcpts)))
    assert reply.code == 250, reply.transcript
    [held] = deployed.wait_held(1)
    assert held["recipients"] == ["sari@gmail.com"]
    [secure] = deployed.secure.wait_for(1, timeout=30)
    assert secure.rcpt_tos == ["tim@sanapati.net"]
    assert b"X-Klasifikasi: RAHASIA\r\n" in secure.data
    deployed.sink.wait_for(1, timeout=30)
    deployed.settle()
    got = deployed.delivered()
    assert [m.rcpt_tos for m in got] == [["adi@bpkd.jakarta.go.id"]], deployed.detail()
    assert b"X-Klasifikasi" not in got[0].data


def test_hold_records_where_the_message_came_from(deployed: Deployment) -> None:
    """The quarantine names the client as Postfix saw it (127.0.0.2), not Postfix;
    with the milter also the SASL login and Postfix's queue id."""
    extra = ["--auth", "PLAIN", "--auth-user", SASL_USER, "--auth-password", SASL_PASSWORD]
    reply = swaks(deployed, ["sari@gmail.com"], message("[RAHASIA] Nota asal"), *extra)
    assert reply.code == 250, reply.transcript
    [held] = deployed.wait_held(1)
    assert held["client_address"] == CLIENT_ADDR, held
    if deployed.recipe == "milter":
        assert held["frontend"] == "milter"
        assert held["login"] == SASL_USER
        assert held["queue_id"] == queue_id_of(reply)
    else:
        assert held["frontend"] == "smtp"
    if deployed.recipe == "content_filter":
        # XFORWARD IDENT: the queue id the client was given.
        assert held["queue_id"] == queue_id_of(reply)


def test_gateway_down_loses_nothing_and_delivers_once(deployed: Deployment) -> None:
    """The gateway killed: before the queue (milter, proxy) Postfix answers 4xx and the
    client keeps the message; after the queue Postfix keeps it deferred. Once the
    gateway is back, the message arrives exactly once."""
    assert deployed.gateway.proc is not None
    deployed.gateway.proc.kill()
    deployed.gateway.proc.wait(10)
    data = message("Laporan harian", to="sari@example.org")
    if deployed.recipe == "content_filter":
        reply = swaks(deployed, ["sari@example.org"], data)
        assert reply.code == 250, reply.transcript  # queued by Postfix
        # Postfix tried the gateway and kept the message: the event, not a pause.
        wait_until("Postfix deferring the message", lambda: "status=deferred" in
                   deployed.lab.log(), 60, deployed.detail)
    else:
        # Refused with a 4xx at whichever step Postfix noticed: MAIL (milter
        # unreachable at connect), or the end of DATA (the proxy filter).
        with (
            smtplib.SMTP("127.0.0.1", deployed.port, timeout=60,
                         source_address=(CLIENT_ADDR, 0)) as smtp,
            pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPDataError,
                           smtplib.SMTPRecipientsRefused)) as refused,
        ):
            smtp.sendmail(SENDER, ["sari@example.org"], data)
        error = refused.value
        code = (error.smtp_code if not isinstance(error, smtplib.SMTPRecipientsRefused)
                else next(iter(error.recipients.values()))[0])
        assert 400 <= code < 500, error
    assert deployed.delivered("sari@example.org") == []
    deployed.gateway.start()
    if deployed.recipe == "content_filter":
        deployed.lab.flush()
    else:
        reply = swaks(deployed, ["sari@example.org"], data)  # the client's retry
        assert reply.code == 250, reply.transcript
    deployed.sink.wait_for(1, timeout=60)
    deployed.settle(60)
    got = deployed.delivered("sari@example.org")
    assert len(got) == 1, deployed.detail()


REWRITE_POLICY = """\
version: 1
domains:
  internal: [jakarta.go.id, "*.jakarta.go.id"]
rules:
  - name: tandai-internal
    clause: "2.c"
    when: {recipient: {in: internal}}
    then:
      - subject_prefix: "[DIPERIKSA]"
      - add_header: {name: X-Diperiksa, value: "ya"}
      - remove_header: X-Mailer
      - disclaimer: "Surel ini telah diperiksa / This message was checked."
"""


def test_milter_rewrites_and_signature_arrive_through_postfix(
    postfix_lab: Callable[..., PostfixLab], sink: Sink, secure_sink: Sink, tmp_path: Path
) -> None:
    """The milter recipe with rewrites and DKIM: Postfix applies the gateway's header
    edits and body replacement to its own copy, and the signature still verifies."""
    import dkim

    from milter.actions.dkim import keygen, public_txt

    key_path, _ = keygen("dinas.jakarta.go.id", "gw1", tmp_path)
    policy = tmp_path / "rewrite.yaml"
    policy.write_text(REWRITE_POLICY)
    milter_port, reinject_port = free_port(), free_port()
    cfg = gateway_config("milter", tmp_path, gw_port=free_port(), milter_port=milter_port,
                         reinject_port=reinject_port, secure_port=secure_sink.port)
    cfg["policy"] = str(policy)
    cfg["dkim"] = [{"domain": "dinas.jakarta.go.id", "selector": "gw1", "key_file": key_path}]
    gw = RecipeGateway(tmp_path, cfg)
    lab = postfix_lab(relay_port=sink.port, name="rewrite")
    ports: dict[str, int | str] = {"inet:127.0.0.1:8890": milter_port,
                                   "127.0.0.1:10025": reinject_port}
    for path in recipe_files("milter"):
        if path.name.endswith(".main.cf"):
            lab.set_main(path.read_text(), ports)
        else:
            lab.add_master(path.read_text(), ports)
    try:
        gw.start()
        lab.start()
        data = message("Laporan mingguan", to="andi@bpkd.jakarta.go.id").replace(
            b"\nSubject:", b"\nX-Mailer: Outlook 16\nSubject:", 1
        )
        with smtplib.SMTP("127.0.0.1", lab.smtpd_port, timeout=60,
                          source_address=(CLIENT_ADDR, 0)) as smtp:
            smtp.sendmail(SENDER, ["andi@bpkd.jakarta.go.id"], data)
        (got,) = sink.wait_for(1, timeout=30)
        lab.wait_queue_empty(30)
        assert len(sink.messages) == 1
        head, _, body = got.data.partition(b"\r\n\r\n")
        assert b"\r\nSubject: [DIPERIKSA] Laporan mingguan" in b"\r\n" + head
        assert b"\r\nX-Diperiksa: ya" in b"\r\n" + head
        assert b"X-Mailer" not in head
        assert b"Surel ini telah diperiksa / This message was checked." in body
        assert head.count(b"DKIM-Signature:") == 1

        def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
            if name.rstrip(b".") == b"gw1._domainkey.dinas.jakarta.go.id":
                return public_txt(Path(key_path).read_bytes()).encode()
            return None

        assert dkim.verify(got.data, dnsfunc=dnsfunc), got.data[:2000]
    finally:
        lab.stop()
        gw.stop()
