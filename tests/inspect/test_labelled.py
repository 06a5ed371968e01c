"""The labelled fixtures: every marking found at its level, nothing found in ordinary mail.

``tests/labelled/index.tsv`` lists real messages (documents written part by part as
office suites write them, some by LibreOffice itself) with the level, draft and bulk
personal data verdict each must get; ``bench/bench_detection.py`` prints the same
figures per category.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_detection import CATEGORIES, LABELLED, Category, measure
from milter.inspect import inspect_message


@pytest.fixture(scope="module")
def results() -> dict[str, Category]:
    return measure()


def test_index_lists_every_fixture() -> None:
    listed = {
        line.split("\t", 1)[0]
        for line in (LABELLED / "index.tsv").read_text(encoding="utf-8").splitlines()[1:]
        if line.strip()
    }
    on_disk = {
        str(p.relative_to(LABELLED))
        for category in CATEGORIES
        for p in (LABELLED / category).glob("*")
        if p.is_file() and p.suffix != ".md"
    }
    assert listed == on_disk
    assert len(listed) >= 60


@pytest.mark.parametrize("category", CATEGORIES)
def test_recall_and_false_positives(category: str, results: dict[str, Category]) -> None:
    cat = results[category]
    for kind, tally in (("level", cat.level), ("draft", cat.draft), ("bulk", cat.bulk)):
        assert tally.misses == [], f"{category}: {kind} missed"
        assert tally.false == [], f"{category}: {kind} false positives"
        assert tally.found == tally.positives
        assert tally.false_positives == 0


def test_categories_are_exercised(results: dict[str, Category]) -> None:
    """Each category but the scans has fixtures on both sides of what it measures."""
    assert results["letters"].level.positives >= 10 and results["letters"].level.negatives >= 2
    assert results["documents"].level.positives >= 10
    assert results["documents"].draft.positives >= 8 and results["documents"].draft.negatives >= 2
    assert results["subjects"].level.positives >= 10
    assert results["prose"].level.negatives >= 12
    assert results["nik"].bulk.positives >= 4 and results["nik"].bulk.negatives >= 4


def test_every_label_says_why() -> None:
    for path in sorted(LABELLED.glob("*/*.eml")):
        for label in inspect_message(path.read_bytes()).labels:
            assert label.why, (path.name, label)


def test_empty_category_is_reported_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "index.tsv").write_text("file\tcategory\tlevel\tdraft\tbulk\tnote\n")
    empty = measure(tmp_path)
    assert empty["scans"].fixtures == 0 and empty["scans"].level.recall() is None
