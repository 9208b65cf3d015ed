"""Logging: plain text lines, or one JSON object a line (``--log-format json``).

Lines written while a pgml statement runs carry its session's connection id, user and
database, and the pgml function being called (:data:`call_context`), in both formats.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

call_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "pgml_call_context", default=None
)
"""``connection``, ``user``, ``database`` and ``function`` of the pgml call running now."""


@contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to the log context of the current task until the block ends."""
    token = call_context.set({**(call_context.get() or {}), **fields})
    try:
        yield
    finally:
        call_context.reset(token)


class _WithContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.pgml = call_context.get() or {}
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the call's context, and the
    traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= getattr(record, "pgml", {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "pgml", {})
        if not fields:
            return line
        return line + " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]"


def configure(level: str, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_WithContext())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("sqlglot").setLevel(logging.WARNING)  # it notes its own rewrites
