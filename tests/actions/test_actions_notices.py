"""Notices parsed back with ``email``: headers, both languages, RFC 3464 structure."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace
from email.message import EmailMessage, Message
from pathlib import Path

import pytest

from milter.actions.notices import (
    FailedRecipient,
    NoticeError,
    RateLimiter,
    Templates,
    audit_alert,
    dsn,
    finding_words,
    level_words,
    moment,
    officer_alert,
    part_reason_words,
    quarantine_notice,
    should_notify_sender,
)
from milter.config import NoticesConfig
from milter.policy.verdict import RecipientVerdict, RuleResult, Verdict
from milter.quarantine.store import QuarantineRecord

CONFIG = NoticesConfig(sender="postmaster@jakarta.go.id", officers=("kepatuhan@jakarta.go.id",))
RECORD = QuarantineRecord(
    id="BCDF1234GHJK",
    received_at=1_790_000_000.0,
    client="10.20.30.40",
    sender="budi@dinas.jakarta.go.id",
    recipients=("teman@gmail.com", "rekan@yahoo.co.id"),
    subject="Nota Dinas RAHASIA anggaran 2027",
    size=48213,
    classification="RAHASIA",
    labels=("Rahasia",),
    rules=("rahasia-keluar",),
    clauses=("2.c", "3.b"),
    findings={
        "rules": [
            {
                "name": "rahasia-keluar",
                "matched": True,
                "clause": "2.c, 3.b",
                "reasons": ["classification RAHASIA is at least RAHASIA"],
            }
        ]
    },
)
VERDICT = Verdict(
    classification="RAHASIA",
    recipients=(
        RecipientVerdict("teman@gmail.com", "quarantine", rules=("rahasia-keluar",)),
        RecipientVerdict("rekan@yahoo.co.id", "quarantine", rules=("rahasia-keluar",)),
    ),
    rules=(
        RuleResult(
            "rahasia-keluar",
            True,
            "enforce",
            clause="2.c, 3.b",
            description="Dokumen RAHASIA tidak boleh keluar dari saluran resmi",
            reasons=(
                "classification RAHASIA is at least RAHASIA",
                "label 'Rahasia' (subject) matches *rahasia*",
            ),
        ),
        RuleResult("nik-massal", False, "enforce", clause="2.c"),
    ),
)


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert not msg.defects
    return msg


def body_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    text = part.get_content()
    assert isinstance(text, str)
    return text


def test_quarantine_notice_says_everything_in_both_languages() -> None:
    msg = parse(quarantine_notice(CONFIG, RECORD, verdict=VERDICT, now=1_790_000_100.0))
    assert msg["To"] == "budi@dinas.jakarta.go.id"
    assert msg["From"].addresses[0].addr_spec == "postmaster@jakarta.go.id"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Message-ID"].endswith("@jakarta.go.id>")
    assert "Nota Dinas RAHASIA anggaran 2027" in msg["Subject"]
    text = body_of(msg)
    indonesian, english = text.index("[Bahasa Indonesia]"), text.index("[English]")
    assert indonesian < english
    id_part, en_part = text[indonesian:english], text[english:]
    for part in (id_part, en_part):
        assert "BCDF1234GHJK" in part
        assert "teman@gmail.com" in part and "rekan@yahoo.co.id" in part
        assert "rahasia-keluar" in part
        assert "sanapati.net" in part
        assert "kepatuhan@jakarta.go.id" in part
        assert "Nota Dinas RAHASIA anggaran 2027" in part
    assert "butir 2.c Surat Edaran Sekretaris Daerah Nomor 79/SE/2019" in id_part
    assert "menjaga kerahasiaan informasi kebijakan resmi" in id_part
    assert "pimpinan perangkat daerah memantau" in id_part
    assert "keep official policy information confidential" in en_part
    assert "contact the compliance officer" in en_part
    assert "Dokumen RAHASIA tidak boleh keluar" in text
    # Only what is true: no attachment, so no advice to remove one.
    assert "lampiran" not in id_part.lower() and "attachment" not in en_part.lower()
    assert "Yth. Bapak/Ibu," in id_part and "Dear Sir or Madam," in en_part
    assert "Rabu" not in id_part or "WIB" in id_part
    assert 'penanda klasifikasi "Rahasia" pada subjek' in id_part


def test_notice_without_verdict_uses_the_record() -> None:
    text = body_of(parse(quarantine_notice(CONFIG, RECORD)))
    assert "butir 2.c Surat Edaran Sekretaris Daerah Nomor 79/SE/2019, yaitu menjaga" in text
    assert "clause 3.b of the Circular Letter of the Regional Secretary No. 79/SE/2019" in text
    assert "No. 79/SE/2019: heads of agency monitor" in text


def test_forged_subject_cannot_inject_headers() -> None:
    evil = replace(
        RECORD, labels=(), rules=("r",), clauses=(), subject="hi\r\nBcc: victim@example.com"
    )
    msg = parse(quarantine_notice(CONFIG, evil))
    assert msg["Bcc"] is None
    assert "\n" not in msg["Subject"]


def test_officer_alert() -> None:
    msg = parse(officer_alert(CONFIG, RECORD, verdict=VERDICT) or b"")
    assert msg["To"] == "kepatuhan@jakarta.go.id"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert "[Karantina BCDF1234GHJK]" in msg["Subject"]
    text = body_of(msg)
    assert "milter quarantine release BCDF1234GHJK" in text
    assert "10.20.30.40" in text
    assert "surel berklasifikasi RAHASIA" in text
    assert "the message is classified RAHASIA" in text
    assert text.index("Penerima yang ditahan") < text.index("Recipients held")
    assert officer_alert(NoticesConfig(officers=()), RECORD) is None


def test_audit_alert_only_for_audit_rules() -> None:
    assert (
        audit_alert(CONFIG, VERDICT, queue_id="Q1", sender="a@jakarta.go.id", subject="s") is None
    )
    audited = Verdict(
        classification="TERBATAS",
        recipients=(RecipientVerdict("x@gmail.com", "deliver", "upstream"),),
        rules=(
            RuleResult(
                "uji-nik",
                True,
                "audit",
                clause="2.c",
                reasons=("detectors found 3 distinct valid values (nik 3, nip 0), at least 3",),
            ),
        ),
        audit=("uji-nik",),
    )
    msg = parse(
        audit_alert(CONFIG, audited, queue_id="Q1", sender="a@jakarta.go.id", subject="Data warga")
        or b""
    )
    assert msg["To"] == "kepatuhan@jakarta.go.id"
    text = body_of(msg)
    assert "uji-nik" in text and "NIK 3" in text and "x@gmail.com" in text
    assert "mode audit" in text and "audit mode" in text


ORIGINAL = (
    b"From: Budi <budi@dinas.jakarta.go.id>\r\nTo: a@gmail.com, b@dki.jakarta.go.id\r\n"
    b"Subject: Data =?utf-8?q?warga_=E2=80=94?= lengkap\r\nMessage-ID: <m1@dinas>\r\n"
    b"\r\nNIK 3171234567890123\r\n"
)


def test_dsn_structure() -> None:
    data = dsn(
        CONFIG,
        original=ORIGINAL,
        sender="budi@dinas.jakarta.go.id",
        failed=[
            RecipientVerdict(
                "a@gmail.com",
                "reject",
                reject_text="5.7.1 Data pribadi tidak boleh keluar / personal data",
            ),
            FailedRecipient("c@yahoo.com", "5.7.0", "550 5.7.0 ditolak / refused"),
        ],
        delivered=["b@dki.jakarta.go.id"],
        reporting_mta="gw.jakarta.go.id",
        queue_id="Q42",
        arrival=1_790_000_000.0,
    )
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "budi@dinas.jakarta.go.id"
    assert msg["Auto-Submitted"] == "auto-generated"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    human = parts[0].get_content()
    assert "a@gmail.com" in human and "c@yahoo.com" in human
    assert "b@dki.jakarta.go.id" in human
    assert human.index("Surel Anda") < human.index("Your message")
    assert "Data warga — lengkap" in human
    blocks = parts[1].get_payload()
    assert isinstance(blocks, list) and len(blocks) == 3
    per_message: Message = blocks[0]
    assert per_message["Reporting-MTA"] == "dns; gw.jakarta.go.id"
    assert per_message["Arrival-Date"]
    recipients = {b["Final-Recipient"]: b for b in blocks[1:]}
    assert set(recipients) == {"rfc822; a@gmail.com", "rfc822; c@yahoo.com"}
    a = recipients["rfc822; a@gmail.com"]
    assert a["Action"] == "failed" and a["Status"] == "5.7.1"
    assert a["Diagnostic-Code"].startswith("smtp; 550 5.7.1 Data pribadi")
    assert recipients["rfc822; c@yahoo.com"]["Status"] == "5.7.0"
    headers = parts[2].get_payload()
    assert isinstance(headers, str)
    assert "Message-ID: <m1@dinas>" in headers and "NIK" not in headers


def test_templates_override_file_by_file(tmp_path: Path) -> None:
    (tmp_path / "quarantine_notice.txt").write_text(
        "Subject: Ditahan: {{ subject }}\n\nNomor {{ id }} untuk {{ sender }}.\n",
        encoding="utf-8",
    )
    cfg = NoticesConfig(
        sender="postmaster@jakarta.go.id", officers=CONFIG.officers, templates=str(tmp_path)
    )
    msg = parse(quarantine_notice(cfg, RECORD))
    assert msg["Subject"] == "Ditahan: Nota Dinas RAHASIA anggaran 2027"
    assert body_of(msg).strip() == "Nomor BCDF1234GHJK untuk budi@dinas.jakarta.go.id."
    # the officers' template was not overridden, so the shipped one is used
    assert "milter quarantine show" in body_of(parse(officer_alert(cfg, RECORD) or b""))
    assert Templates.load(str(tmp_path)).clause_words("3.a")[1].startswith("use the channels")


def test_a_broken_template_fails_to_load_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "dsn.txt").write_text("Subject: x\n\n{% if %}\n", encoding="utf-8")
    with pytest.raises(NoticeError) as bad:
        Templates.load(str(tmp_path))
    assert "dsn.txt:3:" in str(bad.value) and "\n" not in str(bad.value)
    (tmp_path / "dsn.txt").write_text("Subject: x\n\n{{ subjek }}\n", encoding="utf-8")
    with pytest.raises(NoticeError, match="subjek"):
        Templates.load(str(tmp_path))  # a misspelt name fails at load, not at the first DSN


def test_dates_levels_and_clauses_in_words() -> None:
    when = 1_796_202_718.0  # Wed, 02 Dec 2026 09:11:58 -0000
    assert moment(when) == {
        "id": "Rabu, 2 Desember 2026 pukul 16.11 WIB",
        "en": "Wednesday, 2 December 2026, 16:11 WIB",
    }
    assert moment(when, "Asia/Makassar")["id"] == "Rabu, 2 Desember 2026 pukul 17.11 WITA"
    assert moment(when, "Asia/Jayapura")["id"].endswith("18.11 WIT")
    assert level_words("SANGAT_RAHASIA") == "SANGAT RAHASIA"
    t = Templates.load()
    law = t.clause("UU 27/2022")
    assert law.cite_id == "Undang-Undang Nomor 27 Tahun 2022 tentang Pelindungan Data Pribadi"
    assert t.clause("2.h").meaning_id.startswith("tidak membuat atau menyebarkan konten hoaks")
    assert t.clause("9.z").cite_id == "butir 9.z Surat Edaran Sekretaris Daerah Nomor 79/SE/2019"


@pytest.mark.parametrize(
    ("reason", "indonesian"),
    [
        (
            "recipient a@gmail.com is not in set 'internal' nor 'secure' nor 'government'",
            "alamat penerima a@gmail.com berada di luar jakarta.go.id dan subdomainnya, "
            "surel aman sanapati.net (BSSN), serta instansi pemerintah lain (*.go.id)",
        ),
        ("classification SANGAT_RAHASIA is SANGAT_RAHASIA", "surel berklasifikasi SANGAT RAHASIA"),
        (
            "detectors found 12 distinct valid values (nik 12, nip 0), at least 10",
            "ditemukan 12 nomor identitas pribadi yang sah (NIK 12); batasnya 10",
        ),
        (
            "attachment 2 (application/x-dosexec) matches executable",
            "lampiran 2 (jenis application/x-dosexec): berisi program atau skrip",
        ),
        (
            "text contains 2 keyword(s) (hoaks: hoaks, viralkan)",
            "teks surel memuat 2 kata kunci terlarang (hoaks: hoaks, viralkan)",
        ),
    ],
)
def test_findings_have_indonesian_wording(reason: str, indonesian: str) -> None:
    wid, wen = finding_words(reason)
    assert wid == indonesian
    assert wen != wid


def test_should_notify_sender() -> None:
    def internal(a: str) -> bool:
        d = a.rsplit("@", 1)[1].lower()
        return d == "jakarta.go.id" or d.endswith(".jakarta.go.id")

    assert should_notify_sender("budi@dinas.jakarta.go.id", internal)
    assert should_notify_sender("<budi@jakarta.go.id>", internal)
    assert not should_notify_sender("spoofed@gmail.com", internal)
    assert not should_notify_sender("", internal)
    assert not should_notify_sender("<>", internal)
    assert not should_notify_sender("MAILER-DAEMON@jakarta.go.id", internal)


def test_rate_limiter_sliding_hour() -> None:
    now = [1000.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    assert [limiter.allow("budi@jakarta.go.id") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("ani@jakarta.go.id")
    assert not limiter.allow("BUDI@jakarta.go.id")
    now[0] += 3599
    assert not limiter.allow("budi@jakarta.go.id")
    now[0] += 2
    assert limiter.allow("budi@jakarta.go.id")
    assert RateLimiter(0).allow("x") is False


@pytest.mark.parametrize("name", ["quarantine_notice", "officer_alert", "audit_alert", "dsn"])
def test_shipped_templates_have_both_languages(name: str) -> None:
    text = Templates.load().texts[name]
    assert text.startswith("Subject: ")
    assert text.index("[Bahasa Indonesia]") < text.index("[English]")


def test_dsn_subject_with_a_broken_encoded_word() -> None:
    from milter.actions.notices import FailedRecipient, dsn
    from milter.config import NoticesConfig

    original = b"Subject: =?\x80utf-8?q?laporan?=\r\nFrom: a@dinas.jakarta.go.id\r\n\r\nisi\r\n"
    data = dsn(
        NoticesConfig(),
        original=original,
        sender="a@dinas.jakarta.go.id",
        failed=[FailedRecipient("x@example.org")],
        reporting_mta="gw.test",
    )
    assert b"multipart/report" in data


def test_officer_alert_names_where_the_message_came_from() -> None:
    """Behind Postfix the connecting client is Postfix itself: the alert names the
    civil servant's login, machine and Postfix's queue id, so the officer can act."""
    record = replace(
        RECORD,
        origin={
            "frontend": "milter",
            "client_address": "10.20.30.40",
            "client_name": "pc-budi.bpkd.jakarta.go.id",
            "helo": "pc-budi",
            "login": "budi",
            "queue_id": "4XyZ1abcDE\r\nBcc: x@example.com",
        },
    )
    msg = parse(officer_alert(CONFIG, record, verdict=VERDICT) or b"")
    text = body_of(msg)
    origin = (
        "login budi; klien/client pc-budi.bpkd.jakarta.go.id [10.20.30.40]; HELO pc-budi; "
        "antrean/queue 4XyZ1abcDE Bcc: x@example.com; via milter"
    )
    assert f"Asal:            {origin}" in text
    assert f"Origin:         {origin}" in text
    assert msg["Bcc"] is None


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("encrypted archive entries", "entri arsip terenkripsi"),
        ("encrypted 7z archive", "arsip 7z terenkripsi"),
        ("S/MIME encrypted", "terenkripsi S/MIME"),
        ("read limit reached in docProps/custom.xml", "batas baca tercapai di docProps/custom.xml"),
        ("unreadable zip: BadZipFile", "zip tidak dapat dibaca (BadZipFile)"),
        ("a reason no table knows yet", "a reason no table knows yet"),
    ],
)
def test_the_inspectors_reasons_read_in_indonesian(reason: str, words: str) -> None:
    assert part_reason_words(reason) == words
