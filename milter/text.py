"""Text from a message made safe to show: on a terminal, in a notice, in a log line.

Subjects, file names, addresses and header values are written by whoever sent the
message. Shown raw, an ESC sequence can clear an officer's terminal, retitle its
window or forge lines of ``milter quarantine show`` output, and a bidi override can
make ``invoice\\u202efdp.exe`` read as ``invoiceexe.pdf``. Each such character is
replaced by a visible escape (``\\x1b``, ``\\u202e``) rather than dropped or turned
into ``?``: the officer must see that something was there, and which character it
was, because that is itself evidence of an attack. A backslash is left as it is: a
sender who writes ``\\x1b`` literally only makes the text look suspicious, which
harms no one, while doubling every backslash would garble ordinary Windows paths.
"""

from __future__ import annotations

import json
import re
from typing import Any

# C0 controls but TAB, DEL, C1 controls, the bidi embeddings, overrides and isolates
# (U+202A-U+202E, U+2066-U+2069), and lone surrogates (bytes that were not UTF-8,
# kept by ``surrogateescape``), which a terminal cannot print and ``print`` dies on.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# What ``json.dumps`` leaves raw: it escapes every C0 control inside a string itself,
# and a raw LF or CR in its output is the indentation between values.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every control, bidi-override and lone-surrogate character shown as
    a Python-style escape (``\\x1b``, ``\\u202e``); everything else as it is."""
    return _UNSAFE.sub(_visible, text)


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def json_dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that keeps readable non-ASCII text but escapes what a reader's
    terminal would act on.

    ``ensure_ascii=False`` escapes only C0 controls; DEL, C1 controls and bidi
    overrides would reach the output raw. Outside strings JSON is plain ASCII, so each
    such character left in the encoded text is inside a string, and its ``\\u`` escape
    (four hex digits) decodes to the same value: consumers still get the exact data.
    """
    kwargs.setdefault("ensure_ascii", False)
    return _JSON_UNSAFE.sub(_json_escape, json.dumps(value, **kwargs))


# Log records hold no cycles (dicts and lists built for the line): no circular check.
_LOG_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str, check_circular=False)


def json_line(value: Any) -> str:
    """``json_dumps(value, default=str)`` on one line, with one encoder made once: a log
    line is written for every message, and ``json.dumps`` with arguments builds a new
    encoder each call."""
    line = _LOG_ENCODER.encode(value)
    if line.isascii() and "\x7f" not in line:  # no unsafe character but DEL is ASCII
        return line
    return _JSON_UNSAFE.sub(_json_escape, line)
