"""``riskstream user show USER``: one user's behaviour and risk as the worker holds them in Redis.

Reads the user's stored window and policy state (docs/state-layout.md), computes the features at
the user's newest evaluation tick with the same code the worker uses, scores them with the model
when one is given, and says it in words (or as JSON for machines). Read-only.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from stream.core import layout as L
from stream.core.features import FEATURE_NAMES, compute
from stream.core.ordering import tick_ceil
from stream.core.policy import AlertPolicy, PolicyConfig, PolicyState
from stream.core.scoring import Scorer
from stream.core.windows import Snapshot
from stream.settings import Settings
from stream.state import RedisWindowStore, redis_client

__all__ = ["DayFigures", "UserReport", "daily_timeline", "format_report", "user_report"]

# The seven-day figures a person reads first, in this order, with their wording.
_SUMMARY = (
    ("active_min_day_7d", "active minutes a day"),
    ("sessions_day_7d", "sessions a day"),
    ("night_share_7d", "share of use at night (00:00-06:00)"),
    ("late_sessions_day_7d", "late-night sessions a day"),
    ("check_ratio_15s_7d", "share of sessions under 15 s (checking)"),
    ("long_sess_30m_day_7d", "sessions over 30 min a day"),
    ("sess_len_mean_s_7d", "mean session length, s"),
)


@dataclasses.dataclass(frozen=True, slots=True)
class DayFigures:
    """One local day of the user's day ring (28 days) and, for the last 7 days, the hour ring."""

    day: str  # local date, YYYY-MM-DD
    active_min: float
    sessions: int
    night_min: float | None  # active minutes 00:00-06:00 local; None beyond the 7-day hour ring


def daily_timeline(scalars: tuple[int, ...], rings: bytes) -> list[DayFigures]:
    """The per-day series the stored rings hold, oldest day first (docs/state-layout.md §4).

    Days before the user's first day are left out; a day inside the window without activity is 0.
    """
    words = np.frombuffer(rings, dtype=L.RING_DTYPE).astype(np.int64)
    dh, hh, first = scalars[L.S_DH], scalars[L.S_HH], scalars[L.S_FD]
    if dh == L.NONE:
        return []
    out: list[DayFigures] = []
    for db in range(dh - L.DAY_SLOTS + 1, dh + 1):
        if first != L.NONE and db < first:
            continue
        night: float | None = None
        if hh != L.NONE and db * 24 > hh - L.HOUR_SLOTS:
            hours = [hb for hb in range(db * 24, db * 24 + 6) if hh - L.HOUR_SLOTS < hb <= hh]
            night = round(sum(int(words[L.h_index(hb, L.H_ACTIVE)]) for hb in hours) / 60_000, 2)
        day = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=db)
        out.append(DayFigures(day=f"{day:%Y-%m-%d}", active_min=round(int(words[L.d_index(db, L.D_ACTIVE)]) / 60_000, 2),
                              sessions=int(words[L.d_index(db, L.D_SESSIONS)]), night_min=night))
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class UserReport:
    user_id: str
    age_band: str | None
    profile: str
    last_event_ms: int
    tick_end_ms: int
    tz_offset_min: int | None
    today_active_min: float
    session_min: float
    history_days: int
    features: dict[str, float]
    score: float | None
    model_version: str | None
    policy: dict[str, Any]
    timeline: list[DayFigures] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["last_event_time"] = _iso(self.last_event_ms)
        d["tick_end"] = _iso(self.tick_end_ms)
        return d


def user_report(settings: Settings, user_id: str, *, scorer: Scorer | None,
                policy_config: PolicyConfig) -> UserReport | None:
    """The user's report, or None when Redis holds no window state for them."""
    client = redis_client(settings)
    try:
        store = RedisWindowStore(client, key_prefix=settings.key_prefix, ttl_s=settings.state_ttl_s,
                                 key_secret=settings.key_secret)
        state = store.stored_state_of(user_id)
        if state is None:
            return None
        fields = store.load_policy([user_id]).get(user_id, {})
    finally:
        client.close()
    scalars, band, rings = state
    newest = scalars[L.S_MX]
    tick_end = tick_ceil(newest)
    x, rules = compute([Snapshot(user_id, tick_end, scalars, band, rings)])
    features = {n: round(float(v), 6) for n, v in zip(FEATURE_NAMES, x[0].tolist())}
    score = model_version = None
    if scorer is not None:
        score = round(float(scorer.score(x)[0]), 6)
        model_version = scorer.info.model_version
    tz = scalars[L.S_TZ]
    policy = PolicyState.from_fields(fields)
    pol = dataclasses.asdict(policy)
    if policy.levels is not None:  # kind -> {level, since_ms, alert_id, score}, as risk.levels has it
        pol["levels"] = {k: lv._asdict() for k, lv in sorted(policy.levels.items())}
    return UserReport(
        user_id=user_id, age_band=band, profile=AlertPolicy(policy_config).profile_name(band),
        last_event_ms=newest, tick_end_ms=tick_end, tz_offset_min=None if tz == L.NONE else tz - L.TZ_BIAS,
        today_active_min=round(float(rules.today_active_min[0]), 2),
        session_min=round(float(rules.session_min[0]), 2), history_days=int(rules.history_days[0]),
        features=features, score=score, model_version=model_version, policy=pol,
        timeline=daily_timeline(scalars, rings))


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _local(ms: int, tz: int | None) -> str:
    if tz is None:
        return _iso(ms)
    t = datetime.fromtimestamp(ms / 1000, UTC) + timedelta(minutes=tz)
    sign = "+" if tz >= 0 else "-"
    return f"{t:%Y-%m-%d %H:%M} local (UTC{sign}{abs(tz) // 60:02d}:{abs(tz) % 60:02d})"


def format_report(r: UserReport) -> str:
    """The report in words, one fact a line."""
    p = r.policy
    lines = [
        f"user {r.user_id}  (age band {r.age_band or 'unknown'}, rule profile {r.profile})",
        f"last event       {_local(r.last_event_ms, r.tz_offset_min)}",
        f"history          {r.history_days} day(s)",
        f"today            {r.today_active_min:.0f} active min; current session {r.session_min:.0f} min",
        "last 7 days:",
        *(f"  {words:<42} {r.features[name]:.3g}" for name, words in _SUMMARY),
    ]
    if r.score is not None:
        lines.append(f"risk score now   {r.score:.2f} (model {r.model_version})")
    else:
        lines.append("risk score now   not scored (no model given)")
    level = p["ml_level"]
    since = p["high_since_ms"] if level == "high" else p["elevated_since_ms"]
    lines.append(f"ml_risk level    {level}" + (f", score above its threshold since {_iso(since)}" if since else ""))
    if p["day_scores"] or p["cur_score"] is not None:
        closed = ", ".join(f"{x:.2f}" for x in p["day_scores"]) or "none yet"
        today = "" if p["cur_score"] is None else f"; latest today {p['cur_score']:.2f}"
        lines.append(f"day-end scores   {closed} (closed days, oldest first){today}")
    if p["ml_emitted_ms"] is not None:
        lines.append(f"last ml_risk     alert at {_iso(p['ml_emitted_ms'])}")
    if p["levels"]:
        lines.append("current levels   " + "; ".join(
            f"{kind} {lv['level']} since {_iso(lv['since_ms'])}" for kind, lv in p["levels"].items()))
    if p["cap_day"] is not None:
        day = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=p["cap_day"])
        lines.append(f"daily cap        last reached on local day {day:%Y-%m-%d}")
    if p["curfew_night"] is not None:
        night = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=p["curfew_night"])
        state = "still open" if p["curfew_open"] else "over"
        lines.append(f"curfew           active in the night of {night:%Y-%m-%d} ({state})")
    return "\n".join(lines)
