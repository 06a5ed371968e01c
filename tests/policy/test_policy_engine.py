"""The engine's semantics on hand-built findings: precedence, modes, stop, layering,
and every condition kind, each explained in its reasons."""

from __future__ import annotations

from pathlib import Path

import pytest
from policy_fixtures import SHIPPED

from milter.envelope import Envelope
from milter.inspect.findings import (
    ATTACHMENT,
    ENCRYPTED,
    EXECUTABLE,
    IMAGE_ONLY,
    MACRO,
    UNSCANNABLE,
    Detection,
    Draft,
    Findings,
    Label,
    Part,
)
from milter.policy.conditions import KeywordIndex, selector_matcher
from milter.policy.engine import Policy, PolicyError
from milter.policy.verdict import (
    AddHeader,
    Disclaimer,
    RemoveHeader,
    StripAttachments,
    SubjectPrefix,
    Verdict,
    rewrite_from_dict,
    rewrite_to_dict,
)

HEAD = """\
domains:
  internal: [jakarta.go.id, "*.jakarta.go.id"]
  partners: ["@internal", mitra.example, boss@vip.example]
classifications:
  BIASA: {}
  TERBATAS: {aliases: [Internal]}
  RAHASIA: {aliases: [Confidential]}
keywords:
  hoaks: [hoaks, berita bohong]
"""


def policy(rules: str, *more: str, routes: list[str] | None = None) -> Policy:
    texts = [("p.yaml", HEAD + "rules:\n" + rules)]
    texts += [(f"site{i}.yaml", t) for i, t in enumerate(more)]
    return Policy.from_texts(texts, routes=routes)


def run(
    p: Policy,
    findings: Findings | None = None,
    to: tuple[str, ...] = ("a@gmail.com",),
    sender: str = "s@jakarta.go.id",
) -> Verdict:
    return p.evaluate(Envelope(sender, to), findings or Findings())


def outcome(v: Verdict) -> list[tuple[str, str, str | None, tuple[str, ...]]]:
    return [(r.address, r.action, r.route, r.rules) for r in v.recipients]


def part(
    path: str,
    true_type: str = "application/pdf",
    *flags: str,
    size: int = 100,
    depth: int = 1,
    filename: str | None = None,
    declared: str = "application/pdf",
    ext: str = "pdf",
) -> Part:
    return Part(
        path,
        filename if filename is not None else path.rsplit("/", 1)[-1],
        declared,
        true_type,
        ext,
        size,
        depth,
        frozenset({ATTACHMENT, *flags}),
    )


# --- precedence ---------------------------------------------------------------------------


PRECEDENCE = """\
  - name: r-deliver
    then: [deliver]
  - name: r-route
    when: {recipient: {not_in: internal}}
    then: [{route: secure}, {add_header: {name: X-Route, value: "{rule}"}}]
  - name: r-quarantine
    when: {recipient: {address: "*@gmail.com"}}
    then: [quarantine, {subject_prefix: "[HOLD] "}, {notify: [sender]}]
  - name: r-reject
    when: {recipient: {address: "bad*@gmail.com"}}
    then: [{reject: "Ditolak / Rejected"}]
  - name: r-header
    then: [{add_header: {name: X-Checked, value: "yes"}}]
"""


def test_most_restrictive_wins_per_recipient() -> None:
    v = run(
        policy(PRECEDENCE, routes=["secure"]),
        to=("x@dinas.jakarta.go.id", "y@mitra.example", "ok@gmail.com", "bad1@gmail.com"),
    )
    assert outcome(v) == [
        ("x@dinas.jakarta.go.id", "deliver", "upstream", ("r-deliver", "r-header")),
        ("y@mitra.example", "deliver", "secure", ("r-route", "r-header")),
        ("ok@gmail.com", "quarantine", None, ("r-quarantine", "r-header")),
        ("bad1@gmail.com", "reject", None, ("r-reject",)),
    ]
    by = {r.address: r for r in v.recipients}
    assert by["bad1@gmail.com"].reject_text == "Ditolak / Rejected"
    assert by["bad1@gmail.com"].rewrites == ()
    assert list(by["y@mitra.example"].rewrites) == [
        AddHeader("X-Route", "r-route", rule="r-route"),
        AddHeader("X-Checked", "yes", rule="r-header"),
    ]
    # the overruled route rule adds nothing to the quarantined recipient
    assert [w.rule for w in by["ok@gmail.com"].rewrites] == ["r-quarantine", "r-header"]
    # the quarantine rule decided one recipient and lost to reject for the other
    assert [(n.rule, n.targets) for n in v.notify] == [("r-quarantine", ("sender",))]
    assert [w.kind for w in v.rewrites] == ["add_header", "add_header", "subject_prefix"]


def test_route_to_upstream_counts_as_deliver() -> None:
    p = policy(
        "  - name: up\n    then: [{route: upstream}]\n"
        "  - name: other\n    then: [{route: secure}]\n",
        routes=["secure"],
    )
    assert outcome(run(p)) == [("a@gmail.com", "deliver", "secure", ("other",))]


def test_first_route_wins_among_equals() -> None:
    p = policy("  - name: one\n    then: [{route: a}]\n  - name: two\n    then: [{route: b}]\n")
    assert outcome(run(p)) == [("a@gmail.com", "deliver", "a", ("one",))]


# --- modes and stop -----------------------------------------------------------------------


MODES = """\
  - name: audited
    mode: audit
    when: {content: {keywords: hoaks}}
    then: [reject, {add_header: {name: X-Audit, value: "1"}}, {notify: [sender]}]
  - name: tested
    mode: test
    then: [quarantine]
  - name: enforced
    when: {classification: {at_least: RAHASIA}}
    then: [quarantine]
"""


def test_audit_and_test_modes_only_record() -> None:
    p = policy(MODES)
    v = run(p, Findings(text="Ini berita   bohong!"))
    assert outcome(v) == [("a@gmail.com", "deliver", "upstream", ())]
    assert v.audit == ("audited", "tested")
    assert [(n.rule, n.targets) for n in v.notify] == [("audited", ("officers",))]
    assert v.rewrites == ()
    res = {r.name: r for r in v.rules}
    assert res["audited"].matched and res["audited"].mode == "audit"
    assert res["audited"].reasons == ("text contains 1 keyword(s) (hoaks: berita bohong)",)
    assert res["tested"].matched and res["tested"].reasons == ("always (no conditions)",)
    assert not res["enforced"].matched
    assert res["enforced"].reasons == ("classification none (unlabelled) is below RAHASIA",)


def test_stop_ends_evaluation_for_that_recipient_only() -> None:
    p = policy("""\
  - name: allow-internal
    when: {recipient: {in: internal}}
    then: [deliver]
    stop: true
  - name: hold-rahasia
    when: {classification: {at_least: TERBATAS}}
    then: [quarantine]
  - name: hold-external
    when: {recipient: {not_in: internal}}
    then: [{add_header: {name: X-Ext, value: "{classification}"}}]
""")
    v = run(p, Findings(classification="RAHASIA"), to=("k@jakarta.go.id", "x@gmail.com"))
    assert outcome(v) == [
        ("k@jakarta.go.id", "deliver", "upstream", ("allow-internal",)),
        ("x@gmail.com", "quarantine", None, ("hold-rahasia", "hold-external")),
    ]
    trail = [(r.name, r.recipient, r.matched) for r in v.rules]
    assert trail == [
        ("allow-internal", "k@jakarta.go.id", True),
        ("allow-internal", "x@gmail.com", False),
        ("hold-rahasia", None, True),
        ("hold-external", "k@jakarta.go.id", False),
        ("hold-external", "x@gmail.com", True),
    ]
    skipped = next(r for r in v.rules if r.name == "hold-external" and r.matched is False)
    assert skipped.reasons == (
        "not evaluated: rule 'allow-internal' stopped evaluation for this recipient",
    )


def test_stop_in_audit_mode_does_not_stop() -> None:
    p = policy(
        "  - name: a\n    mode: audit\n    stop: true\n    then: [deliver]\n"
        "  - name: b\n    then: [quarantine]\n"
    )
    assert outcome(run(p)) == [("a@gmail.com", "quarantine", None, ("b",))]


def test_unless() -> None:
    p = policy("""\
  - name: hold
    when: {classification: {is: RAHASIA}}
    unless: {sender: {address: "sekda@*"}}
    then: [quarantine]
""")
    f = Findings(classification="RAHASIA")
    held = run(p, f, sender="staf@jakarta.go.id")
    assert held.recipients[0].action == "quarantine"
    assert held.rules[0].reasons[-1] == "unless: sender staf@jakarta.go.id does not match sekda@*"
    free = run(p, f, sender="SEKDA@jakarta.go.id")
    assert free.recipients[0].action == "deliver"
    assert free.rules[0].reasons[-1] == "unless: sender SEKDA@jakarta.go.id matches sekda@*"


# --- layering -----------------------------------------------------------------------------


def test_layering_over_the_shipped_policy(tmp_path: Path) -> None:
    site = tmp_path / "local.yaml"
    site.write_text("""\
domains:
  secure: [mitra-aman.example]
classifications:
  RAHASIA: {guids: ["{3A6C2B49-0F4F-4A7E-9B59-2C3F6E3B1D11}"]}
keywords:
  hoaks: [kabar burung]
rules:
  - name: konten-terlarang
    enabled: false
  - name: data-pribadi-massal
    when:
      content: {detector: {name: nik, min_count: 3}}
      recipient: {not_in: [internal, secure]}
    then: [quarantine]
  - name: direksi-boleh
    before: lampiran-berbahaya
    when: {sender: {address: "gubernur@jakarta.go.id"}}
    then: [deliver]
    stop: true
""")
    p = Policy.load([str(SHIPPED), str(site)], routes=["sanapati"])
    names = [r.name for r in p.rules]
    assert names[0] == "direksi-boleh"
    assert "konten-terlarang" not in names
    assert names.index("data-pribadi-massal") == names.index("tak-terperiksa-keluar") + 1
    assert p.rule("data-pribadi-massal").file == str(site)
    assert p.in_set("secure", "x@mitra-aman.example") and p.in_set("secure", "y@sanapati.net")
    assert "kabar burung" in p.dictionaries["hoaks"] and "hoaks" in p.dictionaries["hoaks"]
    assert p.scheme.resolve("3a6c2b49-0f4f-4a7e-9b59-2c3f6e3b1d11") == "RAHASIA"

    f = Findings(classification="RAHASIA", detectors={"nik": Detection("nik", 3, "low")})
    v = p.evaluate(Envelope("staf@jakarta.go.id", ("a@mitra-aman.example", "b@gmail.com")), f)
    assert outcome(v) == [
        ("a@mitra-aman.example", "deliver", "sanapati", ("rahasia-terbatas-sanapati",)),
        ("b@gmail.com", "quarantine", None, ("rahasia-terbatas-keluar", "data-pribadi-massal")),
    ]
    boss = p.evaluate(Envelope("gubernur@jakarta.go.id", ("b@gmail.com",)), f)
    assert outcome(boss) == [("b@gmail.com", "deliver", "upstream", ("direksi-boleh",))]


def test_later_rule_with_same_name_keeps_its_place() -> None:
    p = policy(
        "  - name: a\n    then: [deliver]\n  - name: b\n    then: [deliver]\n",
        "rules:\n  - name: a\n    then: [quarantine]\n  - name: c\n    then: [deliver]\n",
    )
    assert [(r.name, r.terminal, r.file) for r in p.rules] == [
        ("a", "quarantine", "site0.yaml"),
        ("b", "deliver", "p.yaml"),
        ("c", "deliver", "site0.yaml"),
    ]


# --- conditions ---------------------------------------------------------------------------


def matched(p: Policy, f: Findings, **kw: object) -> tuple[bool, tuple[str, ...]]:
    v = run(p, f, **kw)  # type: ignore[arg-type]
    return v.rules[0].matched, v.rules[0].reasons


def one(when: str) -> Policy:
    return policy(f"  - name: r\n    when: {when}\n    then: [quarantine]\n")


@pytest.mark.parametrize(
    ("when", "to", "expect"),
    [
        ("{recipient: {in: partners}}", "x@sub.jakarta.go.id", True),
        ("{recipient: {in: partners}}", "x@mitra.example", True),
        ("{recipient: {in: partners}}", "x@sub.mitra.example", False),
        ("{recipient: {in: partners}}", "Boss@VIP.example", True),
        ("{recipient: {in: partners}}", "other@vip.example", False),
        ("{recipient: {domain: ['*.example']}}", "x@a.example", True),
        ("{recipient: {domain: ['*.example']}}", "x@example", False),
        ("{recipient: {domain: ['@internal']}}", "x@jakarta.go.id", True),
        ("{recipient: {address: ['*@gmail.com', 'x@y.example']}}", "X@Y.example", True),
    ],
)
def test_address_conditions(when: str, to: str, expect: bool) -> None:
    got, reasons = matched(one(when), Findings(), to=(to,))
    assert got is expect
    assert reasons and to in reasons[0]


def test_sender_null_is_in_no_set() -> None:
    got, reasons = matched(one("{sender: {in: internal}}"), Findings(), sender="")
    assert not got and reasons == ("sender <> is not in set 'internal'",)


def test_classification_conditions() -> None:
    p = one("{classification: {at_least: TERBATAS, at_most: RAHASIA}}")
    assert matched(p, Findings(classification="TERBATAS"))[0]
    assert matched(p, Findings(classification="RAHASIA"))[0]
    assert not matched(p, Findings(classification="BIASA"))[0]
    assert not matched(p, Findings())[0]
    assert matched(p, Findings(classification="TERBATAS"))[1] == (
        "classification TERBATAS is at least TERBATAS",
        "classification TERBATAS is at most RAHASIA",
    )


def test_label_condition() -> None:
    p = one("{label: {raw: ['*rahasia*'], source: ['attachment:*']}}")
    labels = (
        Label("[RAHASIA]", "subject", "RAHASIA"),
        Label("Sangat Rahasia", "attachment:a.docx:docProps/custom.xml", None),
    )
    got, reasons = matched(p, Findings(labels=labels))
    assert got
    assert reasons == (
        "label 'Sangat Rahasia' (attachment:a.docx:docProps/custom.xml) "
        "matches raw *rahasia*; source attachment:*",
    )
    assert not matched(p, Findings(labels=labels[:1]))[0]


@pytest.mark.parametrize(
    ("when", "parts", "expect"),
    [
        ("{attachment: {extension: [.EXE]}}", [part("a.exe", ext="exe")], True),
        ("{attachment: {name: ['*.zip']}}", [part("Data.ZIP")], True),
        ("{attachment: {type: ['image/*']}}", [part("a.pdf", "image/png")], True),
        ("{attachment: {type: ['image/*']}}", [part("a.pdf")], False),
        ("{attachment: {size: {min: 1MB}}}", [part("a.pdf", size=1 << 20)], True),
        ("{attachment: {size: {min: 1MB}}}", [part("a.pdf", size=(1 << 20) - 1)], False),
        (
            "{attachment: {depth: {min: 2}, macro: true}}",
            [part("z.zip/a.docm", "application/msword", MACRO, depth=2)],
            True,
        ),
        (
            "{attachment: {depth: {min: 2}, macro: true}}",
            [part("a.docm", "application/msword", MACRO), part("z.zip/b.docx", depth=2)],
            False,
        ),
        (
            "{attachment: {encrypted: false, executable: true}}",
            [part("a.exe", "application/x-dosexec", EXECUTABLE, ENCRYPTED)],
            False,
        ),
        (
            "{encrypted: true}",
            [Part("1", None, "text/plain", "text/plain", "", 10, 0, frozenset({ENCRYPTED}))],
            True,
        ),
        (
            "{attachment: {encrypted: true}}",
            [Part("1", None, "text/plain", "text/plain", "", 10, 0, frozenset({ENCRYPTED}))],
            False,
        ),
        ("{unscannable: true}", [part("a.zip", "application/zip", UNSCANNABLE)], True),
        ("{unscannable: false}", [part("a.zip", "application/zip")], True),
    ],
)
def test_attachment_conditions(when: str, parts: list[Part], expect: bool) -> None:
    assert matched(one(when), Findings(parts=tuple(parts)))[0] is expect


def test_image_only_attachment_condition() -> None:
    """A scan with no text layer (read only by OCR) can be ruled on by its flag, and a
    typo'd flag is still an error at load time."""
    scan = part("surat.pdf", "application/pdf", IMAGE_ONLY)
    written = part("nota.pdf")
    p = one("{attachment: {image_only: true, type: [application/pdf]}}")
    got, reasons = matched(p, Findings(parts=(written, scan)))
    assert got
    assert reasons == (
        "attachment surat.pdf (application/pdf) matches image_only; type application/pdf",
    )
    assert not matched(p, Findings(parts=(written,)))[0]
    p = one("{attachment: {image_only: false, extension: [pdf]}}")
    assert matched(p, Findings(parts=(scan, written)))[1][0].startswith("attachment nota.pdf")
    assert not matched(p, Findings(parts=(scan,)))[0]
    with pytest.raises(PolicyError, match="image-only"):
        one("{attachment: {image-only: true}}")


def test_message_level_unscannable_reason_is_explained() -> None:
    got, reasons = matched(
        one("{unscannable: true}"), Findings(unscannable=("archive expansion ratio over 100",))
    )
    assert got and reasons == ("unscannable: message: archive expansion ratio over 100",)


def test_content_conditions() -> None:
    p = one("{content: {words: [nota dinas, anggaran], min_count: 2}}")
    assert matched(p, Findings(text="NOTA\nDinas tentang anggaran."))[0]
    assert not matched(p, Findings(text="nota dinasnya tanpa angka"))[0]
    r = one("{content: {regex: ['rekening\\s+\\d{10}', 'zzz']}}")
    got, reasons = matched(r, Findings(text="Nomor Rekening 1234567890 BRI"))
    assert got and reasons == ("text matches /rekening\\s+\\d{10}/: 'Rekening 1234567890'",)
    d = one("{content: {detector: {name: [nik, nip], min_count: 10, confidence: high}}}")
    det = {"nik": Detection("nik", 8, "high", 6), "nip": Detection("nip", 5, "high", 4)}
    got, reasons = matched(d, Findings(detectors=det))
    assert got and reasons == (
        "detectors found 10 distinct valid high-confidence values (nik 6, nip 4), at least 10",
    )
    det["nip"] = Detection("nip", 5, "low", 3)
    assert not matched(d, Findings(detectors=det))[0]


@pytest.mark.parametrize(
    ("spec", "expect"),
    [
        ("{name: nik, min: 10, confidence: high}", False),  # 4 high-confidence values
        ("{name: nik, min: 4, confidence: high}", True),
        ("{name: nik, min: 10, confidence: low}", True),  # every valid value counts
        ("{name: nik, min: 10, confidence: medium}", True),  # the older name of low
        ("{name: nik, min: 10}", True),  # default: any confidence, as before
        ("{name: nik, min_count: 11}", False),
    ],
)
def test_detector_confidence(spec: str, expect: bool) -> None:
    det = {"nik": Detection("nik", 10, "high", 4)}
    assert matched(one(f"{{content: {{detector: {spec}}}}}"), Findings(detectors=det))[0] is expect


def test_draft_condition_explains_the_evidence() -> None:
    drafts = (
        Draft(
            "attachment:nota.docx:word/document.xml", "tracked changes (2 insertions, 0 deletions)"
        ),
        Draft("attachment:nota.docx:word/header1.xml", "watermark KONSEP"),
    )
    got, reasons = matched(one("{draft: true}"), Findings(drafts=drafts))
    assert got and reasons == (
        "draft: attachment:nota.docx:word/document.xml: tracked changes (2 insertions, 0 "
        "deletions); attachment:nota.docx:word/header1.xml: watermark KONSEP",
    )
    assert not matched(one("{draft: true}"), Findings())[0]
    got, reasons = matched(one("{draft: false}"), Findings())
    assert got and reasons == ("no document is a draft",)


def test_keywords_in_subject_and_whole_words_only() -> None:
    p = one("{content: {keywords: hoaks}}")
    assert matched(p, Findings(subject="Klarifikasi HOAKS banjir"))[0]
    assert not matched(p, Findings(text="hoaksnya dan pseudohoaks"))[0]
    index = KeywordIndex({"a": ["bom", "bom bunuh diri"], "b": ["bunuh diri"]})
    assert index.scan("Awas BOM\tbunuh   diri; bombastis") == {
        "a": ["bom", "bom bunuh diri"],
        "b": ["bunuh diri"],
    }


def test_header_size_and_combinators() -> None:
    p = one("""
      any:
        - header: {name: X-Mailer, regex: "^bulk"}
        - all: [{size: {min: 10MB}}, {not: {signed: true}}]
""")
    hdr = Findings(headers=(("x-mailer", "Bulk Sender 2.0"),))
    got, reasons = matched(p, hdr)
    assert got and reasons == ("header X-Mailer 'Bulk Sender 2.0' matches /^bulk/",)
    assert matched(p, Findings(size=10 << 20))[0]
    signed = Part(
        "2",
        "smime.p7s",
        "application/pkcs7-signature",
        "application/pkcs7-signature",
        "p7s",
        10,
        1,
        frozenset({"signed"}),
    )
    got, reasons = matched(p, Findings(size=10 << 20, parts=(signed,)))
    assert not got
    assert reasons[-1] == "not: signed: 2"
    absent = one("{header: {name: DKIM-Signature, present: false}}")
    assert matched(absent, Findings())[0]
    assert not matched(absent, Findings(headers=(("DKIM-Signature", "v=1"),)))[0]


def test_templates_and_strip_selector() -> None:
    p = policy("""\
  - name: tandai
    clause: "2.c"
    when: {classification: {at_least: TERBATAS}}
    then:
      - subject_prefix: "[{classification}] "
      - disclaimer:
          text: "Rahasia ({clause}) dari {sender}. {{tanpa ubah}}"
          html: "<p>{rule}</p>"
      - remove_header: X-Internal
      - strip_attachments: {extension: [exe, scr], reason: "dibuang oleh {rule}"}
      - bcc: [arsip@jakarta.go.id]
""")
    v = run(p, Findings(classification="TERBATAS"))
    prefix, disclaimer, remove, strip = v.recipients[0].rewrites
    assert isinstance(prefix, SubjectPrefix) and prefix.text == "[TERBATAS] "
    assert isinstance(disclaimer, Disclaimer)
    assert disclaimer.text == "Rahasia (2.c) dari s@jakarta.go.id. {tanpa ubah}"
    assert disclaimer.html == "<p>tandai</p>"
    assert isinstance(remove, RemoveHeader) and remove.name == "X-Internal"
    assert isinstance(strip, StripAttachments)
    assert strip.reason == "dibuang oleh tandai"
    assert strip.selector.spec() == {"extension": ("exe", "scr")}
    assert hash(strip) == hash(rewrite_from_dict(rewrite_to_dict(strip)))
    matches = selector_matcher(strip.selector.spec())
    assert matches(part("x.scr", ext="scr"))
    assert not matches(part("x.pdf"))
    assert v.recipients[0].bcc == ("arsip@jakarta.go.id",)
    assert v.to_dict()["rewrites"][3]["selector"] == {"extension": ("exe", "scr")}


def test_rules_that_ignore_the_recipient_are_reported_once() -> None:
    p = policy(
        "  - name: r\n    when: {classification: {is: RAHASIA}}\n    then: [quarantine]\n"
        "  - name: s\n    when: {recipient: {in: internal}, size: {min: 1KB}}\n"
        "    then: [deliver]\n"
    )
    v = run(p, Findings(size=10), to=("a@jakarta.go.id", "b@gmail.com"))
    assert [(r.name, r.recipient) for r in v.rules] == [("r", None), ("s", None)]
    assert v.rules[1].reasons == ("message size 10 B is not >= 1.0 KB",)


def test_no_recipients_still_explains_message_rules() -> None:
    v = run(policy("  - name: r\n    then: [quarantine]\n"), to=())
    assert v.recipients == () and [(r.name, r.matched) for r in v.rules] == [("r", True)]


def test_policy_without_classifications_uses_the_default_scheme() -> None:
    p = Policy.from_texts(
        [
            (
                "p.yaml",
                "rules:\n  - name: r\n    when: {classification: "
                "{at_least: RAHASIA}}\n    then: [quarantine]\n",
            )
        ]
    )
    assert p.levels == ("BIASA", "TERBATAS", "RAHASIA", "SANGAT_RAHASIA")
    assert p.scheme.resolve("Top Secret") == "SANGAT_RAHASIA"
    assert run(p, Findings(classification="SANGAT_RAHASIA")).recipients[0].action == "quarantine"


def test_in_set_unknown_set() -> None:
    with pytest.raises(KeyError):
        policy("").in_set("nope", "a@b.example")


def test_a_held_recipient_keeps_the_way_it_would_have_gone() -> None:
    p = policy(
        """\
  - name: secure-route
    when: {recipient: {domain: [sanapati.net]}}
    then: [{route: sanapati}, {add_header: {name: X-Via, value: sanapati}}]
  - name: tag
    then: [{add_header: {name: X-Tag, value: "1"}}]
  - name: hold-all
    when: {classification: {at_least: RAHASIA}}
    then: [quarantine, {add_header: {name: X-Held, value: "1"}}]
""",
        routes=["sanapati"],
    )
    v = run(p, Findings(classification="RAHASIA"), to=("t@sanapati.net", "a@gmail.com"))
    secure, outside = v.recipients
    assert (secure.action, secure.release_route) == ("quarantine", "sanapati")
    assert [getattr(rw, "name", None) for rw in secure.release_rewrites] == ["X-Via", "X-Tag"]
    assert (outside.action, outside.release_route) == ("quarantine", "upstream")
    assert [getattr(rw, "name", None) for rw in outside.release_rewrites] == ["X-Tag"]
    delivered = run(p, Findings(), to=("t@sanapati.net",)).recipients[0]
    assert (delivered.route, delivered.release_route) == ("sanapati", None)
