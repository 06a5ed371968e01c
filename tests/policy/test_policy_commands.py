"""``milter check``: envelope defaults, configuration, the text explanation, failures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from policy_fixtures import SHIPPED, build_message

Cli = Callable[..., tuple[int, str, str]]


def test_envelope_defaults_from_headers(cli: Cli, write_eml: Callable[..., Path]) -> None:
    data = build_message(
        subject="[RAHASIA] Nota",
        sender="Budi <budi@jakarta.go.id>",
        to=("Warga <warga@gmail.com>", "kepala@dinas.jakarta.go.id"),
        headers=[
            ("Cc", "=?utf-8?q?Bu_Ani=2C_SE?= <ani@bssn.sanapati.net>"),
            ("Bcc", "warga@gmail.com"),
        ],
    )
    rc, out, err = cli("check", "--policy", str(SHIPPED), "--json", str(write_eml(data)))
    assert rc == 0, err
    got = [(r["address"], r["action"], r["route"]) for r in json.loads(out)["recipients"]]
    assert got == [
        ("warga@gmail.com", "quarantine", None),
        ("kepala@dinas.jakarta.go.id", "deliver", "upstream"),
        ("ani@bssn.sanapati.net", "deliver", "sanapati"),
    ]


def test_envelope_from_options_overrides_headers(cli: Cli, write_eml: Callable[..., Path]) -> None:
    path = write_eml(subject="[TERBATAS] x", to=("warga@gmail.com",))
    rc, out, _ = cli(
        "check",
        "--policy",
        str(SHIPPED),
        "--from",
        "x@jakarta.go.id",
        "--to",
        "y@jakarta.go.id",
        "--json",
        str(path),
    )
    assert rc == 0
    assert [r["address"] for r in json.loads(out)["recipients"]] == ["y@jakarta.go.id"]


def test_text_explanation(cli: Cli, write_eml: Callable[..., Path]) -> None:
    path = write_eml(
        subject="[SANGAT RAHASIA] Rencana", to=("analis@sanapati.net", "kepala@jakarta.go.id")
    )
    rc, out, _ = cli("check", "--policy", str(SHIPPED), str(path))
    assert rc == 0
    assert "Classification: SANGAT_RAHASIA" in out
    assert (
        "  analis@sanapati.net: deliver via sanapati  by sangat-rahasia-sanapati  "
        "(clause 2.c, 3.a, 3.b)"
    ) in out
    assert (
        "      add_header name='X-Klasifikasi', value='SANGAT_RAHASIA'  "
        "[sangat-rahasia-sanapati]" in out
    )
    assert "  kepala@jakarta.go.id: quarantine  by sangat-rahasia-tahan" in out
    assert "  MATCH sangat-rahasia-tahan for kepala@jakarta.go.id (clause 2.c, 3.b)" in out
    assert "          - recipient kepala@jakarta.go.id is not in set 'secure'" in out
    assert "  no    lampiran-berbahaya (clause 3.b)" in out


def test_policy_and_routes_from_configuration(
    tmp_path: Path, cli: Cli, write_eml: Callable[..., Path]
) -> None:
    site = tmp_path / "local.yaml"
    site.write_text("domains:\n  internal: [pemda-mitra.example]\n")
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"routes:\n  sanapati: smtp://127.0.0.1:10026\npolicy: [{SHIPPED}, local.yaml]\n"
    )
    path = write_eml(subject="[RAHASIA] x", to=("a@pemda-mitra.example",))
    rc, out, err = cli("-c", str(config), "check", "--json", str(path))
    assert rc == 0, err
    assert json.loads(out)["recipients"][0]["action"] == "deliver"

    bad = tmp_path / "gateway-no-route.yaml"
    bad.write_text(f"policy: {SHIPPED}\n")
    rc, _, err = cli("-c", str(bad), "check", str(path))
    assert rc == 1
    assert "unknown route 'sanapati'" in err and str(SHIPPED) in err


def test_failures_are_one_line_exit_1(
    tmp_path: Path, cli: Cli, write_eml: Callable[..., Path]
) -> None:
    rc, _, err = cli("check", "--policy", str(SHIPPED), str(tmp_path / "none.eml"))
    assert rc == 1 and err.startswith("milter: ") and "none.eml" in err
    nobody = write_eml(b"From: a@b.example\r\nSubject: x\r\n\r\nhi\r\n")
    rc, _, err = cli("check", "--policy", str(SHIPPED), str(nobody))
    assert rc == 1 and "no recipients" in err
    config = tmp_path / "gateway.yaml"
    config.write_text("hostname: gw.example\n")
    rc, _, err = cli("-c", str(config), "check", str(nobody))
    assert rc == 1 and "no policy" in err


def test_inspect_and_check_read_labels_with_the_configured_policy(
    tmp_path: Path, cli: Cli, write_eml: Callable[..., Path]
) -> None:
    """An alias and a Purview label GUID known only to the site policy: ``inspect -c`` and
    ``check -c`` both read them; ``inspect`` without a configuration does not."""
    guid = "3a6c2b49-0f4f-4a7e-9b59-2c3f6e3b1d11"
    site = tmp_path / "local.yaml"
    site.write_text(
        "classifications:\n"
        "  RAHASIA: {aliases: [Konfidensial]}\n"
        f"  SANGAT_RAHASIA: {{guids: ['{guid}']}}\n"
    )
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"routes:\n  sanapati: smtp://127.0.0.1:10026\npolicy: [{SHIPPED}, local.yaml]\n"
    )
    alias = write_eml(subject="[KONFIDENSIAL] Nota dinas", to=("warga@gmail.com",))
    label = write_eml(
        subject="Nota dinas",
        to=("warga@gmail.com",),
        headers=[("msip_labels", f"MSIP_Label_{guid}_Enabled=true; MSIP_Label_{guid}_Name=Khusus")],
    )
    for path, level in ((alias, "RAHASIA"), (label, "SANGAT_RAHASIA")):
        rc, out, err = cli("-c", str(config), "inspect", "--json", str(path))
        assert rc == 0, err
        inspected = json.loads(out)
        rc, out, err = cli("-c", str(config), "check", "--json", str(path))
        assert rc == 0, err
        checked = json.loads(out)
        assert inspected["classification"] == checked["classification"] == level
        assert inspected["labels"] == checked["findings"]["labels"]
        rc, out, _ = cli("inspect", "--json", str(path))
        assert rc == 0 and json.loads(out)["classification"] is None
