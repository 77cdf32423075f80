"""Alert decisions: evaluations at event-time ticks in, ``ml_risk`` and ``rule:*`` decisions out."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from stream.core.alerts import (
    KIND_CONTINUOUS_USE,
    KIND_CURFEW,
    KIND_DAILY_CAP,
    KIND_ML_RISK,
    LEVEL_CLEARED,
    LEVEL_ELEVATED,
    LEVEL_HIGH,
    Alert,
    Reason,
    alert_id,
)
from stream.core.layout import MAX_EVIDENCE_DAYS, TICK_MS
from stream.core.policy.config import PolicyConfig, in_window, parse_curfew
from stream.core.policy.state import ML_NONE, PolicyState
from stream.errors import ConfigError

__all__ = ["AlertPolicy", "Decision", "Evaluation", "RuleInputs"]

# ---------------------------------------------------------------------------------------------
# Inputs, outputs, state


class RuleInputs(NamedTuple):
    """What the rules need at one evaluation, computed by the detector from the windows.

    Named tuples (not frozen dataclasses) because the detector builds one per evaluation: they
    cost a fifth to construct and are just as immutable.
    """

    today_active_min: float  # active minutes in the user's current local day, up to the tick end
    session_min: float  # length of the ongoing continuous-use session at the tick end, 0 if none
    local_minute: int  # minute of day 0..1439, local time, at the START of the tick (end - tick)
    local_day: int  # local day number (days since epoch in local time) of that minute
    age_band: str | None
    history_days: int  # days of history the user has


class Evaluation(NamedTuple):
    """One user at one tick: the ML score (None = not scored) and the rule inputs."""

    user_id: str
    tick_end_ms: int
    score: float | None
    rules: RuleInputs


@dataclass(frozen=True, slots=True)
class Decision:
    """An alert decided by the policy; the detector turns it into an :class:`Alert`."""

    user_id: str
    kind: str
    level: str
    tick_end_ms: int
    score: float | None
    alert_id: str
    reasons: tuple[tuple[str, float, float | str], ...]  # rules: (input, value, threshold)
    details: dict[str, float | int | str]

    def to_alert(
        self,
        *,
        model_version: str | None = None,
        reasons: tuple[Reason, ...] | None = None,
        features: dict[str, float] | None = None,
        emitted_at_ms: int | None = None,
    ) -> Alert:
        """Build the alert; ``reasons`` defaults to this decision's rule reasons."""
        if reasons is None:
            reasons = tuple(Reason.for_rule(n, v, t) for n, v, t in self.reasons)
        return Alert(
            alert_id=self.alert_id,
            user_id=self.user_id,
            kind=self.kind,
            level=self.level,
            score=self.score,
            model_version=model_version,
            event_time_ms=self.tick_end_ms,
            emitted_at_ms=emitted_at_ms,
            reasons=reasons,
            features=features,
            details=dict(self.details),
        )


# ---------------------------------------------------------------------------------------------
# The policy


@dataclass(frozen=True, slots=True)
class _Profile:
    name: str
    daily_cap_min: int | None
    curfew: str | None
    curfew_window: tuple[int, int] | None
    continuous_use_min: int | None


class AlertPolicy:
    """Turns one user's evaluations, in increasing tick order, into alert decisions."""

    __slots__ = ("base", "config", "tick_ms", "_profiles", "_by_band", "_default")

    def __init__(self, config: PolicyConfig, *, tick_ms: int = TICK_MS,
                 model_thresholds: Mapping[str, float] | None = None) -> None:
        """``config`` as the policy file gives it; ``model_thresholds``: the serving model's
        (they fill the ML thresholds the file leaves unset).

        Raises:
            ConfigError: the thresholds combined are invalid.
        """
        if tick_ms <= 0:
            raise ConfigError(f"tick_ms must be positive, got {tick_ms}")
        self.base = config
        self.config = config if model_thresholds is None else config.with_model_thresholds(model_thresholds)
        self.tick_ms = tick_ms
        self._profiles = {
            name: _Profile(
                name=name,
                daily_cap_min=p.daily_cap_min,
                curfew=p.curfew,
                curfew_window=None if p.curfew is None else parse_curfew(p.curfew),
                continuous_use_min=p.continuous_use_min,
            )
            for name, p in config.rules.profiles.items()
        }
        self._by_band = {
            band: self._profiles[name]
            for name, p in config.rules.profiles.items()
            for band in p.age_bands
        }
        self._default = self._profiles[config.rules.default_profile]

    def for_model(self, model_thresholds: Mapping[str, float]) -> AlertPolicy:
        """The same policy file with another model's thresholds (a hot-reloaded model)."""
        return AlertPolicy(self.base, tick_ms=self.tick_ms, model_thresholds=model_thresholds)

    def min_history_days(self) -> int:
        """Days of history a user needs before the ML layer scores them."""
        return self.config.ml.min_history_days

    def profile_name(self, age_band: str | None) -> str:
        """The rule profile applied to an age band (the default for missing or unknown bands)."""
        return self._profile(age_band).name

    def _profile(self, age_band: str | None) -> _Profile:
        if age_band is None:
            return self._default
        return self._by_band.get(age_band, self._default)

    def decide(self, state: PolicyState, ev: Evaluation) -> list[Decision]:
        """Decide the alerts of one evaluation, updating ``state`` in place.

        An evaluation at or before the state's last evaluated tick is a no-op returning [] (a
        redelivered or replayed tick). ML decisions come first, then daily cap, curfew, continuous use.

        Raises:
            ValueError: the evaluation is malformed (tick not aligned, non-finite score,
                local_minute outside 0..1439).
        """
        if state.last_tick_ms is not None and ev.tick_end_ms <= state.last_tick_ms:
            return []
        self._check(ev)
        state.last_tick_ms = ev.tick_end_ms
        out: list[Decision] = []
        ml = self._decide_ml(state, ev)
        if ml is not None:
            out.append(ml)
        out.extend(self._decide_rules(state, ev))
        return out

    def _check(self, ev: Evaluation) -> None:
        if ev.tick_end_ms % self.tick_ms != 0:
            raise ValueError(
                f"evaluation tick {ev.tick_end_ms} is not aligned to {self.tick_ms} ms ticks"
            )
        if ev.score is not None and not math.isfinite(ev.score):
            raise ValueError(f"score {ev.score!r} for user {ev.user_id!r} is not finite")
        if not 0 <= ev.rules.local_minute < 1440:
            raise ValueError(f"local_minute {ev.rules.local_minute} is outside 0..1439")

    # -- ML layer ---------------------------------------------------------------------------

    def _decide_ml(self, state: PolicyState, ev: Evaluation) -> Decision | None:
        cfg = self.config.ml
        score = ev.score
        if score is None or ev.rules.history_days < cfg.min_history_days:
            # Not scored: persistence must be re-earned from the next scored evaluation.
            state.elevated_since_ms = None
            state.high_since_ms = None
            return None
        tick = ev.tick_end_ms
        # Day-end scores are kept whatever the evidence, so a policy switch has them at hand.
        day_mean = _track_days(state, ev.rules.local_day, score, cfg.evidence_days)
        details: dict[str, float | int | str] = {"evidence": cfg.evidence}
        if cfg.evidence == "day_mean":
            if day_mean is None:
                return None  # fewer than evidence_days closed days: no evidence yet
            evidence, persistence_ms = day_mean, 0  # the averaging is the persistence
            details.update(evidence_days=cfg.evidence_days, evidence_mean=round(day_mean, 6))
        else:
            evidence, persistence_ms = score, cfg.persistence_s * 1000
            details["persistence_s"] = cfg.persistence_s
        if evidence >= cfg.elevated_enter:
            if state.elevated_since_ms is None:
                state.elevated_since_ms = tick
        else:
            state.elevated_since_ms = None
        if evidence >= cfg.high_enter:
            if state.high_since_ms is None:
                state.high_since_ms = tick
        else:
            state.high_since_ms = None
        high_due = state.high_since_ms is not None and tick - state.high_since_ms >= persistence_ms
        elevated_due = (
            state.elevated_since_ms is not None and tick - state.elevated_since_ms >= persistence_ms
        )

        level = state.ml_level
        target: str | None = None
        if level != LEVEL_HIGH and high_due:
            target = LEVEL_HIGH
        elif level == ML_NONE and elevated_due:
            target = LEVEL_ELEVATED
        elif level == LEVEL_HIGH and evidence < cfg.high_exit:
            target = LEVEL_ELEVATED if evidence >= cfg.elevated_exit else LEVEL_CLEARED
        elif level == LEVEL_ELEVATED and evidence < cfg.elevated_exit:
            target = LEVEL_CLEARED
        if target is None:
            return None
        if state.ml_emitted_ms is not None and tick - state.ml_emitted_ms < cfg.cooldown_s * 1000:
            return None  # held back; the transition is re-evaluated at later ticks
        state.ml_level = ML_NONE if target == LEVEL_CLEARED else target
        state.ml_emitted_ms = tick
        return Decision(
            user_id=ev.user_id,
            kind=KIND_ML_RISK,
            level=target,
            tick_end_ms=tick,
            score=score,
            alert_id=alert_id(ev.user_id, KIND_ML_RISK, target, tick),
            reasons=(),
            details={
                "from_level": level,
                "elevated_enter": cfg.elevated_enter,
                "elevated_exit": cfg.elevated_exit,
                "high_enter": cfg.high_enter,
                "high_exit": cfg.high_exit,
                **details,
                "cooldown_s": cfg.cooldown_s,
            },
        )

    # -- rules layer ------------------------------------------------------------------------

    def _decide_rules(self, state: PolicyState, ev: Evaluation) -> list[Decision]:
        r = ev.rules
        profile = self._profile(r.age_band)
        out: list[Decision] = []

        cap = profile.daily_cap_min
        if state.cap_open and state.cap_day is not None and r.local_day > state.cap_day:
            # the day whose cap was reached is over: its alert clears (risk.levels drops the kind)
            state.cap_open = False
            reason: tuple[str, float, float | str] = ("day_over", r.local_day, state.cap_day)
            details: dict[str, float | int | str] = {"local_day": state.cap_day}
            if cap is not None:
                details["daily_cap_min"] = cap
            out.append(_rule_decision(ev, profile.name, KIND_DAILY_CAP, LEVEL_CLEARED, reason, details))
        if (
            cap is not None
            and r.today_active_min >= cap
            and (state.cap_day is None or r.local_day > state.cap_day)
        ):
            state.cap_day, state.cap_open = r.local_day, True
            reason = ("today_active_min", r.today_active_min, cap)
            details = {"daily_cap_min": cap, "local_day": r.local_day}
            out.append(_rule_decision(ev, profile.name, KIND_DAILY_CAP, LEVEL_HIGH, reason, details))

        out.extend(self._decide_curfew(state, ev, profile))

        # A shorter session than at the last evaluation (or none) means a new session began: the
        # last session's alert (if any) clears (risk.levels drops the kind).
        every = profile.continuous_use_min
        if r.session_min <= 0 or r.session_min < state.session_min:
            if state.session_alerts:
                reason = ("session_over_min", state.session_min, every if every is not None else "")
                details = {"continuous_use_min": every} if every is not None else {}
                out.append(_rule_decision(ev, profile.name, KIND_CONTINUOUS_USE, LEVEL_CLEARED, reason, details))
            state.session_alerts = 0
        state.session_min = max(float(r.session_min), 0.0)
        if every is not None and state.session_alerts == 0 and r.session_min >= every:
            state.session_alerts = 1  # once per session
            reason = ("session_min", r.session_min, every)
            details = {"continuous_use_min": every}
            out.append(_rule_decision(ev, profile.name, KIND_CONTINUOUS_USE, LEVEL_ELEVATED, reason, details))
        return out

    def _decide_curfew(self, state: PolicyState, ev: Evaluation, profile: _Profile) -> list[Decision]:
        """One ``elevated`` alert per curfew night in which the user is active, and its ``cleared``
        at the user's first evaluation after that night (outside the window, or in a later night)."""
        r = ev.rules
        window = profile.curfew_window
        night: int | None = None
        if profile.curfew is not None and window is not None and in_window(r.local_minute, *window):
            start, end = window
            # a window that wraps midnight belongs to the night that began the evening before
            night = r.local_day - 1 if start > end and r.local_minute < end else r.local_day
        out: list[Decision] = []
        if state.curfew_open and state.curfew_night != night:
            state.curfew_open = False
            reason: tuple[str, float, float | str] = (
                "curfew_over_minute", r.local_minute, profile.curfew or "")
            details: dict[str, float | int | str] = {"curfew": profile.curfew or "", "night": state.curfew_night or 0}
            out.append(_rule_decision(ev, profile.name, KIND_CURFEW, LEVEL_CLEARED, reason, details))
        if night is not None and state.curfew_night != night:
            assert profile.curfew is not None
            state.curfew_night, state.curfew_open = night, True
            reason = ("local_minute", r.local_minute, profile.curfew)
            details = {"curfew": profile.curfew, "night": night}
            out.append(_rule_decision(ev, profile.name, KIND_CURFEW, LEVEL_ELEVATED, reason, details))
        return out


def _track_days(state: PolicyState, local_day: int, score: float, days: int) -> float | None:
    """Record a scored evaluation in the day-end series; the mean of the last ``days`` closed
    days' scores, or None while fewer are known.

    A day closes at the user's first scored evaluation on a later local day; its day-end score is
    the last one it had (what ``models/evaluate.py`` calls the day-end row). Only days with a
    scored evaluation count, as in the evaluation. An earlier local day than the current one (the
    user's time-zone offset moved back) belongs to the current day.
    """
    if state.cur_day is not None and local_day > state.cur_day and state.cur_score is not None:
        state.day_scores.append(state.cur_score)
        del state.day_scores[:-MAX_EVIDENCE_DAYS]
    if state.cur_day is None or local_day > state.cur_day:
        state.cur_day = local_day
    state.cur_score = score
    if len(state.day_scores) < days:
        return None
    return math.fsum(state.day_scores[-days:]) / days


def _rule_decision(ev: Evaluation, profile: str, kind: str, level: str,
                   reason: tuple[str, float, float | str], details: dict[str, float | int | str]) -> Decision:
    return Decision(
        user_id=ev.user_id,
        kind=kind,
        level=level,
        tick_end_ms=ev.tick_end_ms,
        score=ev.score,
        alert_id=alert_id(ev.user_id, kind, level, ev.tick_end_ms),
        reasons=(reason,),
        details={"profile": profile, **details},
    )
