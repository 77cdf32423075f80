"""One log format for every process and client of a worker (``RISKSTREAM_LOG_FORMAT``).

``text`` (default): ``<time> <LEVEL> <logger>: <message>`` on stderr. ``json``: one JSON object per
line (python-json-logger) with ``time``, ``level``, ``logger``, ``process`` and ``message``, for log
shippers. The same configuration goes to the Faust worker (which otherwise installs its own
coloured handler), the pipeline child, and librdkafka, whose messages are routed into Python logging
(``riskstream.kafka``) instead of its own stderr lines, with repeats rate-limited: while a broker is
down librdkafka repeats the same connection error many times a second, and so does aiokafka (the
Faust process's client), whose loggers are rate-limited the same way on the handler.
"""

from __future__ import annotations

import logging
import logging.config
import threading
import time
from typing import Any, Final

__all__ = ["LOG_FORMATS", "RateLimit", "configure", "kafka_logger", "log_config"]

LOG_FORMATS: Final = ("text", "json")
_REPEATING: Final = ("aiokafka",)  # loggers whose repeated messages are rate-limited on the handler
_TEXT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_JSON_FIELDS: Final = "%(asctime)s %(levelname)s %(name)s %(processName)s %(message)s"


def log_config(level: str | int, fmt: str = "text") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dictionary: one stderr handler in the given format."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {fmt!r}")
    formatter: dict[str, Any] = {"format": _TEXT}
    if fmt == "json":
        formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": _JSON_FIELDS,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger",
                              "processName": "process"},
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        # aiokafka (the Faust process's Kafka client) repeats its connection errors ≈ 20 times a
        # second while a broker is lost: the same rate limit as librdkafka's (kafka_logger)
        "filters": {"kafka_repeats": {"()": "stream.logconfig.RateLimit", "only": list(_REPEATING)}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "default", "filters": ["kafka_repeats"]}},
        "root": {"level": level, "handlers": ["stderr"]},
    }


def configure(level: str | int, fmt: str = "text") -> None:
    """Apply :func:`log_config` to this process (replaces any handler of the root logger)."""
    logging.config.dictConfig(log_config(level, fmt))


class RateLimit(logging.Filter):
    """Lets the first record of each message text through, then at most one per ``every_s`` seconds,
    which says how many were held back in between."""

    def __init__(self, every_s: float = 30.0, only: tuple[str, ...] | list[str] | None = None) -> None:
        super().__init__()
        self.every_s = every_s
        self.only = tuple(only) if only is not None else None  # logger-name prefixes; None: every record
        self._seen: dict[str, tuple[float, int]] = {}  # message -> (last let through, held back since)
        self._lock = threading.Lock()  # librdkafka logs from its own threads

    def filter(self, record: logging.LogRecord) -> bool:
        if self.only is not None and not record.name.startswith(self.only):
            return True
        key = f"{record.name}\0{record.getMessage()}"
        now = time.monotonic()
        with self._lock:
            last, held = self._seen.get(key, (-float("inf"), 0))
            if now - last < self.every_s:
                self._seen[key] = (last, held + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 1000:  # bounded: forget the oldest texts
                for k in sorted(self._seen, key=lambda k: self._seen[k][0])[:500]:
                    del self._seen[k]
        if held:
            record.msg = f"{record.getMessage()} (and {held} more like it in the last {now - last:.0f} s)"
            record.args = ()
        return True


_KAFKA_LOGGER = "riskstream.kafka"


def kafka_logger() -> logging.Logger:
    """The logger librdkafka clients log to (``{"logger": kafka_logger()}`` in their config)."""
    log = logging.getLogger(_KAFKA_LOGGER)
    if not any(isinstance(f, RateLimit) for f in log.filters):
        log.addFilter(RateLimit())
    return log
