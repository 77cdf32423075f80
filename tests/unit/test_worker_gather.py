"""The worker's batch gathering: short takes are processed at once when live, gathered when behind."""

from __future__ import annotations

import time

from stream.settings import load_settings
from stream.worker import BACKLOG_BATCHES, Engine


def engine(backlog: int, batch_size: int = 10, wait_s: float = 60.0) -> Engine:
    e = Engine.__new__(Engine)  # only the gathering state: no Faust app, producer or store
    e.s = load_settings(batch_size=batch_size, batch_wait_s=wait_s)
    e._gathered, e._gathered_at = [], 0.0
    e._backlog = lambda: backlog  # type: ignore[method-assign]
    return e


def test_live_takes_are_processed_at_once():
    e = engine(backlog=0)
    assert e.gather([1, 2]) == [1, 2] and e.gather([3]) == [3]


def test_behind_takes_are_gathered_into_a_full_batch_in_order():
    e = engine(backlog=BACKLOG_BATCHES * 10)
    assert e.gather([1, 2, 3]) == [] and e.gather([4, 5, 6, 7]) == []
    assert e.gather([8, 9, 10]) == list(range(1, 11))
    assert e.gather([11]) == []


def test_gathered_takes_never_wait_longer_than_the_batch_wait():
    e = engine(backlog=10**6, wait_s=0.05)
    assert e.gather([1]) == []
    time.sleep(0.06)
    assert e.gather([2]) == [1, 2]
