"""Alert policy: per-user evaluations at event-time ticks in, alert decisions out (DESIGN §6).

Two layers, decided independently at each evaluation of one user:

* ``ml_risk``: the model score through persistence, hysteresis and an event-time cool-down;
* ``rule:*``: daily cap, curfew and continuous use, from the user's age-band profile.

Pure: the state is passed in and updated in place, time is the evaluation tick (event time), so the
offline scorer, a replay and the live worker decide the same alerts. The state serialises to a flat
str→str mapping (one Redis hash per user) with :meth:`PolicyState.to_fields`.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, NamedTuple, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
from stream.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Configuration

Probability = Annotated[float, Field(strict=True, ge=0.0, le=1.0)]
Seconds = Annotated[int, Field(strict=True, ge=0)]
PositiveMinutes = Annotated[int, Field(strict=True, gt=0)]

_CURFEW_RE: Final = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
_THRESHOLD_KEYS: Final = ("elevated_enter", "elevated_exit", "high_enter", "high_exit")


def parse_curfew(window: str) -> tuple[int, int]:
    """Parse ``"HH:MM-HH:MM"`` into (start, end) minutes of day; the end is exclusive."""
    m = _CURFEW_RE.match(window)
    if m is None:
        raise ValueError(f"curfew {window!r} is not 'HH:MM-HH:MM' (24-hour local time, e.g. '22:00-06:00')")
    start = int(m[1]) * 60 + int(m[2])
    end = int(m[3]) * 60 + int(m[4])
    if start == end:
        raise ValueError(f"curfew {window!r} is empty: start and end are equal")
    return start, end


def in_window(minute: int, start: int, end: int) -> bool:
    """Whether a minute of day lies in [start, end), a window that may wrap midnight."""
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


class MlPolicy(BaseModel):
    """Thresholds and timing of the ``ml_risk`` layer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    elevated_enter: Probability = 0.5
    elevated_exit: Probability = 0.4
    high_enter: Probability = 0.75
    high_exit: Probability = 0.65
    persistence_s: Seconds = 21_600
    cooldown_s: Seconds = 86_400
    min_history_days: Annotated[int, Field(strict=True, ge=0)] = 7

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.elevated_exit < self.elevated_enter:
            raise ValueError(
                f"elevated_exit ({self.elevated_exit}) must be < elevated_enter ({self.elevated_enter})"
            )
        if not self.high_exit < self.high_enter:
            raise ValueError(f"high_exit ({self.high_exit}) must be < high_enter ({self.high_enter})")
        if not self.elevated_enter < self.high_enter:
            raise ValueError(
                f"elevated_enter ({self.elevated_enter}) must be < high_enter ({self.high_enter})"
            )
        return self


class RuleProfile(BaseModel):
    """Time rules for a set of age bands; an absent rule is off."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    age_bands: tuple[str, ...] = ()
    daily_cap_min: PositiveMinutes | None = None
    curfew: str | None = None
    continuous_use_min: PositiveMinutes | None = None
    cooldown_s: Seconds = 3_600  # between two curfew alerts

    @field_validator("curfew")
    @classmethod
    def _curfew_format(cls, v: str | None) -> str | None:
        if v is not None:
            parse_curfew(v)
        return v


_CURFEW_DEFAULT = "22:00-06:00"


def _default_profiles() -> dict[str, RuleProfile]:
    # Mirrors stream/config/policy.toml (a test pins the two together); sources are cited there.
    return {
        "child": RuleProfile(
            age_bands=("u8", "u13"), daily_cap_min=60, curfew=_CURFEW_DEFAULT, continuous_use_min=30
        ),
        "young_teen": RuleProfile(
            age_bands=("13-15",), daily_cap_min=60, curfew=_CURFEW_DEFAULT, continuous_use_min=30
        ),
        "older_teen": RuleProfile(
            age_bands=("16-17",), daily_cap_min=120, curfew=_CURFEW_DEFAULT, continuous_use_min=60
        ),
        "adult": RuleProfile(age_bands=("adult", "18+")),
    }


class RulesConfig(BaseModel):
    """Rule profiles by name, and the profile for missing or unknown age bands."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default_profile: str = "adult"
    profiles: dict[str, RuleProfile] = Field(default_factory=_default_profiles)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.default_profile not in self.profiles:
            raise ValueError(
                f"default_profile {self.default_profile!r} is not one of the profiles "
                f"{sorted(self.profiles)}"
            )
        owner: dict[str, str] = {}
        for name, profile in self.profiles.items():
            for band in profile.age_bands:
                if band in owner:
                    raise ValueError(
                        f"age band {band!r} is listed in profiles {owner[band]!r} and {name!r}"
                    )
                owner[band] = name
        return self


class PolicyConfig(BaseModel):
    """The whole alert policy; load it with :func:`load_policy_config`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ml: MlPolicy = Field(default_factory=MlPolicy)
    rules: RulesConfig = Field(default_factory=RulesConfig)

    def with_model_thresholds(self, thresholds: Mapping[str, float]) -> PolicyConfig:
        """Return a copy whose ML thresholds are overridden by those a model suggests.

        Only the keys elevated_enter, elevated_exit, high_enter and high_exit are taken; others
        are ignored. Raises ``ConfigError`` if a value is not a number or the result is invalid.
        """
        overrides: dict[str, float] = {}
        for key in _THRESHOLD_KEYS:
            if key not in thresholds:
                continue
            raw = thresholds[key]
            try:
                if isinstance(raw, bool):
                    raise ValueError("a boolean is not a threshold")
                overrides[key] = float(raw)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"model thresholds: ml.{key}: {raw!r} is not a number; fix the model metadata"
                ) from exc
        if not overrides:
            return self
        try:
            ml = MlPolicy.model_validate({**self.ml.model_dump(), **overrides})
        except ValidationError as exc:
            raise ConfigError(_one_line("model thresholds", exc, prefix=("ml",))) from exc
        return self.model_copy(update={"ml": ml})


def _one_line(source: str, exc: ValidationError, prefix: tuple[str, ...] = ()) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = ".".join(str(p) for p in (*prefix, *first["loc"])) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    shown = f" (got {got!r})" if isinstance(got, str | int | float | bool) else ""
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{source}: invalid setting {loc}: {msg}{shown}{more}"


def load_policy_config(path: str | Path | None = None) -> PolicyConfig:
    """Load the alert policy from a TOML file, or the packaged default when ``path`` is None.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or a setting is invalid; the one-line
            message names the file and the setting.
    """
    if path is None:
        source = "stream/config/policy.toml (packaged default)"
        try:
            text = resources.files("stream").joinpath("config", "policy.toml").read_text("utf-8")
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read: {exc}; reinstall riskstream") from exc
    else:
        source = str(path)
        try:
            text = Path(path).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: cannot read the policy file: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return PolicyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(source, exc)) from exc


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


ML_NONE: Final = "none"
_ML_LEVELS: Final = (ML_NONE, LEVEL_ELEVATED, LEVEL_HIGH)

# Field names in the user's Redis hash; the "pol:" prefix keeps them apart from other state that
# may share the hash. Every field is always written ("" = unset) so an HSET overwrites stale values.
_F_TICK: Final = "pol:tick"
_F_ML: Final = "pol:ml"
_F_ML_AT: Final = "pol:ml_at"
_F_EL_T0: Final = "pol:el_t0"
_F_HI_T0: Final = "pol:hi_t0"
_F_CAP_DAY: Final = "pol:cap_day"
_F_CF_AT: Final = "pol:cf_at"
_F_CU_N: Final = "pol:cu_n"
_F_CU_MIN: Final = "pol:cu_min"
STATE_FIELDS: Final = (
    _F_TICK, _F_ML, _F_ML_AT, _F_EL_T0, _F_HI_T0, _F_CAP_DAY, _F_CF_AT, _F_CU_N, _F_CU_MIN,
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
    curfew_emitted_ms: int | None = None  # tick of the last rule:curfew alert
    session_alerts: int = 0  # continuous-use multiples already alerted in the current session
    session_min: float = 0.0  # session length at the last evaluation (a drop = new session)

    def to_fields(self) -> dict[str, str]:
        """Serialise to a flat str→str mapping (every field present; "" = unset)."""
        return {
            _F_TICK: _opt_int_str(self.last_tick_ms),
            _F_ML: self.ml_level,
            _F_ML_AT: _opt_int_str(self.ml_emitted_ms),
            _F_EL_T0: _opt_int_str(self.elevated_since_ms),
            _F_HI_T0: _opt_int_str(self.high_since_ms),
            _F_CAP_DAY: _opt_int_str(self.cap_day),
            _F_CF_AT: _opt_int_str(self.curfew_emitted_ms),
            _F_CU_N: str(self.session_alerts),
            _F_CU_MIN: repr(float(self.session_min)),
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
                cap_day=_parse_opt_int(get(_F_CAP_DAY, "")),
                curfew_emitted_ms=_parse_opt_int(get(_F_CF_AT, "")),
                session_alerts=int(get(_F_CU_N, "") or 0),
                session_min=float(get(_F_CU_MIN, "") or 0.0),
            )
        except ValueError as exc:
            shown = {k: v for k, v in fields.items() if k.startswith("pol:")}
            raise ValueError(f"corrupt policy state {shown!r}: {exc}") from exc
        if state.ml_level not in _ML_LEVELS:
            raise ValueError(f"corrupt policy state: {_F_ML}={state.ml_level!r} not in {_ML_LEVELS}")
        return state


def _opt_int_str(x: int | None) -> str:
    return "" if x is None else str(x)


def _parse_opt_int(s: str) -> int | None:
    return None if s == "" else int(s)


# ---------------------------------------------------------------------------------------------
# The policy


@dataclass(frozen=True, slots=True)
class _Profile:
    name: str
    daily_cap_min: int | None
    curfew: str | None
    curfew_window: tuple[int, int] | None
    continuous_use_min: int | None
    cooldown_ms: int


class AlertPolicy:
    """Turns one user's evaluations, in increasing tick order, into alert decisions."""

    __slots__ = ("config", "tick_ms", "_profiles", "_by_band", "_default")

    def __init__(self, config: PolicyConfig, *, tick_ms: int = 60_000) -> None:
        if tick_ms <= 0:
            raise ConfigError(f"tick_ms must be positive, got {tick_ms}")
        self.config = config
        self.tick_ms = tick_ms
        self._profiles = {
            name: _Profile(
                name=name,
                daily_cap_min=p.daily_cap_min,
                curfew=p.curfew,
                curfew_window=None if p.curfew is None else parse_curfew(p.curfew),
                continuous_use_min=p.continuous_use_min,
                cooldown_ms=p.cooldown_s * 1000,
            )
            for name, p in config.rules.profiles.items()
        }
        self._by_band = {
            band: self._profiles[name]
            for name, p in config.rules.profiles.items()
            for band in p.age_bands
        }
        self._default = self._profiles[config.rules.default_profile]

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
        if score >= cfg.elevated_enter:
            if state.elevated_since_ms is None:
                state.elevated_since_ms = tick
        else:
            state.elevated_since_ms = None
        if score >= cfg.high_enter:
            if state.high_since_ms is None:
                state.high_since_ms = tick
        else:
            state.high_since_ms = None
        persistence_ms = cfg.persistence_s * 1000
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
        elif level == LEVEL_HIGH and score < cfg.high_exit:
            target = LEVEL_ELEVATED if score >= cfg.elevated_exit else LEVEL_CLEARED
        elif level == LEVEL_ELEVATED and score < cfg.elevated_exit:
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
                "persistence_s": cfg.persistence_s,
                "cooldown_s": cfg.cooldown_s,
            },
        )

    # -- rules layer ------------------------------------------------------------------------

    def _decide_rules(self, state: PolicyState, ev: Evaluation) -> list[Decision]:
        r = ev.rules
        profile = self._profile(r.age_band)
        tick = ev.tick_end_ms
        out: list[Decision] = []

        cap = profile.daily_cap_min
        if (
            cap is not None
            and r.today_active_min >= cap
            and (state.cap_day is None or r.local_day > state.cap_day)
        ):
            state.cap_day = r.local_day
            reason: tuple[str, float, float | str] = ("today_active_min", r.today_active_min, cap)
            details: dict[str, float | int | str] = {"daily_cap_min": cap, "local_day": r.local_day}
            out.append(_rule_decision(ev, profile.name, KIND_DAILY_CAP, LEVEL_HIGH, reason, details))

        if (
            profile.curfew is not None
            and profile.curfew_window is not None
            and in_window(r.local_minute, *profile.curfew_window)
            and (
                state.curfew_emitted_ms is None
                or tick - state.curfew_emitted_ms >= profile.cooldown_ms
            )
        ):
            state.curfew_emitted_ms = tick
            reason = ("local_minute", r.local_minute, profile.curfew)
            details = {"curfew": profile.curfew, "cooldown_s": profile.cooldown_ms // 1000}
            out.append(_rule_decision(ev, profile.name, KIND_CURFEW, LEVEL_ELEVATED, reason, details))

        # A shorter session than at the last evaluation (or none) means a new session began.
        if r.session_min <= 0 or r.session_min < state.session_min:
            state.session_alerts = 0
        state.session_min = max(float(r.session_min), 0.0)
        every = profile.continuous_use_min
        if every is not None and r.session_min >= (state.session_alerts + 1) * every:
            reached = int(r.session_min // every)
            state.session_alerts = reached
            reason = ("session_min", r.session_min, reached * every)
            details = {"continuous_use_min": every, "occurrence": reached}
            out.append(_rule_decision(ev, profile.name, KIND_CONTINUOUS_USE, LEVEL_ELEVATED, reason, details))
        return out


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
