"""Bounded decoding: inflate and read within a byte budget, and strip markup in linear time.

Hostile mail is built to make a reader do far more work than the message is big: a
megabyte of Flate that inflates to a gigabyte, hundreds of megabytes of spaces before
the one line that matters, thousands of opening tags that a lazy ``.*?`` pattern
rescans to the end of the text for each. So every decoder here:

- keeps at most ``limit`` bytes and at most ``ratio`` times the compressed bytes it
  consumed (after a small allowance), and says when it stopped early, because a cut
  read is a finding (``unscannable``), never a pass;
- skips long runs of whitespace instead of keeping them (``squeeze``): padding is the
  cheapest way to push a marking past a read limit, and it carries no content, so it
  costs neither budget nor memory;
- never hands attacker input to a pattern that can rescan it: the helpers for closed
  elements cut the text after the last closing token and search for closers
  monotonically, so each byte is looked at a bounded number of times.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

# A run of whitespace at least this long is padding; shorter runs are layout and are
# kept byte for byte, so ordinary documents read exactly as before.
PAD_RUN = 1024
# Streams smaller than this are kept as they are: padding that could matter to memory
# or time is large by definition, and squeezing a small stream costs more than it saves.
SQUEEZE_MIN = 256 << 10
CHUNK = 1 << 20
# Compressed input is fed in slices this big: zlib copies what it has not consumed
# after each output chunk, and a small slice keeps that copy small.
FEED = 64 << 10
# Kept bytes allowed before the expansion ratio applies (a small but dense stream).
RATIO_ALLOWANCE = 1 << 20
# ``bytes.isspace`` whitespace, so a chunk that is all padding is told in one call.
_PAD = re.compile(rb"[ \t\n\v\f\r]{%d,}" % PAD_RUN)


def _pad_marker(m: re.Match[bytes]) -> bytes:
    return b"\n" if b"\n" in m.group() else b" "


def squeeze(chunk: bytes) -> bytes:
    """``chunk`` with every whitespace run of ``PAD_RUN`` bytes or more made one byte.

    A run holding a line end becomes a line end, so line structure (markings are
    lines) survives; any other run becomes one space, which still separates tokens.
    """
    if chunk.isspace():  # the middle of a long run of padding: one pass, no match object
        return b"\n" if b"\n" in chunk else b" "
    return _PAD.sub(_pad_marker, chunk)


@dataclass
class Decoded:
    """What a bounded decoder kept, how much it produced, and why it stopped early."""

    data: bytes
    produced: int  # bytes the decoder produced, padding included
    cut: str | None = None  # the limit that stopped it; None when it read to the end


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _over_ratio(kept: int, consumed: int, ratio: float) -> bool:
    return kept > RATIO_ALLOWANCE and kept > ratio * max(consumed, 1)


def inflate(
    raw: bytes,
    *,
    limit: int,
    ratio: float,
    pad: bool = True,
    check: Callable[[], None] | None = None,
) -> Decoded | None:
    """Inflate a zlib stream into at most ``limit`` kept bytes; None if it is not zlib.

    Input is fed in slices so a stream that stops early never copies the rest of its
    input; output comes in ``CHUNK`` pieces, squeezed when ``pad`` (text-like streams),
    and the expansion ratio is checked against the compressed bytes consumed so far.
    A stream found corrupt on the way yields None, as a one-shot ``decompress`` would.
    """
    dec = zlib.decompressobj()
    kept: list[bytes] = []
    size = produced = consumed = 0
    view = memoryview(raw)
    cut: str | None = None
    pos = 0
    try:
        while pos < len(view) and not dec.eof:
            feed: bytes | memoryview = view[pos : pos + FEED]
            pos += len(feed)
            while feed:
                out = dec.decompress(feed, CHUNK)
                feed = dec.unconsumed_tail
                consumed = pos - len(feed)
                if not out:
                    break
                produced += len(out)
                if pad and produced > SQUEEZE_MIN:
                    out = squeeze(out)
                kept.append(out)
                size += len(out)
                if size > limit:
                    cut = "expanded bytes limit reached"
                elif _over_ratio(size, consumed, ratio):
                    cut = "expansion ratio limit reached"
                if cut:
                    break
                if check is not None:
                    check()
            if cut:
                break
    except zlib.error:
        return None  # as zlib would have it: a corrupt stream yields nothing
    data = b"".join(kept)
    return Decoded(data[:limit], produced, cut)


def read_member(
    fh: _Reader,
    *,
    limit: int,
    compressed: int,
    ratio: float,
    pad: bool,
) -> Decoded:
    """Read an open archive member in chunks, keeping at most ``limit`` bytes.

    ``compressed`` is the member's compressed size, which bounds the input its reader
    consumes (declared uncompressed sizes lie; that one cannot without the read
    failing), so the ratio is checked against it as the member is read.
    """
    kept: list[bytes] = []
    size = produced = 0
    cut: str | None = None
    while True:
        out = fh.read(CHUNK)
        if not out:
            break
        produced += len(out)
        if pad and produced > SQUEEZE_MIN:
            out = squeeze(out)
        kept.append(out)
        size += len(out)
        if size > limit:
            cut = "expanded bytes limit reached"
            break
        if _over_ratio(size, compressed, ratio):
            cut = "expansion ratio limit reached"
            break
    return Decoded(b"".join(kept)[:limit], produced, cut)


# --- markup in linear time ------------------------------------------------------------


def sub_before_last(pattern: re.Pattern[str], repl: str, text: str, closer: str) -> str:
    """``pattern.sub(repl, text)`` for a pattern whose every match ends with ``closer``.

    Such a pattern can only fail where no ``closer`` follows, and it is exactly there
    that a backtracking engine rescans to the end of the text for every opener. Past
    the last ``closer`` nothing can match, so that tail is left alone and the rest has a
    closer after every opener: each attempt stops at the first one and the whole
    substitution is linear, with the same result.
    """
    last = text.rfind(closer)
    if last == -1:
        return text
    cut = last + len(closer)
    return pattern.sub(repl, text[:cut]) + text[cut:]


def drop_elements(
    text: str, opener: re.Pattern[str], closers: dict[str, re.Pattern[str]], repl: str = ""
) -> str:
    """Remove ``<name ...> ... </name>`` elements, as a lazy ``<(names)\\b.*?</\\1\\s*>`` would.

    ``opener`` matches an opening tag and captures the (lower-cased when compared) name
    in group 1; ``closers`` maps each name to the pattern of its closing tag. Each name's
    next closer is searched for forward only and remembered, and a name with no closer
    left is never searched for again, so thousands of unclosed openers cost one scan.
    """
    out: list[str] = []
    pos = 0  # where the next opener is searched for
    kept = 0  # the end of the text already copied to ``out``
    next_close: dict[str, tuple[int, int]] = {}
    exhausted: set[str] = set()
    while True:
        m = opener.search(text, pos)
        if m is None:
            break
        name = m.group(1).lower()
        if name in exhausted:
            pos = m.end()
            continue
        found = next_close.get(name)
        if found is None or found[0] < m.end():
            close = closers[name].search(text, m.end())
            if close is None:
                exhausted.add(name)
                pos = m.end()
                continue
            found = (close.start(), close.end())
            next_close[name] = found
        out.append(text[kept : m.start()])
        out.append(repl)
        pos = kept = found[1]
    out.append(text[kept:])
    return "".join(out)
