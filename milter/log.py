"""Logging: one structured line per message, like Postfix's, as JSON to stderr.

Operators grep and ship these lines (journald, Loki), so each is one JSON object
with a stable set of keys, and nothing else is logged per message at INFO.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from milter.text import json_dumps

MESSAGE_LOG = logging.getLogger("milter.message")
log = logging.getLogger("milter")


class JsonFormatter(logging.Formatter):
    """One JSON object per record. Values often come from a message (subjects, file
    names, addresses): ``json_dumps`` escapes the control and bidi characters that
    plain ``json.dumps`` leaves raw, so reading the log on a terminal is safe."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        else:
            out["msg"] = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            out["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json_dumps(out, default=str)


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosmtpd logs every connection at INFO and every DATA line at DEBUG.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def message_line(**fields: Any) -> None:
    """The one line per message."""
    MESSAGE_LOG.info("message", extra={"fields": {"event": "message", **fields}})


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    log.log(level, name, extra={"fields": {"event": name, **fields}})


def failure(name: str, exc: BaseException, level: int = logging.ERROR, **fields: Any) -> None:
    """An operation that failed, with the exception named in one field (no traceback)."""
    event(name, level, error=f"{type(exc).__name__}: {exc}", **fields)
