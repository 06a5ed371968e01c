"""Hostile messages from the bounded-inspection issue: each finishes fast, in bounded memory,
and is either read to its label or reported ``unscannable`` with a reason, never passed clean.

The messages are built in memory (``tests.inspect.hostile``) at the sizes that were
reported. Time is measured without tracing and memory in a second, traced run; the
bounds are regression guards generous enough for a loaded 2-core machine (each case
took from 0.01 to about 1.5 s after the fix, and from 1.4 to 88 s before it).
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable

import pytest

from milter.config import InspectLimits
from milter.inspect import inspect_message
from milter.inspect.findings import Findings
from tests.inspect import hostile

MB = 1 << 20


def _run(data: bytes) -> tuple[Findings, float, int]:
    started = time.perf_counter()
    findings = inspect_message(data, limits=InspectLimits())
    took = time.perf_counter() - started
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        inspect_message(data, limits=InspectLimits())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return findings, took, peak


def _never_clean(findings: Findings) -> str:
    """The label found, or the reason it could not be; fails on a clean pass."""
    if findings.classification == "SANGAT_RAHASIA":
        return "label"
    reasons = list(findings.unscannable) + [p.reason or "" for p in findings.parts if p.reason]
    assert findings.any_unscannable() and all(reasons), f"passed as clean: {findings.to_dict()}"
    return reasons[0]


# (builder, seconds, memory bound as a multiple of the message, plus a fixed allowance)
CASES: dict[str, tuple[Callable[[], bytes], float, float]] = {
    "garbage-base64-20MB": (hostile.garbage_base64, 2.0, 3.0),
    "pdf-1GB-flate-of-zeros": (hostile.pdf_flate_bomb, 2.0, 3.0),
    "docx-30MB-zero-document": (hostile.docx_zero_bomb, 2.0, 3.0),
    "200000-unclosed-nested-boundaries": (hostile.unclosed_boundaries, 2.0, 1.0),
    "200000-delimiters-never-closed": (hostile.unclosed_boundaries_flat, 2.0, 1.0),
    "200000-multipart-message-chain": (hostile.multipart_message_chain, 2.0, 1.0),
    "docx-9MB-spaces-before-label": (hostile.docx_padded, 2.0, 3.0),
    "pdf-200MB-spaces-before-label": (hostile.pdf_padded, 4.0, 3.0),
    "docx-25000-unterminated-properties": (hostile.docx_unterminated_properties, 2.0, 3.0),
    "html-60000-comment-openers": (hostile.html_comments, 2.0, 3.0),
    "html-40000-script-openers": (hostile.html_scripts, 2.0, 3.0),
}
ALLOWANCE = 8 * MB  # decoder chunks, libmagic buffers, the part records


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_message_is_bounded_and_never_clean(name: str) -> None:
    build, seconds, multiple = CASES[name]
    data = build()
    findings, took, peak = _run(data)
    outcome = _never_clean(findings)
    assert took < seconds, f"{name}: {took:.2f} s ({outcome})"
    assert peak < multiple * len(data) + ALLOWANCE, f"{name}: peak {peak / MB:.1f} MB"
    assert not any(r.startswith("internal error") for r in findings.unscannable)


def test_padding_is_read_past_to_the_label() -> None:
    for build in (hostile.docx_padded, hostile.pdf_padded):
        findings = inspect_message(build())
        assert findings.classification == "SANGAT_RAHASIA"
        assert not findings.any_unscannable()


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (hostile.pdf_flate_bomb, "PDF expansion ratio limit reached"),
        (hostile.docx_zero_bomb, "expansion ratio limit reached in word/document.xml"),
        (hostile.garbage_base64, "base64 data after padding"),
    ],
)
def test_bombs_name_their_reason_on_the_part(build: Callable[[], bytes], reason: str) -> None:
    findings = inspect_message(build())
    assert reason in [p.reason for p in findings.parts]


def test_a_document_part_cut_at_a_limit_is_unscannable() -> None:
    # Not padding: 9 MB of text before the label, which no limit lets through whole.
    findings = inspect_message(hostile.docx_padded(9 * MB, filler=b"x"))
    reason = _never_clean(findings)
    assert "word/document.xml" in reason


def test_unclosed_markup_costs_linear_time() -> None:
    # Ten times the reported counts: a quadratic scan would take hours.
    for data in (hostile.html_comments(600_000), hostile.html_scripts(400_000)):
        started = time.perf_counter()
        findings = inspect_message(data)
        assert time.perf_counter() - started < 5
        assert findings.classification == "SANGAT_RAHASIA"
