"""The shipped SE 79/SE/2019 policy, decision by decision, through ``milter check --json``.

Each case is a real message (built here or taken from the corpus), an envelope, and
the verdict the issue's decisions demand, checked on the JSON the command prints.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from policy_fixtures import (
    CORPUS,
    PGP_ENCRYPTED,
    ROOT,
    SHIPPED,
    build_message,
    niks,
    pe_bytes,
    zip_with,
)

from milter.envelope import Envelope
from milter.inspect import inspect_message
from milter.policy.engine import Policy
from tests.labelled.build import docx, pdf
from tests.labelled.make import lookalikes
from tests.labelled.make import niks as resident_niks

GMAIL = "warga@gmail.com"
INTERNAL = "kepala@dinas.jakarta.go.id"
APEX = "sekda@jakarta.go.id"
SECURE = "analis@bssn.sanapati.net"
SECURE_APEX = "admin@sanapati.net"
AGENCY = "biro@kemendagri.go.id"

UPSTREAM = ("deliver", "upstream")
SANAPATI = ("deliver", "sanapati")
HOLD = ("quarantine", None)
REJECT = ("reject", None)


@dataclass
class Case:
    id: str
    message: dict[str, Any] | str  # build_message kwargs, or a corpus path
    to: tuple[str, ...]
    expect: dict[str, tuple[str, str | None, list[str]]]  # address -> action, route, rules
    classification: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)  # X-Klasifikasi etc.
    matched: set[str] = field(default_factory=set)  # every rule that matched
    sender: str = "budi@diskominfotik.jakarta.go.id"


def exe(name: str = "setup.exe") -> tuple[str, bytes, str]:
    return (name, pe_bytes(), "application/octet-stream")


NIK_BODY = "Daftar penerima bantuan sosial:\n" + "\n".join(
    f"{i}. NIK {n} atas nama warga {i}" for i, n in enumerate(niks(12), 1)
)
NIK_BODY_9 = "Penerima:\n" + "\n".join(f"NIK {n}" for n in niks(9))
NIK_CSV = (
    "No,Nama,NIK,Kelurahan\n"
    + "".join(f"{i},Warga {i},{n},Gambir\n" for i, n in enumerate(resident_niks(300, 11), 1))
).encode()
# Order ids and virtual accounts that happen to have the structure of a NIK: a
# structure-only count would reach the bulk rule hundreds of times over.
ORDERS_CSV = (
    "order_id,virtual_account,amount\n"
    + "".join(
        f"{a},{b},50000\n" for a, b in zip(lookalikes(300, 12), lookalikes(300, 13), strict=True)
    )
).encode()
DRAFT_DOCX = docx(["Rencana kegiatan tahun depan."], tracked=True)

CASES = [
    Case(
        "clean-unlabelled-to-anyone",
        {},
        (GMAIL, INTERNAL, SECURE, AGENCY),
        {a: (*UPSTREAM, []) for a in (GMAIL, INTERNAL, SECURE, AGENCY)},
    ),
    Case(
        "biasa-label-is-clean",
        {"subject": "[BIASA] Undangan rapat"},
        (GMAIL,),
        {GMAIL: (*UPSTREAM, [])},
        classification="BIASA",
    ),
    # decision 1
    Case(
        "1-executable-rejected-for-all",
        {"attachments": [exe()]},
        (GMAIL, INTERNAL, SECURE),
        {a: (*REJECT, ["lampiran-berbahaya"]) for a in (GMAIL, INTERNAL, SECURE)},
        matched={"lampiran-berbahaya"},
    ),
    Case(
        "1-executable-inside-zip",
        {"attachments": [("paket.zip", zip_with("setup.exe", pe_bytes()), "application/zip")]},
        (INTERNAL,),
        {INTERNAL: (*REJECT, ["lampiran-berbahaya"])},
        matched={"lampiran-berbahaya"},
    ),
    Case(
        "1-script",
        {"attachments": [("jalan.sh", b"#!/bin/sh\necho hai\n", "text/plain")]},
        (GMAIL,),
        {GMAIL: (*REJECT, ["lampiran-berbahaya"])},
        matched={"lampiran-berbahaya"},
    ),
    Case(
        "1-disguised-type",
        {
            "attachments": [
                (
                    "laporan.pdf",
                    b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64,
                    "application/pdf",
                )
            ]
        },
        (APEX,),
        {APEX: (*REJECT, ["lampiran-berbahaya"])},
        matched={"lampiran-berbahaya"},
    ),
    Case(
        "1-beats-classification",
        {"subject": "[RAHASIA] Nota", "attachments": [exe()]},
        (SECURE,),
        {SECURE: (*REJECT, ["lampiran-berbahaya"])},
        classification="RAHASIA",
        matched={"lampiran-berbahaya"},
    ),
    # decision 2 (and 7)
    Case(
        "2-sangat-rahasia-mixed",
        {"subject": "[SANGAT RAHASIA] Rencana pengamanan"},
        (SECURE, SECURE_APEX, INTERNAL, APEX, AGENCY, GMAIL),
        {
            SECURE: (*SANAPATI, ["sangat-rahasia-sanapati"]),
            SECURE_APEX: (*SANAPATI, ["sangat-rahasia-sanapati"]),
            INTERNAL: (*HOLD, ["sangat-rahasia-tahan"]),
            APEX: (*HOLD, ["sangat-rahasia-tahan"]),
            AGENCY: (*HOLD, ["sangat-rahasia-tahan"]),
            GMAIL: (*HOLD, ["sangat-rahasia-tahan"]),
        },
        classification="SANGAT_RAHASIA",
        headers=[("X-Klasifikasi", "SANGAT_RAHASIA")],
        matched={"sangat-rahasia-sanapati", "sangat-rahasia-tahan"},
    ),
    # decision 3 (and 7)
    Case(
        "3-rahasia-mixed",
        {"subject": "[RAHASIA] Nota dinas"},
        (INTERNAL, APEX, SECURE, AGENCY, GMAIL),
        {
            INTERNAL: (*UPSTREAM, ["rahasia-terbatas-internal"]),
            APEX: (*UPSTREAM, ["rahasia-terbatas-internal"]),
            SECURE: (*SANAPATI, ["rahasia-terbatas-sanapati"]),
            AGENCY: (*SANAPATI, ["rahasia-terbatas-sanapati"]),
            GMAIL: (*HOLD, ["rahasia-terbatas-keluar"]),
        },
        classification="RAHASIA",
        headers=[("X-Klasifikasi", "RAHASIA")],
        matched={
            "rahasia-terbatas-internal",
            "rahasia-terbatas-sanapati",
            "rahasia-terbatas-keluar",
        },
    ),
    Case(
        "3-terbatas-header-marking",
        {"headers": [("X-Klasifikasi", "Terbatas")]},
        (GMAIL, AGENCY),
        {
            GMAIL: (*HOLD, ["rahasia-terbatas-keluar"]),
            AGENCY: (*SANAPATI, ["rahasia-terbatas-sanapati"]),
        },
        classification="TERBATAS",
        headers=[("X-Klasifikasi", "TERBATAS")],
        matched={"rahasia-terbatas-sanapati", "rahasia-terbatas-keluar"},
    ),
    Case(
        "3-lookalike-domains-are-outside",
        {"subject": "[RAHASIA] Nota"},
        ("x@jakarta.go.id.evil.example", "y@notsanapati.net", "z@go.id"),
        {
            a: (*HOLD, ["rahasia-terbatas-keluar"])
            for a in ("x@jakarta.go.id.evil.example", "y@notsanapati.net", "z@go.id")
        },
        classification="RAHASIA",
        matched={"rahasia-terbatas-keluar"},
    ),
    # decision 4
    Case(
        "4-encrypted-pgp",
        PGP_ENCRYPTED,
        (GMAIL, AGENCY, INTERNAL, SECURE),
        {
            GMAIL: (*HOLD, ["tak-terperiksa-keluar"]),
            AGENCY: (*HOLD, ["tak-terperiksa-keluar"]),
            INTERNAL: (*UPSTREAM, []),
            SECURE: (*UPSTREAM, []),
        },
        matched={"tak-terperiksa-keluar"},
    ),
    Case(
        "4-rahasia-encrypted-to-agency-quarantine-wins",
        {
            "subject": "[RAHASIA] Data",
            "attachments": [
                (
                    "data.zip",
                    b"PK\x03\x04\x14\x00\x01\x00\x08\x00" + b"\x00" * 80,
                    "application/zip",
                )
            ],
        },
        (AGENCY,),
        {AGENCY: (*HOLD, ["tak-terperiksa-keluar"])},
        classification="RAHASIA",
        matched={"rahasia-terbatas-sanapati", "tak-terperiksa-keluar"},
    ),
    # decision 5
    Case(
        "5-bulk-nik",
        {"body": NIK_BODY},
        (GMAIL, AGENCY, INTERNAL, SECURE),
        {
            GMAIL: (*HOLD, ["data-pribadi-massal"]),
            AGENCY: (*HOLD, ["data-pribadi-massal"]),
            INTERNAL: (*UPSTREAM, []),
            SECURE: (*UPSTREAM, []),
        },
        matched={"data-pribadi-massal"},
    ),
    Case("5-nine-nik-pass", {"body": NIK_BODY_9}, (GMAIL,), {GMAIL: (*UPSTREAM, [])}),
    Case(
        "5-csv-nik-column-held",
        {"attachments": [("warga.csv", NIK_CSV, "text/csv")]},
        (GMAIL, INTERNAL),
        {GMAIL: (*HOLD, ["data-pribadi-massal"]), INTERNAL: (*UPSTREAM, [])},
        matched={"data-pribadi-massal"},
    ),
    Case(
        "5-csv-order-ids-pass",
        {"attachments": [("transaksi.csv", ORDERS_CSV, "text/csv")]},
        (GMAIL,),
        {GMAIL: (*UPSTREAM, [])},
    ),
    # decision 8
    Case(
        "8-draft-outside-audited-and-delivered",
        {"attachments": [("rencana.docx", DRAFT_DOCX, "application/octet-stream")]},
        (GMAIL, INTERNAL, SECURE),
        {GMAIL: (*UPSTREAM, []), INTERNAL: (*UPSTREAM, []), SECURE: (*UPSTREAM, [])},
        matched={"konsep-keluar"},
    ),
    Case(
        "8-final-document-not-audited",
        {"attachments": [("rencana.pdf", pdf([["Rencana kegiatan."]]), "application/pdf")]},
        (GMAIL,),
        {GMAIL: (*UPSTREAM, [])},
    ),
    # decision 6
    Case(
        "6-hoax-audited-and-delivered",
        {"body": "Tolong viralkan, ini berita\nbohong soal banjir."},
        (GMAIL, INTERNAL),
        {GMAIL: (*UPSTREAM, []), INTERNAL: (*UPSTREAM, [])},
        matched={"konten-terlarang"},
    ),
    Case(
        "6-words-inside-words-do-not-count",
        {"body": "Pemrosesan hoaksnya pornografinya."},
        (GMAIL,),
        {GMAIL: (*UPSTREAM, [])},
    ),
]


def _message(case: Case) -> bytes:
    if isinstance(case.message, str):
        path = CORPUS / case.message
        if not path.is_file():
            pytest.skip(f"corpus message {case.message} is absent on this machine")
        return path.read_bytes()
    return build_message(to=case.to, sender=case.sender, **case.message)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_shipped_decision(
    case: Case, write_eml: Callable[..., Path], check_json: Callable[..., dict[str, Any]]
) -> None:
    path = write_eml(_message(case))
    out = check_json(path, sender=case.sender, to=case.to)
    assert out["classification"] == case.classification
    got = {r["address"]: (r["action"], r["route"], r["rules"]) for r in out["recipients"]}
    assert got == {a: (act, route, rules) for a, (act, route, rules) in case.expect.items()}
    assert [r["address"] for r in out["recipients"]] == list(case.to)
    headers = [(rw["name"], rw["value"]) for rw in out["rewrites"] if rw["kind"] == "add_header"]
    assert headers == case.headers
    matched = {r["name"] for r in out["rules"] if r["matched"]}
    assert matched == case.matched
    assert set(out) == {"classification", "recipients", "rewrites", "rules", "findings"}
    assert "attachments" in out["findings"] and "detectors" in out["findings"]
    for r in out["rules"]:
        assert r["reasons"], r


def test_header_only_on_sanapati_recipients(shipped_policy: Policy) -> None:
    data = build_message(subject="[RAHASIA] Nota", to=(GMAIL, INTERNAL, SECURE))
    findings = inspect_message(data, scheme=shipped_policy.scheme)
    v = shipped_policy.evaluate(Envelope("budi@jakarta.go.id", (GMAIL, INTERNAL, SECURE)), findings)
    by = {r.address: r for r in v.recipients}
    assert [
        (rw.kind, getattr(rw, "name", None), getattr(rw, "value", None))
        for rw in by[SECURE].rewrites
    ] == [("add_header", "X-Klasifikasi", "RAHASIA")]
    assert by[INTERNAL].rewrites == () and by[GMAIL].rewrites == ()


def test_decision_3_notifies_sender_and_officers(shipped_policy: Policy) -> None:
    data = build_message(subject="[TERBATAS] Anggaran")
    findings = inspect_message(data, scheme=shipped_policy.scheme)
    v = shipped_policy.evaluate(Envelope("budi@jakarta.go.id", (GMAIL, INTERNAL)), findings)
    assert [(n.rule, n.targets) for n in v.notify] == [
        ("rahasia-terbatas-keluar", ("sender", "officers"))
    ]
    assert v.recipients[0].clauses == ("2.c, 3.b",)


def test_decision_6_audit_notifies_officers_only(shipped_policy: Policy) -> None:
    data = build_message(body="Awas provokasi dan ujaran kebencian di grup.")
    findings = inspect_message(data, scheme=shipped_policy.scheme)
    v = shipped_policy.evaluate(Envelope("budi@jakarta.go.id", (GMAIL,)), findings)
    assert v.audit == ("konten-terlarang",)
    assert [(n.rule, n.targets) for n in v.notify] == [("konten-terlarang", ("officers",))]
    assert v.recipients[0].action == "deliver" and v.recipients[0].rules == ()
    (result,) = [r for r in v.rules if r.name == "konten-terlarang"]
    assert result.mode == "audit" and result.matched
    assert "provokasi" in result.reasons[0] and "ujaran kebencian" in result.reasons[0]


def test_decision_8_draft_audit_notifies_officers_with_evidence(shipped_policy: Policy) -> None:
    data = build_message(
        attachments=[("rencana.docx", DRAFT_DOCX, "application/octet-stream")], to=(GMAIL,)
    )
    findings = inspect_message(data, scheme=shipped_policy.scheme)
    v = shipped_policy.evaluate(Envelope("budi@jakarta.go.id", (GMAIL, INTERNAL)), findings)
    assert v.audit == ("konsep-keluar",)
    assert [(n.rule, n.targets) for n in v.notify] == [("konsep-keluar", ("officers",))]
    assert [r.action for r in v.recipients] == ["deliver", "deliver"]
    results = {r.recipient: r for r in v.rules if r.name == "konsep-keluar"}
    assert results[GMAIL].matched and results[GMAIL].mode == "audit"
    assert results[GMAIL].clause == "2.f"
    assert "tracked changes (1 insertions, 1 deletions)" in results[GMAIL].reasons[0]
    assert not results[INTERNAL].matched


def test_clean_mail_rules_all_explained_and_unmatched(shipped_policy: Policy) -> None:
    findings = inspect_message(build_message(), scheme=shipped_policy.scheme)
    v = shipped_policy.evaluate(Envelope("budi@jakarta.go.id", (GMAIL, INTERNAL)), findings)
    assert {r.name for r in v.rules} == {r.name for r in shipped_policy.rules}
    assert not any(r.matched for r in v.rules)
    assert v.notify == () and v.audit == () and v.rewrites == ()


def test_shipped_sets_and_scheme(shipped_policy: Policy) -> None:
    assert shipped_policy.in_set("internal", "a@jakarta.go.id")
    assert shipped_policy.in_set("internal", "<A@Dinas.Jakarta.GO.ID>")
    assert not shipped_policy.in_set("internal", "a@jakarta.go.id.example")
    assert shipped_policy.in_set("secure", "x@mail.sanapati.net")
    assert shipped_policy.in_set("government", "x@kemendagri.go.id")
    assert not shipped_policy.in_set("government", "x@go.id")
    scheme = shipped_policy.scheme
    assert scheme.levels == ("BIASA", "TERBATAS", "RAHASIA", "SANGAT_RAHASIA")
    assert scheme.resolve("Top Secret") == "SANGAT_RAHASIA"
    assert scheme.resolve("sangat_rahasia") == "SANGAT_RAHASIA"
    assert scheme.resolve("confidential") == "RAHASIA"


def test_check_as_a_subprocess(write_eml: Callable[..., Path]) -> None:
    """The same command an administrator types, in its own process."""
    path = write_eml(build_message(subject="[SANGAT RAHASIA] x", to=(SECURE, GMAIL)))
    proc = subprocess.run(
        [sys.executable, "-m", "milter", "check", "--policy", str(SHIPPED), "--json", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [(r["address"], r["action"], r["route"]) for r in out["recipients"]] == [
        (SECURE, "deliver", "sanapati"),
        (GMAIL, "quarantine", None),
    ]
