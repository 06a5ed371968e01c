"""Recall and false positives of the inspector on the labelled fixtures, per category.

Each fixture in ``tests/labelled/index.tsv`` says which level it carries (``-``: none),
whether it is a draft, and whether it is bulk personal data. Each is inspected with the
shipped policy's label scheme and evaluated by the shipped policy for an outside
recipient, so the figures are what the gateway would do:

- level: recall is the share of labelled fixtures whose classification is exactly the
  expected level; a false positive is an unlabelled fixture given any level.
- draft: a ``draft`` finding where expected (recall), and none elsewhere.
- bulk: the shipped bulk personal data rule holds the fixture where expected (recall),
  and nowhere else.

    .venv/bin/python -m bench.bench_detection [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from milter.envelope import Envelope
from milter.inspect import inspect_message
from milter.policy.engine import Policy

ROOT = Path(__file__).resolve().parents[1]
LABELLED = ROOT / "tests" / "labelled"
SHIPPED = ROOT / "milter" / "shipped" / "se-79-2019.yaml"
CATEGORIES = ("scans", "letters", "documents", "subjects", "prose", "nik")
BULK_RULE = "data-pribadi-massal"
OUTSIDE = "warga@gmail.com"


@dataclass
class Tally:
    """Expected positives found, and false positives among the expected negatives."""

    positives: int = 0
    found: int = 0
    negatives: int = 0
    false_positives: int = 0
    misses: list[str] = field(default_factory=list)
    false: list[str] = field(default_factory=list)

    def recall(self) -> float | None:
        return self.found / self.positives if self.positives else None


@dataclass
class Category:
    level: Tally = field(default_factory=Tally)
    draft: Tally = field(default_factory=Tally)
    bulk: Tally = field(default_factory=Tally)
    fixtures: int = 0


def _rows(index: Path) -> list[list[str]]:
    if not index.is_file():
        return []
    rows = []
    for line in index.read_text(encoding="utf-8").splitlines()[1:]:
        if line.strip():
            rows.append(line.split("\t"))
    return rows


def _count(tally: Tally, name: str, expected: bool, got: bool) -> None:
    if expected:
        tally.positives += 1
        if got:
            tally.found += 1
        else:
            tally.misses.append(name)
    else:
        tally.negatives += 1
        if got:
            tally.false_positives += 1
            tally.false.append(name)


def measure(labelled: Path = LABELLED, policy_path: Path = SHIPPED) -> dict[str, Category]:
    """Per category, the tallies over every fixture listed in the index."""
    policy = Policy.load([str(policy_path)])
    out = {c: Category() for c in CATEGORIES}
    for file, category, level, draft, bulk, *_note in _rows(labelled / "index.tsv"):
        data = (labelled / file).read_bytes()
        findings = inspect_message(data, scheme=policy.scheme)
        verdict = policy.evaluate(Envelope("budi@jakarta.go.id", (OUTSIDE,)), findings)
        held = any(r.name == BULK_RULE and r.matched for r in verdict.rules)
        cat = out.setdefault(category, Category())
        cat.fixtures += 1
        if level == "-":
            _count(cat.level, file, False, findings.classification is not None)
        else:
            _count(cat.level, file, True, findings.classification == level)
        _count(cat.draft, file, draft == "yes", bool(findings.drafts))
        _count(cat.bulk, file, bulk == "yes", held)
    return out


def _pct(value: float | None) -> str:
    return "   -  " if value is None else f"{value * 100:5.1f}%"


def report(results: dict[str, Category]) -> str:
    lines = [
        f"{'category':<10} {'n':>3}  {'level recall':>14} {'FP':>6}  "
        f"{'draft recall':>14} {'FP':>6}  {'bulk recall':>14} {'FP':>6}"
    ]
    for name, cat in results.items():
        cells = []
        for t in (cat.level, cat.draft, cat.bulk):
            found = f"{t.found:>3}/{t.positives:<3}"
            cells.append(f"{_pct(t.recall())} {found} {t.false_positives:>2}/{t.negatives:<3}")
        lines.append(f"{name:<10} {cat.fixtures:>3}  " + "  ".join(cells))
    for cat in results.values():
        for kind, t in (("level", cat.level), ("draft", cat.draft), ("bulk", cat.bulk)):
            for f in t.misses:
                lines.append(f"  missed {kind}: {f}")
            for f in t.false:
                lines.append(f"  false {kind}: {f}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print the tallies as JSON")
    args = ap.parse_args()
    results = measure()
    if args.json:
        json.dump(
            {
                name: {
                    kind: {
                        "positives": t.positives,
                        "found": t.found,
                        "negatives": t.negatives,
                        "false_positives": t.false_positives,
                    }
                    for kind, t in (("level", c.level), ("draft", c.draft), ("bulk", c.bulk))
                }
                for name, c in results.items()
            },
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
    else:
        sys.stdout.write(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
