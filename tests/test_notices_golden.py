"""Golden notices: every kind, both languages, rendered from real holds.

Each message in ``tests/actions/golden/messages`` goes through the real pipeline with
the shipped policy (plus one site rule that rejects with ``notify``, for the rule alert
and the DSN), a real quarantine and the real notifier and outbox; only the next hop is
a recorder. The notices it produced are compared, text for text, with the files in
``tests/actions/golden``: a change of wording shows up as a diff to review. After a
deliberate change, regenerate with ``MILTER_UPDATE_GOLDEN=1 pytest tests/test_notices_golden.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import os
import re
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml

from milter.app.wiring import build_components, make_pipeline
from milter.config import load
from milter.delivery import DeliveryResult
from milter.envelope import Envelope
from milter.message import Message
from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "actions" / "golden"
MESSAGES = GOLDEN / "messages"
UPDATE = os.environ.get("MILTER_UPDATE_GOLDEN") == "1"
RECEIVED = dt.datetime(2026, 12, 2, 9, 11, 58, tzinfo=dt.UTC).timestamp()
SENDER = "budi@dinas.jakarta.go.id"
OFFICER = "kepatuhan@jakarta.go.id"
SITE_RULE = """\
version: 1
rules:
  - name: tujuan-pesaing
    description:
      id: Surel kepada perusahaan pesaing tidak boleh dikirim dari alamat dinas.
      en: Mail to competing companies must not be sent from official addresses.
    clause: "2.c"
    when: {recipient: {domain: [pesaing.example]}}
    then:
      - reject: "Tujuan tidak diizinkan / Destination not allowed"
      - notify: [officers, sender]
"""

# scenario -> envelope recipients
SCENARIOS = {
    "rahasia-campuran": ["teman@gmail.com", "rekan@bpkd.jakarta.go.id", "staf@kemendagri.go.id"],
    "sangat-rahasia": ["ani@bpbd.jakarta.go.id", "tim@sanapati.net"],
    "data-pribadi": ["relawan@gmail.com", "dinsos@jakarta.go.id"],
    "arsip-terenkripsi": ["mitra@example.org"],
    "hoaks": ["teman@example.org"],
    "penawaran": ["sari@example.org", "direksi@pesaing.example"],
}
# What each scenario must produce: (kind, recipients) in the order they are queued.
EXPECTED = {
    "rahasia-campuran": [("quarantine-notice", [SENDER]), ("officer-alert", [OFFICER])],
    "sangat-rahasia": [("quarantine-notice", [SENDER]), ("officer-alert", [OFFICER])],
    "data-pribadi": [("quarantine-notice", [SENDER]), ("officer-alert", [OFFICER])],
    "arsip-terenkripsi": [("quarantine-notice", [SENDER]), ("officer-alert", [OFFICER])],
    "hoaks": [("audit-alert", [OFFICER])],
    "penawaran": [("rule-alert", [OFFICER]), ("rule-alert", [SENDER]), ("dsn", [SENDER])],
}


class Recorder:
    """The next hop: takes everything and remembers what, by envelope sender."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str], bytes]] = []

    async def send(self, route: str, mail_from: str, rcpts: Any, message: Message,
                   **_: Any) -> DeliveryResult:
        self.sent.append((mail_from, list(rcpts), message.content()))
        return DeliveryResult(True, tuple(rcpts), route=route)

    async def close(self) -> None:
        return None


def _config(tmp: Path) -> Any:
    site = tmp / "site.yaml"
    site.write_text(SITE_RULE)
    cfg = {
        "hostname": "gw.jakarta.go.id",
        "upstream": "smtp://127.0.0.1:9",
        "routes": {"sanapati": "smtp://127.0.0.1:9"},
        "policy": [str(ROOT / "policies" / "se-79-2019.yaml"), str(site)],
        "quarantine": {"database": f"sqlite:///{tmp}/q.sqlite3", "spool": str(tmp / "spool")},
        "notices": {"from": "postmaster@jakarta.go.id", "officers": [OFFICER]},
        "inspect": {"processes": 0},
    }
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(cfg))
    return load(tmp / "gateway.yaml")


def _run(tmp: Path, scenario: str) -> tuple[list[tuple[str, list[str], bytes]], list[str]]:
    """The notices one message produced, and the ids of its holds in order."""
    config = _config(tmp)
    components = build_components(config)
    pipeline = make_pipeline(config, components)
    recorder = Recorder()
    pipeline.deliverer = recorder  # type: ignore[assignment]
    notifier = pipeline.notifier
    assert notifier is not None
    notifier.deliverer = recorder  # type: ignore[attr-defined]
    notifier.outbox.autostart = False  # type: ignore[attr-defined]
    env = Envelope(SENDER, tuple(SCENARIOS[scenario]), client_addr="10.20.30.40",
                   helo="pc-budi", queue_id="GOLDENQUEUE1", received_at=RECEIVED)
    data = (MESSAGES / f"{scenario}.eml").read_bytes()

    async def go() -> list[str]:
        outcome = await pipeline.process(env, Message.from_content(data))
        await asyncio.gather(*pipeline._background)
        while await notifier.outbox.run_once():  # type: ignore[attr-defined]
            pass
        await pipeline.close()
        return [r.id for r in outcome.records]

    try:
        ids = asyncio.run(go())
    finally:
        components.close()
    notices = [(f, r, d) for f, r, d in recorder.sent if f == ""]
    return notices, ids


def _text(data: bytes, ids: list[str]) -> str:
    """A notice as a reader sees it: addressing, subject, the human text, and for a DSN
    its machine part; what differs from run to run replaced by placeholders."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert not msg.defects
    assert msg["Auto-Submitted"] == "auto-generated"
    body = msg.get_body(("plain",))
    assert body is not None
    subject = str(msg["Subject"]).strip()
    out = [f"From: {msg['From']}", f"To: {msg['To']}", f"Subject: {subject}", "",
           str(body.get_content())]
    if msg.get_content_type() == "multipart/report":
        status = msg.get_payload()[1]  # type: ignore[index]
        out += ["", "--- message/delivery-status ---", status.as_string().split("\n\n", 1)[1]]
    text = "\n".join(out).replace("\r\n", "\n")
    text = re.sub(r"(Arrival-Date|Last-Attempt-Date): .*", r"\1: <date>", text)
    for n, qid in enumerate(ids, 1):
        text = text.replace(qid, f"<QUARANTINE-ID-{n}>")
    return text.rstrip("\n") + "\n"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_golden_notices(scenario: str, tmp_path: Path) -> None:
    notices, ids = _run(tmp_path, scenario)
    assert [(_kind(d), r) for _, r, d in notices] == EXPECTED[scenario]
    seen: dict[str, int] = {}
    for _, rcpts, data in notices:
        kind = _kind(data)
        who = "pengirim" if rcpts == [SENDER] else "petugas"
        seen[f"{kind}.{who}"] = seen.get(f"{kind}.{who}", 0) + 1
        path = GOLDEN / f"{scenario}.{kind}.{who}.txt"
        text = _text(data, ids)
        assert "[Bahasa Indonesia]" in text and "[English]" in text
        assert text.index("[Bahasa Indonesia]") < text.index("[English]")
        if UPDATE or not path.exists():
            if not UPDATE:
                pytest.fail(f"{path.name} missing; run with MILTER_UPDATE_GOLDEN=1")
            path.write_text(text, encoding="utf-8")
        assert text == path.read_text(encoding="utf-8"), f"{path.name} differs"
    assert all(v == 1 for v in seen.values())


def _kind(data: bytes) -> str:
    """Which builder made a notice, from its subject."""
    subject = email.message_from_bytes(data, policy=email.policy.default)["Subject"]
    for prefix, kind in (("Surel Anda ditahan", "quarantine-notice"),
                         ("[Karantina", "officer-alert"), ("[Audit]", "audit-alert"),
                         ("[SE 79/SE/2019]", "rule-alert"), ("Surel tidak terkirim", "dsn")):
        if str(subject).strip().startswith(prefix):
            return kind
    raise AssertionError(f"unknown notice: {subject}")


def test_what_the_issue_found_is_gone(tmp_path: Path) -> None:
    """The defects reported from real notices of the shipped policy, one by one."""
    texts = [_text(d, ids) for s in ("rahasia-campuran", "sangat-rahasia", "data-pribadi")
             for notices, ids in [_run(tmp_path / s, s)] for _, _, d in notices]
    every = "\n".join(texts)
    assert "butir UU" not in every and "butir 27/2022" not in every
    assert "butir 2.h: 2.h" not in every
    assert "is not in set" not in every
    assert "Yth. budi@" not in every and "Yth. Bapak/Ibu Budi Santoso," in every
    assert "-0000" not in every and "Rabu, 2 Desember 2026 pukul 16.11 WIB" in every
    assert "SANGAT_RAHASIA" not in every and "SANGAT RAHASIA" in every
    assert "Klasifikasi: -" not in every and "Klasifikasi:     -" not in every
    assert "Gubernur" not in every and "Governor" not in every
    assert "Penerima lain (bila ada)" not in every
    assert "Undang-Undang Nomor 27 Tahun 2022 tentang Pelindungan Data Pribadi" in every
    [rahasia] = [t for t in texts if "Nota Dinas" in t and "Yth." in t]
    assert "hapus lampiran" not in rahasia.lower(), "no attachment, no advice to remove one"
    assert "staf@kemendagri.go.id: telah dikirim melalui surel aman sanapati (BSSN)" in rahasia
    assert "rekan@bpkd.jakarta.go.id: telah dikirim melalui server surel Pemprov" in rahasia


@pytest.fixture(autouse=True)
def _tmp_dirs(tmp_path: Path) -> None:
    for s in SCENARIOS:
        (tmp_path / s).mkdir()
