"""Rewrites: each kind parsed back with ``email``; untouched bytes stay untouched."""

from __future__ import annotations

import base64
import email
import email.policy
from email import errors
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from milter.actions.rewrite import RewriteError, apply
from milter.inspect import inspect_message
from milter.inspect.findings import EXECUTABLE
from milter.policy.verdict import Rewrite, RewriteFormatError, rewrite_from_dict
from tests.corpus import corpus_root

CORPUS = corpus_root() / "real"
DISCLAIMER = "Surel ini hanya untuk penerima yang dituju.\nThis mail is for its addressees only."
EXE = b"MZ\x90\x00\x03" + bytes(range(256)) * 4


def rw(kind: str, **args: Any) -> Rewrite:
    """A rewrite as a stored release plan spells it (the policy builds the same)."""
    return rewrite_from_dict({"kind": kind, "rule": "test-rule", **args})


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def build_mixed() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Budi <budi@dinas.jakarta.go.id>"
    msg["To"] = "x@gmail.com"
    msg["Subject"] = "Laporan bulanan"
    msg.set_content("Terlampir laporan.\n")
    msg.add_alternative("<html><body><p>Terlampir laporan.</p></body></html>", subtype="html")
    msg.add_attachment(
        b"%PDF-1.4 fake pdf\n" * 20, maintype="application", subtype="pdf", filename="laporan.pdf"
    )
    msg.add_attachment(EXE, maintype="application", subtype="octet-stream", filename="setup.exe")
    return msg.as_bytes(policy=email.policy.SMTP)


def leaf_bytes(data: bytes) -> list[tuple[str, bytes]]:
    """Each leaf's headers and payload (transfer encoding undone)."""
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    out = []
    for part in msg.walk():
        if not part.is_multipart():
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            out.append((str(part.items()), payload))
    return out


def filenames(data: bytes) -> list[str]:
    return [str(p.get_filename()) for p in parse(data).walk() if p.get_filename()]


# -- subject ---------------------------------------------------------------------------


def test_subject_prefix_plain_and_idempotent() -> None:
    data = b"From: a@jakarta.go.id\r\nSubject: Nota dinas\r\n\r\nIsi\r\n"
    once = apply(data, [rw("subject_prefix", text="[RAHASIA]")])
    assert parse(once)["subject"] == "[RAHASIA] Nota dinas"
    assert apply(once, [rw("subject_prefix", text="[RAHASIA]")]) == once
    assert once.endswith(b"\r\n\r\nIsi\r\n")


def test_subject_prefix_on_encoded_subject() -> None:
    msg = EmailMessage()
    msg["Subject"] = "Rapat koordinasi — jadwal baru"
    msg.set_content("x")
    data = msg.as_bytes(policy=email.policy.SMTP)
    assert b"=?utf-8?" in data
    out = apply(data, [rw("subject_prefix", text="[TERBATAS]")])
    assert parse(out)["subject"] == "[TERBATAS] Rapat koordinasi — jadwal baru"
    assert apply(out, [rw("subject_prefix", text="[terbatas]")]) == out


def test_non_ascii_prefix_is_encoded() -> None:
    for subject in (b"Plain words", b"=?utf-8?q?caf=C3=A9?="):
        data = b"Subject: " + subject + b"\r\n\r\nx\r\n"
        out = apply(data, [rw("subject_prefix", text="[RAHASIA·DKI]")])
        assert out.isascii()
        decoded = parse(out)["subject"]
        assert decoded.startswith("[RAHASIA·DKI] "), decoded
        assert decoded.endswith(("Plain words", "café"))


def test_subject_added_when_missing() -> None:
    out = apply(b"From: a@b\n\nbody\n", [rw("subject_prefix", text="[X]")])
    assert out == b"From: a@b\nSubject: [X]\n\nbody\n"


# -- headers ---------------------------------------------------------------------------


def test_add_and_remove_header() -> None:
    data = build_mixed()
    out = apply(
        data,
        [
            rw("add_header", name="X-Klasifikasi", value="Rahasia — DKI"),
            rw("remove_header", name="to"),
        ],
    )
    msg = parse(out)
    assert msg["X-Klasifikasi"] == "Rahasia — DKI"
    assert msg["To"] is None
    assert leaf_bytes(out) == leaf_bytes(data)
    # The body is untouched byte for byte.
    assert out.split(b"\r\n\r\n", 1)[1] == data.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize(
    "rewrite",
    [
        rw("add_header", name="X-A", value="one\r\nBcc: evil@example.com"),
        rw("add_header", name="Bad Name", value="v"),
        rw("remove_header", name="Content-Type"),
        rw("remove_header", name="MIME-Version"),
        rw("subject_prefix", text="a\nb"),
        rw("disclaimer", text=""),
    ],
)
def test_unusable_arguments_raise(rewrite: Rewrite) -> None:
    with pytest.raises(RewriteError):
        apply(b"Subject: x\r\n\r\nbody\r\n", [rewrite])


@pytest.mark.parametrize(
    "stored",
    [
        {"kind": "no_such_kind"},
        {"kind": "add_header", "name": "X-A"},
        {"kind": "strip_attachments", "selector": "exe", "reason": "r"},
    ],
)
def test_a_release_plan_that_cannot_be_read_back_is_refused(stored: dict[str, Any]) -> None:
    with pytest.raises(RewriteFormatError):
        rewrite_from_dict(stored)


# -- disclaimer ------------------------------------------------------------------------


def test_disclaimer_in_both_alternatives_attachments_untouched() -> None:
    data = build_mixed()
    out = apply(data, [rw("disclaimer", text=DISCLAIMER)])
    msg = parse(out)
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert plain is not None and html is not None
    assert plain.get_content().rstrip().endswith("This mail is for its addressees only.")
    html_text = html.get_content()
    assert "penerima yang dituju" in html_text
    assert html_text.index("penerima yang dituju") < html_text.lower().index("</body>")
    before, after = leaf_bytes(data), leaf_bytes(out)
    assert before[2:] == after[2:]  # the two attachments, byte for byte
    assert before[:2] != after[:2]
    # and the raw attachment parts are still in the message unchanged
    pdf = data[data.index(b"Content-Type: application/pdf") :].split(b"\r\n--", 1)[0]
    assert pdf in out


def test_disclaimer_keeps_charset_and_encoding() -> None:
    msg = EmailMessage()
    msg["Subject"] = "x"
    msg.set_content("Salam hangat, ça va très bien\n", charset="iso-8859-1", cte="quoted-printable")
    data = msg.as_bytes(policy=email.policy.SMTP)
    out = apply(data, [rw("disclaimer", text="Rahasia, très important")])
    part = parse(out)
    assert part.get_content_charset() == "iso-8859-1"
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    text = part.get_content()
    assert text.startswith("Salam hangat, ça va très bien")
    assert text.rstrip().endswith("Rahasia, très important")


def test_disclaimer_converts_to_utf8_only_when_it_must() -> None:
    data = (
        b"Subject: x\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nna\xefve caf\xe9\r\n"
    )
    out = apply(data, [rw("disclaimer", text="Rahasia — 机密")])
    part = parse(out)
    assert part.get_content_charset() == "utf-8"
    assert part.get_content().replace("\r\n", "\n") == "naïve café\n\nRahasia — 机密\n"


def test_disclaimer_base64_html() -> None:
    msg = EmailMessage()
    msg["Subject"] = "x"
    msg.set_content("<html><BODY>Halo</BODY></html>", subtype="html", cte="base64")
    out = apply(msg.as_bytes(), [rw("disclaimer", text="T", html="<p>Catatan</p>")])
    part = parse(out)
    assert part["Content-Transfer-Encoding"] == "base64"
    assert part.get_content() == "<html><BODY>Halo<p>Catatan</p>\n</BODY></html>\n"


def test_disclaimer_7bit_body_becomes_qp_for_non_ascii_text() -> None:
    data = b"Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHalo\r\n"
    out = apply(data, [rw("disclaimer", text="Terima kasih — thanks")])
    part = parse(out)
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert part.get_content().replace("\r\n", "\n") == "Halo\n\nTerima kasih — thanks\n"


def test_no_disclaimer_inside_signed_content() -> None:
    data = (
        b"Subject: signed\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";'
        b' micalg=sha-256; boundary="S"\r\n\r\n'
        b"--S\r\nContent-Type: text/plain\r\n\r\nSigned text\r\n"
        b"--S\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nMIIB\r\n--S--\r\n"
    )
    assert apply(data, [rw("disclaimer", text=DISCLAIMER)]) == data
    inline_pgp = (
        b"Subject: pgp\r\n\r\n-----BEGIN PGP SIGNED MESSAGE-----\r\nHash: SHA256\r\n\r\nhi\r\n"
    )
    assert apply(inline_pgp, [rw("disclaimer", text=DISCLAIMER)]) == inline_pgp
    wrapped = (
        b'Subject: fwd\r\nContent-Type: multipart/mixed; boundary="M"\r\n\r\n'
        b"--M\r\n" + data.split(b"\r\n", 2)[2] + b"--M--\r\n"
    )
    assert apply(wrapped, [rw("disclaimer", text=DISCLAIMER)]) == wrapped


def test_lf_only_message_stays_lf() -> None:
    data = b"Subject: x\nContent-Type: text/plain\n\nline one\nline two\n"
    out = apply(data, [rw("disclaimer", text="A\nB"), rw("add_header", name="X-T", value="1")])
    assert b"\r" not in out
    assert out.endswith(b"line one\nline two\n\nA\nB\n")


# -- strip attachments -----------------------------------------------------------------


def test_strip_by_extension_keeps_others_exact() -> None:
    data = build_mixed()
    out = apply(
        data,
        [
            rw(
                "strip_attachments",
                selector={"extension": ("exe", "scr")},
                reason="berkas eksekusi dilarang / executables are not allowed",
            )
        ],
    )
    msg = parse(out)
    names = [p.get_filename() for p in msg.iter_attachments()]
    assert names == ["laporan.pdf"]
    notices = [
        p.get_content()
        for p in msg.walk()
        if p.get_content_type() == "text/plain" and "setup.exe" in p.get_content()
    ]
    assert len(notices) == 1
    assert "dihapus" in notices[0] and "was removed" in notices[0]
    assert "executables are not allowed" in notices[0]
    assert "dosexec" in notices[0] or "portable-executable" in notices[0]  # libmagic's name
    before, after = leaf_bytes(data), leaf_bytes(out)
    assert before[:3] == after[:3]
    assert EXE not in out


def test_strip_by_content_catches_renamed_executable() -> None:
    msg = EmailMessage()
    msg["Subject"] = "invoice"
    msg.set_content("see attached")
    msg.add_attachment(EXE, maintype="application", subtype="pdf", filename="invoice.pdf")
    msg.add_attachment(b"%PDF-1.7\n", maintype="application", subtype="pdf", filename="ok.pdf")
    data = msg.as_bytes()
    out = apply(data, [rw("strip_attachments", selector={"executable": True}, reason="r")])
    assert filenames(out) == ["ok.pdf"]
    only_named_pdf = apply(
        data,
        [
            rw(
                "strip_attachments",
                selector={"name": ("*.pdf",), "type": ("application/pdf",)},
                reason="r",
            )
        ],
    )
    assert filenames(only_named_pdf) == ["invoice.pdf"]
    disguised = apply(data, [rw("strip_attachments", selector={"mismatch": True}, reason="r")])
    assert filenames(disguised) == ["ok.pdf"]
    big = apply(data, [rw("strip_attachments", selector={"size": {"min": 1024}}, reason="r")])
    assert filenames(big) == ["ok.pdf"]


def test_strip_executable_means_what_the_inspector_flags() -> None:
    """``executable: true`` strips exactly the files the inspector marks executable."""
    msg = EmailMessage()
    msg["Subject"] = "bantuan"
    msg.set_content("see attached")
    for name in ("help.chm", "shortcut.url", "addin.xll", "notes.txt"):
        msg.add_attachment(
            b"plain words\n", maintype="application", subtype="octet-stream", filename=name
        )
    data = msg.as_bytes()
    flagged = {
        str(p.filename) for p in inspect_message(data).parts if p.filename and EXECUTABLE in p.flags
    }
    assert flagged == {"help.chm", "shortcut.url", "addin.xll"}
    out = apply(data, [rw("strip_attachments", selector={"executable": True}, reason="r")])
    assert filenames(out) == ["notes.txt"]


def test_strip_uses_given_sniffer() -> None:
    data = build_mixed()
    seen: list[int] = []

    def sniff(content: bytes) -> str:
        seen.append(len(content))
        return "application/x-custom"

    out = apply(
        data,
        [rw("strip_attachments", selector={"type": ("application/x-*",)}, reason="r")],
        sniff=sniff,
    )
    assert filenames(out) == []
    assert sorted(seen) == sorted([len(b"%PDF-1.4 fake pdf\n" * 20), len(EXE)])


def test_strip_top_level_attachment_keeps_other_headers() -> None:
    data = (
        b"From: a@jakarta.go.id\r\nSubject: file\r\nContent-Type: application/x-msdownload;"
        b' name="a.exe"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAA=\r\n'
    )
    out = apply(data, [rw("strip_attachments", selector={"extension": ("exe",)}, reason="no")])
    msg = parse(out)
    assert msg["From"] == "a@jakarta.go.id" and msg["Subject"] == "file"
    assert msg.get_content_type() == "text/plain"
    assert "a.exe" in msg.get_content()


@pytest.mark.parametrize("selector", [{}, "exe", None])
def test_bad_selectors(selector: Any) -> None:
    # A selector that is no mapping cannot even be read back from a release plan.
    with pytest.raises((RewriteError, RewriteFormatError)):
        apply(build_mixed(), [rw("strip_attachments", selector=selector, reason="r")])


# -- robustness ------------------------------------------------------------------------

ALL_KINDS = [
    rw("subject_prefix", text="[RAHASIA]"),
    rw("add_header", name="X-Milter-Policy", value="se-79"),
    rw("remove_header", name="Received"),
    rw("disclaimer", text=DISCLAIMER),
    rw("strip_attachments", selector={"size": {"min": 0}}, reason="uji / test"),
]


def unreadable_headers(data: bytes) -> set[tuple[str, str]]:
    """Headers ``email`` cannot read (some corpus messages have them from the start)."""
    bad = set()
    for part in parse(data).walk():
        for key in part:
            try:
                str(part[key])
            except (ValueError, TypeError, IndexError, AttributeError) as exc:
                bad.add((key.lower(), type(exc).__name__))
    return bad


def corpus_files() -> list[Path]:
    return sorted(CORPUS.rglob("*.eml")) if CORPUS.is_dir() else []


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not present at {CORPUS}")
def test_corpus_never_raises_and_stays_parseable() -> None:
    files = corpus_files()
    assert len(files) > 100
    for path in files:
        data = path.read_bytes()
        added = apply(data, [rw("add_header", name="X-A", value="b")])
        without = {added.replace(b"X-A: b" + end, b"", 1) for end in (b"\r\n", b"\n", b"\r")}
        # A header block that runs into the body gets its missing empty line.
        unterminated = any(
            isinstance(d, errors.MissingHeaderBodySeparatorDefect) for d in parse(data).defects
        )
        # ... and a header block without a final line end gets one.
        kept = any(w.rstrip(b"\r\n") == data.rstrip(b"\r\n") for w in without)
        assert kept or unterminated, path
        for rewrite in ALL_KINDS:
            out = apply(data, [rewrite])
            assert out == data or email.message_from_bytes(out) is not None
        out = apply(data, ALL_KINDS)
        assert unreadable_headers(out) <= unreadable_headers(data), path


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not present at {CORPUS}")
def test_corpus_strip_all_leaves_no_attachment() -> None:
    stripped = 0
    for path in corpus_files():
        data = path.read_bytes()
        before = email.message_from_bytes(data, policy=email.policy.compat32)
        n_before = sum(1 for p in before.walk() if p.get_filename())
        out = apply(data, [ALL_KINDS[-1]])
        after = email.message_from_bytes(out, policy=email.policy.compat32)
        remaining = [p.get_filename() for p in after.walk() if p.get_filename()]
        assert remaining == [], path
        stripped += n_before
    assert stripped > 50


# -- property: untouched leaves stay untouched ------------------------------------------

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=0, max_size=60)
leaf = st.one_of(
    st.tuples(
        st.just("text"),
        texts,
        st.sampled_from(["utf-8", "iso-8859-1"]),
        st.sampled_from(["quoted-printable", "base64", "8bit"]),
    ),
    st.tuples(
        st.just("html"), texts, st.just("utf-8"), st.sampled_from(["quoted-printable", "base64"])
    ),
    st.tuples(
        st.just("file"),
        st.binary(max_size=300),
        st.sampled_from(["a.pdf", "b.exe", "c.zip"]),
        st.none(),
    ),
)


def build(spec: list[Any], subject: str) -> bytes:
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = "a@jakarta.go.id"
    body_done = False
    for kind, payload, extra, cte in spec:
        if kind in ("text", "html") and not body_done:
            text = payload
            if extra == "iso-8859-1":
                text = text.encode("latin-1", "replace").decode("latin-1")
            msg.set_content(
                text + "\n", subtype="plain" if kind == "text" else "html", charset=extra, cte=cte
            )
            body_done = True
        elif kind == "file":
            if not body_done:
                msg.set_content("body\n")
                body_done = True
            msg.add_attachment(
                payload, maintype="application", subtype="octet-stream", filename=extra
            )
    if not body_done:
        msg.set_content("body\n")
    return msg.as_bytes(policy=email.policy.SMTP)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.lists(leaf, min_size=1, max_size=5), subject=texts)
def test_rewrites_round_trip(spec: list[Any], subject: str) -> None:
    data = build(spec, subject)
    out = apply(data, [rw("subject_prefix", text="[RAHASIA]"), rw("disclaimer", text="Catatan")])
    before = parse(data)
    after = parse(out)
    assert after["subject"].startswith("[RAHASIA]")
    assert apply(out, [rw("subject_prefix", text="[RAHASIA]")]) == out
    body = after.get_body(("plain", "html"))
    assert body is not None and "Catatan" in body.get_content()
    old_body = before.get_body(("plain", "html"))
    assert old_body is not None
    assert body.get_content().startswith(old_body.get_content().rstrip("\n")[:20])
    assert [p.get_content() for p in before.iter_attachments()] == [
        p.get_content() for p in after.iter_attachments()
    ]
    assert leaf_bytes(data)[1:] == leaf_bytes(out)[1:]


def test_disclaimer_skips_utf16_and_unknown_encodings() -> None:
    utf16 = (
        b"Subject: x\r\nContent-Type: text/plain; charset=utf-16\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode("Halo".encode("utf-16"))
        + b"\r\n"
    )
    assert apply(utf16, [rw("disclaimer", text="D")]) == utf16
    uuencoded = b"Subject: x\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 a\r\n"
    assert apply(uuencoded, [rw("disclaimer", text="D")]) == uuencoded
    unknown = b"Subject: x\r\nContent-Type: text/plain; charset=x-klingon\r\n\r\nHalo\r\n"
    assert apply(unknown, [rw("disclaimer", text="D")]).endswith(b"Halo\r\n\r\nD\r\n")
    assert apply(unknown, [rw("disclaimer", text="Dé")]) == unknown
