"""Findings for people and programs: the JSON ``milter inspect --json`` prints, and text.

The JSON is ``Findings.to_dict`` plus the decoded top-level headers, so a compliance
officer's script sees exactly the fields the policy's conditions read.
"""

from __future__ import annotations

from typing import Any

from milter.inspect.findings import Findings
from milter.text import printable


def to_json(findings: Findings) -> dict[str, Any]:
    """The findings as a JSON-ready dict (``Findings.to_dict`` plus headers)."""
    out = findings.to_dict()
    out["headers"] = [[name, value] for name, value in findings.headers]
    out["text_chars"] = len(findings.text)
    return out


def to_text(findings: Findings) -> str:
    """A readable report: classification, labels with their sources, parts, detectors."""
    lines = [
        f"Subject:        {findings.subject}",
        f"Size:           {findings.size} bytes",
        f"Classification: {findings.classification or '(none)'}",
    ]
    lines.append(f"Labels ({len(findings.labels)}):")
    for label in findings.labels:
        level = label.level or "unknown level"
        why = f" ({label.why})" if label.why else ""
        lines.append(f"  {label.raw!r} -> {level}  [{label.source}]{why}")
    lines.append(f"Parts ({len(findings.parts)}):")
    for part in findings.parts:
        flags = ",".join(sorted(part.flags)) or "-"
        name = f" name={part.filename!r}" if part.filename else ""
        lines.append(
            f"  {part.path}{name} declared={part.declared_type or '-'} "
            f"true={part.true_type} ext={part.extension or '-'} size={part.size} "
            f"depth={part.depth} flags={flags}"
        )
        if part.reason:
            lines.append(f"      unscannable: {part.reason}")
    lines.append("Detectors:")
    if not findings.detectors:
        lines.append("  (none)")
    for name, det in sorted(findings.detectors.items()):
        lines.append(
            f"  {name}: {det.count} distinct, confidence {det.confidence} "
            f"({det.high_count} with supporting keywords)"
        )
    if findings.drafts:
        lines.append(f"Drafts ({len(findings.drafts)}):")
        lines.extend(f"  {d.evidence}  [{d.source}]" for d in findings.drafts)
    if findings.unscannable:
        lines.append("Unscannable:")
        lines.extend(f"  {reason}" for reason in findings.unscannable)
    if findings.defects:
        lines.append(f"MIME defects ({len(findings.defects)}):")
        lines.extend(f"  {defect}" for defect in findings.defects)
    # Subjects, file names and evidence come from the message: no line may carry a
    # control character to the reader's terminal.
    return "\n".join(printable(line) for line in lines) + "\n"
