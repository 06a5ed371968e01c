"""Detectors: validators reject impossible numbers; counts are distinct; keywords add confidence."""

from __future__ import annotations

import pytest

from milter.inspect.detectors import (
    Detector,
    run_detectors,
    valid_card,
    valid_nik,
    valid_nip,
    valid_npwp,
)
from milter.inspect.errors import DetectorError


def _npwp(prefix8: str) -> str:
    """Complete the Luhn check digit of an 8-digit NPWP prefix."""
    from milter.inspect.detectors import luhn

    for d in "0123456789":
        if luhn(prefix8 + d):
            return prefix8 + d
    raise AssertionError("no check digit")


@pytest.mark.parametrize(
    ("nik", "ok"),
    [
        ("3171014101900003", True),  # Jakarta Pusat, woman born 1 Jan 1990
        ("3171010101900003", True),
        ("3171013102900003", False),  # 31 February
        ("2071010101900003", False),  # province 20 does not exist
        ("3100010101900003", False),  # regency 00
        ("3171010101900000", False),  # sequence 0000
        ("1111111111111111", False),
        ("1234567890123456", False),
        ("3171012902000001", True),  # 29 Feb 2000
    ],
)
def test_nik(nik: str, ok: bool) -> None:
    assert valid_nik(nik) is ok


@pytest.mark.parametrize(
    ("nip", "ok"),
    [
        ("198001012005011001", True),
        ("198001012005012001", True),
        ("198001012005013001", False),  # sex digit 3
        ("198001011979011001", False),  # appointed before birth
        ("198013012005011001", False),  # month 13
        ("198001012021211001", True),  # PPPK: non-month in the appointment position
        ("198001012005011000", False),
    ],
)
def test_nip(nip: str, ok: bool) -> None:
    assert valid_nip(nip) is ok


def test_npwp_and_card() -> None:
    good = _npwp("01234567") + "407000"
    assert valid_npwp(good)
    bad = good[:8] + str((int(good[8]) + 1) % 10) + good[9:]
    assert not valid_npwp(bad)
    assert valid_npwp("0" + good)
    assert valid_card("4111111111111111")
    assert not valid_card("4111111111111112")
    assert not valid_card("9111111111111111")  # unknown issuer though Luhn-valid prefixes vary


def test_distinct_counts_and_confidence() -> None:
    text = (
        "Data penduduk: NIK 3171014101900003, dan lagi 3171014101900003.\n"
        + "x" * 400
        + "\nnomor lain 31.7101.010190.0003 tanpa kata kunci"
    )
    d = run_detectors(text)["nik"]
    assert (d.count, d.high_count, d.confidence) == (2, 1, "high")
    lone = run_detectors("nomor 3171010101900003 saja")["nik"]
    assert (lone.count, lone.confidence) == (1, "medium")


def test_no_detection_in_ordinary_numbers() -> None:
    text = "Anggaran Rp 1.234.567.890.123 untuk tahun 2024, telepon 021-3822255, 1234567890123456"
    assert run_detectors(text) == {}


def test_custom_detectors() -> None:
    dets = [
        Detector("proyek", keywords=("Proyek Garuda", "Operasi Elang"), supporting=("rahasia",)),
        Detector("nomor-surat", regex=r"\b\d{3}/SE/\d{4}\b"),
    ]
    text = "Proyek  Garuda dibahas. operasi elang juga, rahasia. Lihat 079/SE/2019 dan 079/SE/2019."
    found = run_detectors(text, dets)
    assert found["proyek"].count == 2 and found["proyek"].high_count == 2
    assert found["nomor-surat"].count == 1 and found["nomor-surat"].confidence == "medium"
    with pytest.raises(DetectorError):
        Detector("x")
    with pytest.raises(DetectorError):
        Detector("x", regex="(")
