"""Logging: one structured line per message, like Postfix's, as JSON to stderr.

Operators grep and ship these lines (journald, Loki), so each is one JSON object
with a stable set of keys, and nothing else is logged per message at INFO.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from milter.text import json_line

MESSAGE_LOG = logging.getLogger("milter.message")
log = logging.getLogger("milter")


class JsonFormatter(logging.Formatter):
    """One JSON object per record. Values often come from a message (subjects, file
    names, addresses): ``json_dumps`` escapes the control and bidi characters that
    plain ``json.dumps`` leaves raw, so reading the log on a terminal is safe."""

    _second: tuple[int, str] = (-1, "")  # the last second formatted, and its text

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        out: dict[str, Any] = {
            "ts": f"{self._second[1]}.{int(record.msecs):03d}Z",
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
        return json_line(out)


def setup(level: str = "INFO") -> None:
    # The records' caller, thread and process are never written (see JsonFormatter);
    # finding them costs more than formatting the line (the logging HOWTO's
    # "Optimization" section names these switches).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
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
