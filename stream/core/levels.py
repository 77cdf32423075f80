"""A user's current risk levels (contract levels v1, docs/contracts.md §4a): a fold of their alerts.

Each alert sets the level of its kind (``since`` = its tick, with its id and score); a ``cleared``
alert removes the kind. The detector folds a user's alerts tick by tick and, whenever the result
changes, hands out a :class:`LevelsUpdate`: the record for the compacted ``risk.levels`` topic, or
a tombstone (no record) when no kind is left. A user without stored levels (new, or whose Redis
state expired after ``RISKSTREAM_STATE_TTL_S`` of silence) gets a record or a tombstone at their
first evaluated tick, so a value left in the topic from before an expiry is replaced then.

The fold is deterministic (it sees only alerts, which are), so live, replay and offline give the
same records, and a step redelivered after a crash gives the same records again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from stream.core.alerts import LEVEL_CLEARED, Alert, format_rfc3339_ms

__all__ = [
    "LEVELS_SCHEMA_VERSION",
    "Level",
    "Levels",
    "LevelsRecord",
    "LevelsUpdate",
    "decode_levels",
    "encode_levels",
    "fold",
    "levels_to_json",
]

LEVELS_SCHEMA_VERSION = 1
_DECIMALS = 6


class Level(NamedTuple):
    """One kind's current level: the alert that set it."""

    level: str
    since_ms: int
    alert_id: str
    score: float | None


Levels = dict[str, Level]  # kind -> its current (not cleared) level


def fold(levels: Mapping[str, Level], alerts: Iterable[Alert]) -> Levels:
    """The levels after ``alerts`` (one user's, in order)."""
    out = dict(levels)
    for a in alerts:
        if a.level == LEVEL_CLEARED:
            out.pop(a.kind, None)
        else:
            out[a.kind] = Level(a.level, a.event_time_ms, a.alert_id, a.score)
    return out


def encode_levels(levels: Mapping[str, Level]) -> str:
    """The persisted form (policy field ``pol:lv``): canonical JSON, kinds sorted."""
    return orjson.dumps({k: list(v) for k, v in levels.items()}, option=orjson.OPT_SORT_KEYS).decode()


def decode_levels(text: str) -> Levels:
    """Parse :func:`encode_levels` output; ``ValueError`` on anything else."""
    try:
        obj = orjson.loads(text)
        if not isinstance(obj, dict):
            raise TypeError("not an object")
        out: Levels = {}
        for k, v in obj.items():
            level, since, aid, score = v
            if not (isinstance(level, str) and isinstance(since, int) and isinstance(aid, str)
                    and (score is None or isinstance(score, int | float))):
                raise TypeError(f"bad entry {v!r}")
            out[k] = Level(level, since, aid, None if score is None else float(score))
        return out
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"corrupt levels {text[:200]!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class LevelsRecord:
    """A ``risk.levels`` value: the user's levels as decided at tick ``event_time_ms``."""

    user_id: str
    age_band: str | None
    event_time_ms: int
    model_version: str | None
    score: float | None
    levels: Levels


@dataclass(frozen=True, slots=True)
class LevelsUpdate:
    """What to write to ``risk.levels`` for a user: a record, or ``None`` for a tombstone."""

    user_id: str
    record: LevelsRecord | None


def _num(x: float | None) -> float | None:
    if x is None or not math.isfinite(float(x)):  # JSON has no NaN: written as null, like alerts
        return None
    return round(float(x), _DECIMALS)


def levels_to_json(rec: LevelsRecord | None) -> bytes | None:
    """The canonical JSON of a record (fixed key order, kinds sorted); ``None`` (a tombstone) stays."""
    if rec is None:
        return None
    obj: dict[str, Any] = {
        "v": LEVELS_SCHEMA_VERSION,
        "user_id": rec.user_id,
        "age_band": rec.age_band,
        "event_time": format_rfc3339_ms(rec.event_time_ms),
        "model_version": rec.model_version,
        "score": _num(rec.score),
        "levels": {
            kind: {"level": lv.level, "since": format_rfc3339_ms(lv.since_ms), "alert_id": lv.alert_id,
                   "score": _num(lv.score)}
            for kind, lv in sorted(rec.levels.items())
        },
    }
    return orjson.dumps(obj)
