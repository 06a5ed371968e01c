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
    assert (lone.count, lone.confidence) == (1, "low")


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
    assert found["nomor-surat"].count == 1 and found["nomor-surat"].confidence == "low"
    with pytest.raises(DetectorError):
        Detector("x")
    with pytest.raises(DetectorError):
        Detector("x", regex="(")


@pytest.mark.parametrize(
    ("nik", "ok"),
    [
        ("1101014101900003", True),  # Aceh, kabupaten 01
        ("9471010101900003", True),  # a kota of Papua
        ("3141010101900003", False),  # regency 41: no province has that many kabupaten
        ("3180010101900003", False),  # regency 80: past the kota codes
        ("3171000101900003", False),  # district 00
        ("3171017201900003", False),  # day 72 - 40 = 32
        ("3171010013900003", False),  # month 13
        ("3171014113900003", False),  # woman, month 13
        ("3171017101900003", True),  # woman born on the 31st
        ("3171012902010001", False),  # 29 Feb 2001
        ("3171012902040001", True),  # 29 Feb 2004
        ("3171010101900000", False),  # serial 0000
        ("3771010101900001", False),  # province 37 does not exist
        ("9971010101900001", False),  # nor 99
    ],
)
def test_nik_structure(nik: str, ok: bool) -> None:
    assert valid_nik(nik) is ok


def test_nik_grouped_and_dotted_forms() -> None:
    text = (
        "NIK: 3171 0141 0190 0003, 3171.0141.0190.0004, 31.7101.410190.0005, "
        "317101 410190 0006 dan 3171014101900007"
    )
    d = run_detectors(text)["nik"]
    assert (d.count, d.high_count) == (5, 5)
    # A grouped number inside a longer run of digit groups is not a NIK.
    assert "nik" not in run_detectors("12 3171 0141 0190 0003")
    assert "nik" not in run_detectors("3171 0141 0190 0003 5")
    # Mixed separators are not one number.
    assert "nik" not in run_detectors("3171 0141.0190 0003")


def _valid(n: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        number = str(rng.randrange(10**15, 10**16))
        if valid_nik(number):
            out.add(number)
    return sorted(out)


def test_structure_alone_is_low_confidence() -> None:
    """Random references can have a NIK's structure: without a keyword or a NIK column
    they count, but only at low confidence."""
    refs = _valid(300, 1)
    csv = "order_id,amount\n" + "".join(f"{r},5000\n" for r in refs)
    d = run_detectors(csv)["nik"]
    assert (d.count, d.high_count, d.low_count, d.confidence) == (300, 0, 300, "low")


@pytest.mark.parametrize(
    ("header", "sep"),
    [
        ("No,Nama,NIK,Alamat", ","),
        ("No;Nama;No. KTP;Alamat", ";"),
        ("No\tNama\tNomor Induk Kependudukan\tAlamat", "\t"),
        ("No|Nama|No. Identitas|Alamat", "|"),
    ],
)
def test_column_header_gives_high_confidence_far_down(header: str, sep: str) -> None:
    values = _valid(300, 2)
    rows = [header] + [sep.join((str(i), f"Warga {i}", v, "Gambir")) for i, v in enumerate(values)]
    d = run_detectors("\n".join(rows))["nik"]
    assert (d.count, d.high_count) == (300, 300)


def test_only_the_headed_column_is_supported() -> None:
    niks = _valid(40, 3)
    refs = _valid(40, 4)
    rows = ["NIK,Referensi"] + [f"{n},{r}" for n, r in zip(niks, refs, strict=True)]
    d = run_detectors("\n".join(rows) + "\n" + "x" * 400)["nik"]
    # the first rows' references sit within 300 characters of the header keyword
    assert d.count == 80 and 40 <= d.high_count < 50
    # A header with a number in it is data, not a header.
    data = "NIK 3171014101900003,x\n" + "\n".join(f"{r},y" for r in refs) + "\n" + "x" * 400
    assert run_detectors(data)["nik"].high_count < 20  # proximity only


def test_detection_reports_counts_per_confidence() -> None:
    text = "NIK 3171014101900003\n" + "x" * 400 + "\n3171010101900003 3171010201900003"
    d = run_detectors(text)["nik"]
    assert d.to_dict() == {"count": 3, "confidence": "high", "high_count": 1, "low_count": 2}
