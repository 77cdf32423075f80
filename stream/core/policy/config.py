"""Alert policy configuration: ML thresholds, rule profiles per age band, TOML loading."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Final, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from stream.core.layout import EVIDENCE_DAYS_KEY, MAX_EVIDENCE_DAYS
from stream.errors import ConfigError

__all__ = [
    "MlPolicy",
    "PolicyConfig",
    "PositiveMinutes",
    "Probability",
    "RuleProfile",
    "RulesConfig",
    "Seconds",
    "in_window",
    "load_policy_config",
    "parse_curfew",
]

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
    # What the thresholds are compared with: "ticks" = the score at every evaluation, sustained for
    # persistence_s; "day_mean" = the mean of the user's last `evidence_days` day-end scores (the
    # last scored tick of each local day), decided when a day closes (docs/semantics.md).
    evidence: Literal["ticks", "day_mean"] = "ticks"
    evidence_days: Annotated[int, Field(strict=True, ge=1, le=MAX_EVIDENCE_DAYS)] = 3

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
        """Return a copy whose ML thresholds are those a model suggests, except the ones this
        configuration sets explicitly (an operator's choice in the policy file wins).

        Only the keys elevated_enter, elevated_exit, high_enter, high_exit and evidence_days (0:
        per-tick evidence; N: the mean of N day-end scores) are taken; others are ignored. Raises ``ConfigError`` if a value is not a number or the result is invalid.
        """
        overrides: dict[str, float | int | str] = {}
        for key in (*_THRESHOLD_KEYS, EVIDENCE_DAYS_KEY):
            if key not in thresholds or key in self.ml.model_fields_set:
                continue
            raw = thresholds[key]
            try:
                if isinstance(raw, bool):
                    raise ValueError("a boolean is not a threshold")
                value = float(raw)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"model thresholds: ml.{key}: {raw!r} is not a number; fix the model metadata"
                ) from exc
            if key != EVIDENCE_DAYS_KEY:
                overrides[key] = value
            elif "evidence" not in self.ml.model_fields_set:
                if value != int(value) or not 0 <= value <= MAX_EVIDENCE_DAYS:
                    raise ConfigError(f"model thresholds: {key}: {raw!r} is not a whole number of days "
                                      f"in 0..{MAX_EVIDENCE_DAYS}; fix the model metadata")
                if value == 0:
                    overrides["evidence"] = "ticks"
                else:
                    overrides["evidence"], overrides["evidence_days"] = "day_mean", int(value)
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
