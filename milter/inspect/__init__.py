"""Inspection: message bytes in, ``Findings`` out (DESIGN.md section 2).

Pure code: no sockets, no disk, no asyncio. The gateway calls ``inspect_message`` from
a worker thread or process, so it is a plain module-level function whose arguments
and result pickle. It never raises: malformed mail, limits and even internal errors
become findings the policy can act on (``unscannable``), because an exception here
would turn one odd message into a stuck queue.
"""

from __future__ import annotations

from collections.abc import Sequence

from milter.config import InspectLimits
from milter.inspect.detectors import Detector, run_detectors
from milter.inspect.errors import LimitReached
from milter.inspect.findings import Findings
from milter.inspect.labels import DEFAULT_SCHEME, LabelScheme
from milter.inspect.ocr import Deferred
from milter.inspect.scan import Context, scan_message

__all__ = ["DEFAULT_SCHEME", "Detector", "LabelScheme", "inspect_message"]


def inspect_message(
    data: bytes,
    *,
    scheme: LabelScheme = DEFAULT_SCHEME,
    limits: InspectLimits | None = None,
    detectors: Sequence[Detector] = (),
    ocr_lane: Deferred | None = None,
) -> Findings:
    """Everything the inspector can see in ``data``, within ``limits``; never raises.
    ``ocr_lane`` leaves OCR to other processes (``milter.inspect.ocr.Deferred``)."""
    ctx = Context(scheme, limits or InspectLimits(), ocr_lane)
    try:
        scan_message(ctx, bytes(data))
    except RecursionError:
        ctx.note_unscannable("nesting too deep")
    except LimitReached as exc:
        ctx.note_unscannable(exc.reason)
    except Exception as exc:  # the contract: any failure is a finding, never an exception
        ctx.note_unscannable(f"internal error: {type(exc).__name__}")
    text = "\n\n".join(ctx.text)
    try:
        found = run_detectors(text, detectors)
    except Exception as exc:  # a policy regex gone wrong must not lose the message
        ctx.note_unscannable(f"internal error: {type(exc).__name__}")
        found = {}
    labels = tuple(ctx.labels)
    return Findings(
        classification=scheme.highest(label.level for label in labels),
        labels=labels,
        parts=tuple(p for p in ctx.parts if p is not None),
        detectors=found,
        defects=tuple(ctx.defects),
        unscannable=tuple(ctx.unscannable),
        headers=ctx.headers,
        subject=ctx.subject,
        size=len(data),
        text=text,
        drafts=tuple(ctx.drafts),
    )
