"""The inspector's exception tree.

``inspect_message`` itself never raises: limits and malformed input become findings.
These exceptions travel between the inspector's own modules (a limit reached deep in
a nested archive unwinds to the place that records it) and signal invalid
configuration (a label scheme or detector that cannot work) at load time.
"""

from __future__ import annotations


class InspectError(Exception):
    """Base of every error the inspector defines."""


class LabelSchemeError(InspectError, ValueError):
    """A label scheme that cannot be used (no levels, aliases naming unknown levels)."""


class DetectorError(InspectError, ValueError):
    """A detector definition that cannot be used (no pattern, an invalid regex)."""


class LimitReached(InspectError):
    """An inspection limit was reached; the message is recorded as unscannable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BudgetExceeded(LimitReached):
    """The per-message time budget ran out."""


class DocumentError(InspectError):
    """A document or archive that could not be read (truncated, corrupt, unsupported)."""
