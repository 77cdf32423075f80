"""Bounded retry with backoff for retriable store errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["START_ATTEMPTS", "retry"]

START_ATTEMPTS = 7  # ≈ 0.25 + 0.5 + … ≈ 15 s of backoff before giving up at start-up

T = TypeVar("T")
log = logging.getLogger("riskstream.retry")


def retry(what: str, fn: Callable[[], T], *, attempts: int, base_s: float, retriable: tuple[type[BaseException], ...],
          on_retry: Callable[[], None] | None = None) -> T:
    """Call fn with bounded exponential backoff; re-raise the last error after the last attempt."""
    delay = base_s
    for i in range(attempts):
        try:
            return fn()
        except retriable as e:
            if i == attempts - 1:
                raise
            log.warning("%s failed (%s); retry %d/%d in %.1fs", what, e, i + 1, attempts - 1, delay)
            if on_retry:
                on_retry()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")
