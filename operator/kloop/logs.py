"""Structured JSON logs: one object per line, with the extras a handler passes."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Render a record as JSON: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON line."""
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith(("_", "k8s_")) and key != "settings":
                doc[key] = (
                    value if isinstance(value, str | int | float | bool | None) else str(value)
                )
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure(level: str = "INFO") -> None:
    """Send every logger (kopf's included) through the JSON formatter on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kopf.objects logs every successful event handler at INFO, aiohttp.access every health probe;
    # their warnings and errors stay
    for noisy in (
        "kubernetes",
        "urllib3",
        "httpx",
        "httpcore",
        "httpx2",
        "httpcore2",
        "kopf.objects",
        "aiohttp.access",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # the MCP SDK logs a traceback for each connector that is down; kloop logs one line per
    # handshake instead (adapters/connectors.py), and the reason is in the run's status
    logging.getLogger("mcp").setLevel(logging.CRITICAL)
