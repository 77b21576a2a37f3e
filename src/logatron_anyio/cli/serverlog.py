"""The server's own log on stderr: text lines for people, or JSON lines for log collectors."""

from __future__ import annotations

import json
import logging
import signal
from typing import TextIO

__all__ = ["configure_log", "log_stopping"]


class _JsonFormatter(logging.Formatter):
    _STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_log(log_format: str, stream: TextIO) -> logging.Handler:
    """A handler on ``stream`` for the ``logatron`` logger, at INFO: text lines, or JSON objects
    (one a line, every ``extra`` field kept). The caller removes it when the server stops."""
    handler = logging.StreamHandler(stream)
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s logatron %(levelname)s %(message)s"))
        handler.addFilter(_after_startup)
    log = logging.getLogger("logatron")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _after_startup(record: logging.LogRecord) -> bool:
    """The text log's filter: the startup lines on stdout say what these records would."""
    return getattr(record, "event", None) not in ("starting", "listening")


def log_stopping(signum: int) -> None:
    """Log that the server stops on signal ``signum``."""
    name = signal.Signals(signum).name
    logging.getLogger("logatron.server").info(
        "stopping on %s", name, extra={"event": "stopping", "signal": name}
    )
