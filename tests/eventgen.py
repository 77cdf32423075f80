"""Small builders of contract-v1 events for tests."""

from __future__ import annotations

import itertools

from stream.core.events import Event

DAY0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z, a Monday
_ids = itertools.count()


def ev(user: str, ts_ms: int, kind: str = "view", *, dwell_ms: int = 10_000, category: str = "social",
       tz: int | None = 0, age_band: str | None = None, event_id: str | None = None) -> Event:
    return Event(
        user_id=user,
        ts_ms=ts_ms,
        type=kind,
        event_id=event_id if event_id is not None else f"e{next(_ids):08d}",
        category=category,
        dwell_ms=dwell_ms if kind == "view" else 0,
        tz_offset_min=tz,
        age_band=age_band,
        item_id=None,
        session_id=None,
    )


def at(day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return DAY0 + day * 86_400_000 + hour * 3_600_000 + minute * 60_000 + second * 1000
