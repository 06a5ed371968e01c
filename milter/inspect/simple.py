"""Which messages are cheap enough to inspect on the spot.

Inspection normally runs in a child process that is killed at its hard budget,
because hostile attachments (a decompression bomb, a crafted PDF, a scan for OCR)
can cost far more than their size suggests. Handing a message to a child costs
something too: pickling, two pipe transfers and two wake-ups, which for a 5 KB
note is more CPU than inspecting it (measured with ``make bench``: about a third
of the gateway's CPU per 5 KB message with the shipped policy).

A message qualifies only when its cost is bounded by its size: it is small and
every part is plain or HTML text (or the multipart framing around such parts),
with a transfer encoding whose decoding is linear. Nothing in it is unpacked,
rendered, decompressed or OCR'd, and the text passes (labels, detectors, HTML
to text) are linear, so its inspection takes a fraction of a millisecond per
kilobyte whatever the bytes are. Anything this check cannot read with certainty
(a folded or missing type, an unknown encoding, an embedded message, uuencoded
lines) goes to the child as before: the check may refuse a simple message, never
admit a costly one.
"""

from __future__ import annotations

# Content-Type values whose parts need no more than text decoding.
_SIMPLE_TYPES = frozenset(
    {
        b"text/plain",
        b"text/html",
        b"multipart/mixed",
        b"multipart/alternative",
        b"multipart/related",
    }
)
_SIMPLE_ENCODINGS = frozenset({b"7bit", b"8bit", b"quoted-printable", b"base64", b"binary"})

_FIELDS = (b"content-type", b"content-transfer-encoding", b"content-disposition")
_OCTAL = frozenset(b"01234567")


def _line_start(low: bytes, pos: int) -> int:
    return low.rfind(b"\n", 0, pos) + 1


def cheap_to_inspect(data: bytes, limit: int) -> bool:
    """True when ``data`` is at most ``limit`` bytes of text parts only (see above).

    Lower-cased once and searched with ``bytes.find``, so the check costs a few
    microseconds per kilobyte: it runs on every small message, and a check as dear as
    the inspection it spares would spare nothing. Every line starting with one of the
    fields counts, in a part's head or not: a body line that merely looks like one
    makes the check stricter, never looser.
    """
    if len(data) > limit:
        return False
    low = data.lower()
    pos = low.find(b"content-")
    while pos >= 0:
        if pos == 0 or low[pos - 1] == 0x0A:  # at the start of a line
            eol = low.find(b"\n", pos)
            line = low[pos : eol if eol >= 0 else len(low)]
            name, colon, value = line.partition(b":")
            name = name.rstrip(b" \t")
            if name in _FIELDS:
                if not colon:
                    return False
                token = value.split(b";", 1)[0].strip()
                if name == b"content-type":
                    if token not in _SIMPLE_TYPES:
                        return False
                elif name == b"content-disposition":
                    if token != b"inline":
                        return False
                elif token not in _SIMPLE_ENCODINGS:
                    return False
        pos = low.find(b"content-", pos + 8)
    # A part with a name is a file to the inspector (its true type is sniffed and, for
    # an archive or a document, unpacked), whatever type it declares: ``name`` or
    # ``filename`` on a Content-* line or on a folded continuation line.
    pos = low.find(b"name")
    while pos >= 0:
        start = _line_start(low, pos)
        if low[start : start + 1] in (b" ", b"\t") or low.startswith(b"content-", start):
            return False
        pos = low.find(b"name", pos + 4)
    # uuencoded files and BinHex are decoded by the inspector from text bodies.
    if b"(this file must be converted" in low:
        return False
    pos = low.find(b"begin ")
    while pos >= 0:
        if (
            (pos == 0 or low[pos - 1] == 0x0A)
            and low[pos + 6 : pos + 7]
            and (low[pos + 6] in _OCTAL)
        ):
            return False
        pos = low.find(b"begin ", pos + 6)
    return True
