"""The agent's structured logs: one line per event on standard error.

Events are logged as ``log.info("registered", extra={"resource": ..., ...})``: the message
is the event, the extras its fields. ``json`` writes one JSON object per line
(``{"time", "level", "event", ...fields}``), for a log collector; ``text`` writes
``time level event key=value ...``, for a person.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

__all__ = ["FORMATS", "setup"]

FORMATS = ("json", "text")

# the attributes every LogRecord has; anything else came in through ``extra``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def _time(record: logging.LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        data.update(_fields(record))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, sort_keys=False)


class TextFormatter(logging.Formatter):
    """``time level event key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_time(record), record.levelname.lower(), record.getMessage()]
        parts.extend(f"{k}={json.dumps(v, default=str)}" for k, v in _fields(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(fmt: str = "text", level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Send the ``sriovlib`` loggers to *stream* (standard error) in format *fmt*."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.setLevel(level)  # CNI invocations served by the agent may lower the logger's
    logger = logging.getLogger("sriovlib")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
