"""Findings: everything the inspector saw in a message, and nothing it decided.

This module is the contract between ``milter.inspect`` (which fills it) and
``milter.policy`` (which reads it). Values are frozen so a policy can never change
what was observed, and every field is JSON-serialisable through ``to_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Flags a Part can carry. Policy conditions refer to these names.
ENCRYPTED = "encrypted"  # zip entry password, OLE EncryptedPackage, PDF /Encrypt, 7z/rar
MISMATCH = "mismatch"  # true type contradicts declared type or file-name extension
EXECUTABLE = "executable"  # PE, ELF, Mach-O, MSI, LNK, scripts, ISO/IMG
MACRO = "macro"  # macro-enabled Office (vbaProject.bin, .docm/.xlsm, OLE macros)
SIGNED = "signed"  # S/MIME or PGP signature structure
UNSCANNABLE = "unscannable"  # could not be fully examined; see Part.reason
ARCHIVE = "archive"  # zip, tar, gz, 7z, rar ...
ATTACHMENT = "attachment"  # a file (as opposed to a body text part)
IMAGE_ONLY = "image_only"  # an image or a PDF page without text: only OCR reads it


@dataclass(frozen=True)
class Label:
    """One classification marking and where it was found.

    ``level`` is the canonical level name from the label scheme (``RAHASIA``,
    ``SANGAT_RAHASIA`` ...) or None when the marking is not a known level
    (for example a Purview label whose GUID the scheme does not map).
    ``source`` is a location such as ``subject``, ``header:msip_labels``,
    ``body``, ``attachment:laporan.zip/nota.docx:docProps/custom.xml``.
    """

    raw: str
    source: str
    level: str | None = None
    # The position and form that made the text a marking ("letter header field Sifat",
    # "subject tag", "page header line", "document property Title", "watermark" ...).
    why: str = ""
    # Read by OCR: where on the scan and how sure the engine was; None for written text.
    ocr: OcrSpot | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "raw": self.raw,
            "source": self.source,
            "level": self.level,
            "why": self.why,
        }
        if self.ocr is not None:
            d["ocr"] = self.ocr.to_dict()
        return d


@dataclass(frozen=True)
class OcrSpot:
    """Where a label read by OCR sat: page (from 1), band (``top`` or ``bottom``, where
    Perka ANRI 17/2011 puts markings, or ``page`` for the rest) and the engine's
    confidence (0..1) in the line. In JSON: ``{"source": "ocr", "page", "band", ...}``."""

    page: int
    band: str
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": "ocr",
            "page": self.page,
            "band": self.band,
            "confidence": round(self.confidence, 2),
        }


@dataclass(frozen=True)
class Part:
    """One MIME leaf, archive member or embedded file.

    ``path`` is the nesting path (``laporan.zip/nota.docx``), ``depth`` counts the
    containers above it (a top-level attachment has depth 1, a file inside a zip 2).
    ``true_type`` is the MIME type libmagic reports from the content.
    """

    path: str
    filename: str | None
    declared_type: str
    true_type: str
    extension: str
    size: int
    depth: int
    flags: frozenset[str] = frozenset()
    reason: str | None = None  # why it is unscannable, when it is

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "filename": self.filename,
            "declared_type": self.declared_type,
            "true_type": self.true_type,
            "extension": self.extension,
            "size": self.size,
            "depth": self.depth,
            "flags": sorted(self.flags),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Detection:
    """A sensitive-data detector's result: distinct valid values, not raw matches."""

    name: str  # "nik", "nip", "npwp", "card", or a policy-supplied name
    count: int  # distinct valid values
    confidence: str  # "high" (a supporting keyword near some value) or "low"
    high_count: int = 0  # distinct values that had a supporting keyword nearby

    @property
    def low_count(self) -> int:
        """Distinct values found without a supporting keyword nearby."""
        return self.count - self.high_count

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "confidence": self.confidence,
            "high_count": self.high_count,
            "low_count": self.low_count,
        }


@dataclass(frozen=True)
class Draft:
    """A document visibly not final (clause 2.f): tracked changes, comments, a draft marking.

    ``evidence`` says what was seen (``3 tracked insertions``, ``marking line KONSEP``,
    ``review annotation Highlight``); ``source`` is where, as for labels.
    """

    source: str
    evidence: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "evidence": self.evidence}


@dataclass(frozen=True)
class Findings:
    """What one message contains, as far as the inspector could see.

    ``text`` is the bounded extracted text (bodies and attachment text) that content
    conditions with policy-supplied keywords and regular expressions run against.
    ``headers`` are the top-level headers, decoded, in order.
    ``unscannable`` lists message-level reasons (limits reached, time budget, ...);
    part-level reasons are on the parts.
    """

    classification: str | None = None
    labels: tuple[Label, ...] = ()
    parts: tuple[Part, ...] = ()
    detectors: dict[str, Detection] = field(default_factory=dict)
    defects: tuple[str, ...] = ()
    unscannable: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    subject: str = ""
    size: int = 0
    text: str = ""
    drafts: tuple[Draft, ...] = ()

    @property
    def attachments(self) -> tuple[Part, ...]:
        return tuple(p for p in self.parts if ATTACHMENT in p.flags)

    def any_unscannable(self) -> bool:
        return bool(self.unscannable) or any(UNSCANNABLE in p.flags for p in self.parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "classification": self.classification,
            "labels": [x.to_dict() for x in self.labels],
            "attachments": [p.to_dict() for p in self.parts],
            "detectors": {k: v.to_dict() for k, v in sorted(self.detectors.items())},
            "defects": list(self.defects),
            "unscannable": list(self.unscannable),
            "subject": self.subject,
            "size": self.size,
            "drafts": [d.to_dict() for d in self.drafts],
        }
