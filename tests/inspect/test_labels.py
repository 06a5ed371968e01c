"""Label scheme and marking recognition, including prose that must not count."""

from __future__ import annotations

import base64
import json
import pickle

import pytest

from milter.inspect.errors import LabelSchemeError
from milter.inspect.labels import (
    DEFAULT_SCHEME,
    LabelScheme,
    marking_lines,
    msip_header_markings,
    sensitivity_marking,
    subject_markings,
    titus_markings,
)

S = DEFAULT_SCHEME
GUID = "3a9f2c1e-0b7d-4e51-9c2a-7f1d8e6b5a40"


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("RAHASIA", "RAHASIA"),
        ("rahasia", "RAHASIA"),
        ("Sangat Rahasia", "SANGAT_RAHASIA"),
        ("sangat_rahasia", "SANGAT_RAHASIA"),
        ("Top  Secret", "SANGAT_RAHASIA"),
        ("Highly Confidential", "SANGAT_RAHASIA"),
        ("Strictly Confidential", "SANGAT_RAHASIA"),
        ("Confidential", "RAHASIA"),
        ("Internal", "TERBATAS"),
        ("Restricted", "TERBATAS"),
        ("Public", "BIASA"),
        ("Terbuka", "BIASA"),
        ("General", None),
        ("", None),
    ],
)
def test_resolve(name: str, level: str | None) -> None:
    assert S.resolve(name) == level


def test_rank_and_highest() -> None:
    assert [S.rank(x) for x in S.levels] == [0, 1, 2, 3]
    assert S.rank("NOPE") == -1
    assert S.highest(["TERBATAS", None, "SANGAT_RAHASIA", "RAHASIA"]) == "SANGAT_RAHASIA"
    assert S.highest([None, "NOPE"]) is None


def test_scheme_from_policy_with_guids_pickles() -> None:
    scheme = LabelScheme(
        levels=("LOW", "HIGH"), aliases={"secret": "HIGH"}, guids={GUID.upper(): "HIGH"}
    )
    assert scheme.resolve("Secret") == "HIGH"
    assert scheme.resolve("{" + GUID + "}") == "HIGH"
    assert scheme.resolve_guid(GUID) == "HIGH"
    assert pickle.loads(pickle.dumps(scheme)).resolve("secret") == "HIGH"


def test_invalid_scheme() -> None:
    with pytest.raises(LabelSchemeError):
        LabelScheme(levels=())
    with pytest.raises(LabelSchemeError):
        LabelScheme(levels=("A",), aliases={"b": "B"})


@pytest.mark.parametrize(
    ("subject", "found"),
    [
        ("[RAHASIA] Laporan", ["RAHASIA"]),
        ("RE: Fwd: [rahasia] Laporan", ["rahasia"]),
        ("(TERBATAS) Undangan", ["TERBATAS"]),
        ("RAHASIA: data pegawai", ["RAHASIA"]),
        ("[SANGAT RAHASIA] nota", ["SANGAT RAHASIA"]),
        ("Nota dinas [Sangat Rahasia]", ["Sangat Rahasia"]),
        ("Laporan (Confidential)", ["Confidential"]),
        ("Resep rahasia keluarga", []),
        ("Informasi terbatas pada peserta rapat", []),
        ("Rapat [internal] dan lainnya sangat rahasia", []),
        ("", []),
    ],
)
def test_subject_markings(subject: str, found: list[str]) -> None:
    assert subject_markings(subject, S) == found


def test_marking_lines_top_and_bottom_only_capitals() -> None:
    body = "RAHASIA\n\nKepada Yth.\n" + "isi surat biasa\n" * 30 + "SANGAT RAHASIA\n"
    assert marking_lines(body, S) == ["RAHASIA", "SANGAT RAHASIA"]
    middle = "a\n" * 20 + "RAHASIA\n" + "b\n" * 20
    assert marking_lines(middle, S) == []


@pytest.mark.parametrize(
    "prose",
    [
        "Ini resep rahasia keluarga kami.",
        "Informasi terbatas pada peserta rapat saja.",
        "Rahasia\n",  # not in capitals
        "Ini RAHASIA umum.",  # capitals inside a sentence
        "Dokumen ini bersifat rahasia dan terbatas.",
    ],
)
def test_prose_is_not_a_marking(prose: str) -> None:
    assert marking_lines(prose, S) == []
    assert subject_markings(prose, S) == []


def test_msip_header_folded() -> None:
    value = (
        f"MSIP_Label_{GUID}_Enabled=true; MSIP_Label_{GUID}_SetDate=2024-01-01T00:00:00Z;\r\n"
        f" MSIP_Label_{GUID}_Name=Highly Confidential;\r\n MSIP_Label_{GUID}_ContentBits=0"
    )
    [m] = msip_header_markings(value, S)
    assert (m.raw, m.level) == ("Highly Confidential", "SANGAT_RAHASIA")
    by_guid = LabelScheme(levels=S.levels, aliases=S.aliases, guids={GUID: "TERBATAS"})
    assert msip_header_markings(value, by_guid)[0].level == "TERBATAS"
    disabled = value.replace("Enabled=true", "Enabled=false")
    assert msip_header_markings(disabled, S) == []


def test_titus_and_sensitivity() -> None:
    doc = {"Metadata": {"props": [{"n": "Classification", "vals": [{"value": "CONFIDENTIAL"}]}]}}
    encoded = base64.b64encode(json.dumps(doc).encode()).decode()
    [m] = titus_markings(encoded, S)
    assert m.level == "RAHASIA"
    assert titus_markings("!!!not base64", S) == []
    company = sensitivity_marking("Company-Confidential", S)
    assert company is not None and company.level == "RAHASIA"
    personal = sensitivity_marking("Personal", S)
    assert personal is not None and personal.level is None
