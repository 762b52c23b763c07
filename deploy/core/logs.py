"""JSON log lines for the wrapper: one object per line, request ids included, secrets never."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar

__all__ = ["JsonFormatter", "configure_logging", "wake_cause"]

wake_cause: ContextVar[str | None] = ContextVar("wake_cause", default=None)
"""Who a call to an engine is for ("a request by key 'alice'"): the wrapper sets it per
request; a transport that starts an engine for that call says so in its log."""

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Send the service's logs to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("vllm_autoscale")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
