"""Per-user policy state and its flat str->str codec (the ``pol:*`` fields of the user hash)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from stream.core.alerts import (
    LEVEL_ELEVATED,
    LEVEL_HIGH,
)
from stream.core.levels import Levels, decode_levels, encode_levels

__all__ = ["ML_NONE", "POLICY_PREFIX", "STATE_FIELDS", "PolicyState"]

ML_NONE: Final = "none"
_ML_LEVELS: Final = (ML_NONE, LEVEL_ELEVATED, LEVEL_HIGH)

POLICY_PREFIX: Final = "pol:"
"""Every policy field name starts with it: it keeps them apart from the window state in the hash."""

# Field names in the user's Redis hash. Every field is always written ("" = unset) so an HSET
# overwrites stale values.
_F_TICK: Final = "pol:tick"
_F_ML: Final = "pol:ml"
_F_ML_AT: Final = "pol:ml_at"
_F_EL_T0: Final = "pol:el_t0"
_F_HI_T0: Final = "pol:hi_t0"
_F_CAP_DAY: Final = "pol:cap_day"
_F_CAP_OPEN: Final = "pol:cap_open"
_F_CF_NIGHT: Final = "pol:cf_night"
_F_CF_OPEN: Final = "pol:cf_open"
_F_CU_N: Final = "pol:cu_n"
_F_CU_MIN: Final = "pol:cu_min"
_F_DAYS: Final = "pol:days"
_F_CDAY: Final = "pol:cday"
_F_CSCORE: Final = "pol:cscore"
_F_LEVELS: Final = "pol:lv"
STATE_FIELDS: Final = (
    _F_TICK, _F_ML, _F_ML_AT, _F_EL_T0, _F_HI_T0, _F_CAP_DAY, _F_CAP_OPEN, _F_CF_NIGHT, _F_CF_OPEN, _F_CU_N, _F_CU_MIN,
    _F_DAYS, _F_CDAY, _F_CSCORE, _F_LEVELS,
)


@dataclass(slots=True)
class PolicyState:
    """Per-user policy memory; all times are tick ends in epoch ms (event time)."""

    last_tick_ms: int | None = None  # last evaluated tick (redelivery fence)
    ml_level: str = ML_NONE  # last emitted ml_risk level: none / elevated / high
    ml_emitted_ms: int | None = None  # tick of the last emitted ml_risk alert (cool-down)
    elevated_since_ms: int | None = None  # t0 of the current run of score >= elevated_enter
    high_since_ms: int | None = None  # t0 of the current run of score >= high_enter
    cap_day: int | None = None  # local day on which rule:daily_cap last fired
    cap_open: bool = False  # that day's rule:daily_cap alert is not cleared yet
    curfew_night: int | None = None  # local day on which the last curfew night with an alert began
    curfew_open: bool = False  # that night's rule:curfew alert is not cleared yet
    session_alerts: int = 0  # 1 once the current session got its rule:continuous_use alert
    session_min: float = 0.0  # session length at the last evaluation (a drop = new session)
    # day-mean evidence: the day-end scores of the last closed local days (oldest first), and the
    # local day and latest score of the day in progress
    day_scores: list[float] = field(default_factory=list)
    cur_day: int | None = None
    cur_score: float | None = None
    levels: Levels | None = None  # current levels (risk.levels); None: not known (new user, or expired state)

    def copy(self) -> PolicyState:
        """An independent copy: what :meth:`~stream.core.policy.AlertPolicy.decide` changes of it (every
        field, the day-score list in place) leaves this one as it was. Levels are never changed in
        place (a new mapping replaces them), but get their own mapping all the same."""
        return PolicyState(
            self.last_tick_ms, self.ml_level, self.ml_emitted_ms, self.elevated_since_ms, self.high_since_ms,
            self.cap_day, self.cap_open, self.curfew_night, self.curfew_open, self.session_alerts, self.session_min,
            list(self.day_scores), self.cur_day, self.cur_score, None if self.levels is None else dict(self.levels))

    def to_fields(self) -> dict[str, str]:
        """Serialise to a flat str→str mapping (every field present; "" = unset)."""
        return {
            _F_TICK: _opt_int_str(self.last_tick_ms),
            _F_ML: self.ml_level,
            _F_ML_AT: _opt_int_str(self.ml_emitted_ms),
            _F_EL_T0: _opt_int_str(self.elevated_since_ms),
            _F_HI_T0: _opt_int_str(self.high_since_ms),
            _F_CAP_DAY: _opt_int_str(self.cap_day),
            _F_CAP_OPEN: "1" if self.cap_open else "",
            _F_CF_NIGHT: _opt_int_str(self.curfew_night),
            _F_CF_OPEN: "1" if self.curfew_open else "",
            _F_CU_N: str(self.session_alerts),
            _F_CU_MIN: repr(float(self.session_min)),
            _F_DAYS: ",".join(repr(float(x)) for x in self.day_scores),
            _F_CDAY: _opt_int_str(self.cur_day),
            _F_CSCORE: "" if self.cur_score is None else repr(float(self.cur_score)),
            _F_LEVELS: "" if self.levels is None else encode_levels(self.levels),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> PolicyState:
        """Rebuild from :meth:`to_fields` output (str or bytes, e.g. from redis-py); {} = fresh.

        Keys without the ``pol:`` prefix are ignored. Raises ``ValueError`` on a corrupt value.
        """
        if not fields:
            return cls()
        if any(type(k) is not str or type(v) is not str for k, v in fields.items()):
            fields = {
                (k.decode("utf-8") if isinstance(k, bytes | bytearray) else str(k)):
                (v.decode("utf-8") if isinstance(v, bytes | bytearray) else str(v))
                for k, v in fields.items()
            }
        get = fields.get
        try:
            state = cls(
                last_tick_ms=_parse_opt_int(get(_F_TICK, "")),
                ml_level=get(_F_ML, "") or ML_NONE,
                ml_emitted_ms=_parse_opt_int(get(_F_ML_AT, "")),
                elevated_since_ms=_parse_opt_int(get(_F_EL_T0, "")),
                high_since_ms=_parse_opt_int(get(_F_HI_T0, "")),
                cap_day=(cap_day := _parse_opt_int(get(_F_CAP_DAY, ""))),
                # a state written before cleared daily-cap alerts existed: a cap day is still open
                cap_open=get(_F_CAP_OPEN, "") == "1" if _F_CAP_OPEN in fields else cap_day is not None,
                curfew_night=_parse_opt_int(get(_F_CF_NIGHT, "")),
                curfew_open=get(_F_CF_OPEN, "") == "1",
                session_alerts=int(get(_F_CU_N, "") or 0),
                session_min=float(get(_F_CU_MIN, "") or 0.0),
                day_scores=[float(x) for x in days.split(",")] if (days := get(_F_DAYS, "")) else [],
                cur_day=_parse_opt_int(get(_F_CDAY, "")),
                cur_score=None if (cs := get(_F_CSCORE, "")) == "" else float(cs),
                levels=decode_levels(lv) if (lv := get(_F_LEVELS, "")) else None,
            )
        except ValueError as exc:
            shown = {k: v for k, v in fields.items() if k.startswith(POLICY_PREFIX)}
            raise ValueError(f"corrupt policy state {shown!r}: {exc}") from exc
        if not all(math.isfinite(x) for x in state.day_scores) or (
                state.cur_score is not None and not math.isfinite(state.cur_score)):
            raise ValueError(f"corrupt policy state: non-finite day score in {fields.get(_F_DAYS)!r}")
        if state.ml_level not in _ML_LEVELS:
            raise ValueError(f"corrupt policy state: {_F_ML}={state.ml_level!r} not in {_ML_LEVELS}")
        return state


def _opt_int_str(x: int | None) -> str:
    return "" if x is None else str(x)


def _parse_opt_int(s: str) -> int | None:
    return None if s == "" else int(s)
