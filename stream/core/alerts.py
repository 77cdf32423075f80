"""The alert record of contract v1 (docs/contracts.md §3): its deterministic id and its JSON form.

Additions to the v1 fields (docs/contracts.md §3), both backwards compatible for readers that ignore unknown keys:

* ``details``: an object with the policy parameters behind the decision (thresholds, rule profile,
  the level the user came from, …); values are numbers or strings.
* each entry of ``reasons`` carries a ``threshold`` next to ``feature``, ``value``, ``baseline`` and
  ``contribution``; rule alerts use ``feature`` = the rule input, ``value`` = its value and
  ``threshold`` = the limit it reached (a number, or the window such as ``"22:00-06:00"``).

Serialisation is canonical so that the offline scorer, a replay and the live worker write the same
bytes for the same decision: fixed top-level key order, ``features`` and ``details`` sorted by key,
floats rounded to 6 decimals, times as RFC 3339 UTC with milliseconds and ``Z``. JSON has no NaN or
infinity, so a non-finite float is written as ``null``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
from numpy.typing import ArrayLike

__all__ = [
    "ALERT_SCHEMA_VERSION",
    "KINDS",
    "KIND_CONTINUOUS_USE",
    "KIND_CURFEW",
    "KIND_DAILY_CAP",
    "KIND_ML_RISK",
    "LEVELS",
    "LEVEL_CLEARED",
    "LEVEL_ELEVATED",
    "LEVEL_HIGH",
    "Alert",
    "Detail",
    "Reason",
    "alert_from_json",
    "alert_id",
    "alert_to_json",
    "alerts_to_json",
    "format_rfc3339_ms",
    "parse_rfc3339_ms",
    "round_floats",
    "rule_text",
]

ALERT_SCHEMA_VERSION = 1

KIND_ML_RISK = "ml_risk"
KIND_DAILY_CAP = "rule:daily_cap"
KIND_CURFEW = "rule:curfew"
KIND_CONTINUOUS_USE = "rule:continuous_use"
KINDS: tuple[str, ...] = (KIND_ML_RISK, KIND_DAILY_CAP, KIND_CURFEW, KIND_CONTINUOUS_USE)

LEVEL_ELEVATED = "elevated"
LEVEL_HIGH = "high"
LEVEL_CLEARED = "cleared"
LEVELS: tuple[str, ...] = (LEVEL_ELEVATED, LEVEL_HIGH, LEVEL_CLEARED)

_FLOAT_DECIMALS = 6
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

Detail = float | int | str


def _netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


def alert_id(user_id: str, kind: str, level: str, tick_end_ms: int) -> str:
    """Return the deterministic id of the alert for (user, kind, level, evaluation tick).

    Recipe (stable; downstream teams may recompute it)::

        payload = ns(utf8(user_id)) + ns(utf8(kind)) + ns(utf8(level)) + ns(ascii(str(tick_end_ms)))
        ns(b)   = ascii(str(len(b))) + b":" + b + b","          # a netstring, len in bytes
        alert_id = blake2b(payload, digest_size=16).hexdigest()  # 32 lower-case hex chars

    ``tick_end_ms`` is the tick end in epoch milliseconds, written as a base-10 integer with a
    leading ``-`` if negative and no leading zeros. Length prefixes make the encoding injective, so
    ``("a|b", "c")`` and ``("a", "b|c")`` cannot collide. Example:
    ``alert_id("u1", "ml_risk", "high", 0)`` hashes ``b"2:u1,7:ml_risk,4:high,1:0,"``.
    """
    if isinstance(tick_end_ms, bool) or not isinstance(tick_end_ms, int):
        raise TypeError(f"tick_end_ms must be an int, got {type(tick_end_ms).__name__}")
    payload = b"".join(
        _netstring(part)
        for part in (
            user_id.encode("utf-8"),
            kind.encode("utf-8"),
            level.encode("utf-8"),
            str(tick_end_ms).encode("ascii"),
        )
    )
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Reason:
    """One explanation of an alert: a feature (or rule input), its value and what it is compared to."""

    feature: str | None = None
    value: float | None = None
    baseline: float | None = None
    contribution: float | None = None
    threshold: float | str | None = None
    text: str | None = None  # the same, as a person would say it

    @classmethod
    def for_rule(cls, name: str, value: float, threshold: float | str) -> Reason:
        """The reason of a rule alert: the rule input, its value and the threshold it reached."""
        return cls(feature=name, value=value, threshold=threshold, text=rule_text(name, value, threshold))

    @classmethod
    def for_feature(cls, name: str, value: float | None, baseline: float | None,
                    contribution: float | None) -> Reason:
        """The reason of an ``ml_risk`` alert: a feature, its value, the healthy baseline and the
        part of the score it accounts for."""
        text = None
        if value is not None:
            text = f"{name.replace('_', ' ')} {value:.3g}"
            if baseline is not None:
                text += f" (typical {baseline:.3g})"
        return cls(feature=name, value=value, baseline=baseline, contribution=contribution, text=text)


def _clock(minute: float) -> str:
    m = int(minute)
    return f"{m // 60:02d}:{m % 60:02d}"


def rule_text(name: str, value: float, threshold: float | str) -> str:
    """A rule input and its threshold in words: ``23:34 local time, curfew 22:00-06:00``."""
    if name == "local_minute":
        return f"{_clock(value)} local time, inside the curfew {threshold}"
    if name == "curfew_over_minute":
        return f"{_clock(value)} local time, the curfew night ({threshold}) is over"
    if name == "today_active_min":
        return f"{value:.0f} min today, cap {threshold:g}" if not isinstance(threshold, str) else f"{value:.0f} min today"
    if name == "day_over":
        return "a new local day: the daily cap is reset"
    if name == "session_over_min":
        return f"the {value:.0f}-min session is over"
    if name == "session_min":
        return (f"{value:.0f} min without a break, limit {threshold:g}" if not isinstance(threshold, str)
                else f"{value:.0f} min without a break")
    return f"{name} {value:g} (threshold {threshold})"


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """One alert of contract v1; ``event_time_ms`` is the evaluation tick end (event time)."""

    v: int = ALERT_SCHEMA_VERSION
    alert_id: str
    user_id: str
    kind: str
    level: str
    score: float | None = None
    model_version: str | None = None
    event_time_ms: int
    emitted_at_ms: int | None = None
    reasons: tuple[Reason, ...] = ()
    features: dict[str, float] | None = None
    details: dict[str, Detail] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.v != ALERT_SCHEMA_VERSION:
            raise ValueError(f"alert schema v{self.v} is not supported (expected v{ALERT_SCHEMA_VERSION})")
        if self.kind != KIND_ML_RISK and not (self.kind.startswith("rule:") and len(self.kind) > 5):
            raise ValueError(f"alert kind {self.kind!r} is neither 'ml_risk' nor 'rule:<name>'")
        if self.level not in LEVELS:
            raise ValueError(f"alert level {self.level!r} is not one of {LEVELS}")

    def stamped(self, emitted_at_ms: int) -> Alert:
        """Return a copy with the wall-clock publishing time set."""
        return dataclasses.replace(self, emitted_at_ms=emitted_at_ms)


def format_rfc3339_ms(epoch_ms: int) -> str:
    """Format epoch milliseconds as RFC 3339 UTC with milliseconds, e.g. ``1970-01-01T00:00:00.000Z``."""
    dt = _EPOCH + timedelta(milliseconds=epoch_ms)
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
        f".{dt.microsecond // 1000:03d}Z"
    )


def parse_rfc3339_ms(text: str) -> int:
    """Parse an RFC 3339 timestamp with an offset into epoch milliseconds (sub-ms digits floored)."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset (RFC 3339 requires one)")
    return (dt - _EPOCH) // _ONE_MS


def round_floats(values: ArrayLike, decimals: int = _FLOAT_DECIMALS) -> list[float]:
    """``[round(float(v), decimals) for v in values]`` for finite values, exactly the same doubles
    (signs of zero included), in a few array operations instead of one ``round`` (a decimal
    conversion, ≈ 1 µs here) per value.

    Python's ``round`` gives the double nearest to N / 10**decimals, N being the value times
    10**decimals rounded half to even. The array computes that product in floating point,
    rounds it half to even (``rint``: N itself, unless the product lies within its rounding
    error of a half) and divides by 10**decimals (correctly rounded: the same nearest double).
    Values whose product is that close to a half, or beyond 2**52 (or not finite), are left to
    ``round``: a tie resolved on the exact value, not on the rounded product.
    """
    a = np.asarray(values, dtype=np.float64).ravel()
    scale = 10.0 ** decimals
    with np.errstate(over="ignore", invalid="ignore"):  # those go to round below
        y = a * scale
        out: list[float] = (np.rint(y) / scale).tolist()
        ay = np.abs(y)
        unsure = ~(ay < 2.0**52) | (np.abs(np.abs(y - np.trunc(y)) - 0.5) <= ay * 2.0**-48)  # trunc's remainder: exact
    for i in np.flatnonzero(unsure).tolist():
        out[i] = round(float(a[i]), decimals)
    return out


def _num(x: float | None) -> float | None:
    if x is None:
        return None
    f = float(x)  # also turns numpy scalars into plain floats orjson can write
    if not math.isfinite(f):
        return None
    return round(f, _FLOAT_DECIMALS)


def _detail(x: Detail) -> Detail:
    if isinstance(x, bool) or isinstance(x, str):
        return x
    if isinstance(x, int):
        return x
    rounded = _num(x)
    if rounded is None:
        raise ValueError(f"detail value {x!r} is not a finite number")
    return rounded


def _reason_to_obj(r: Reason) -> dict[str, Any]:
    threshold = r.threshold if isinstance(r.threshold, str) else _num(r.threshold)
    return {
        "feature": r.feature,
        "value": _num(r.value),
        "baseline": _num(r.baseline),
        "contribution": _num(r.contribution),
        "threshold": threshold,
        "text": r.text,
    }


def alert_to_json(alert: Alert) -> bytes:
    """Serialise an alert to its canonical JSON bytes (the contract-v1 keys, then ``details``)."""
    features = alert.features
    return orjson.dumps(_alert_obj(alert, None if features is None else {k: _num(features[k]) for k in sorted(features)}))


def alerts_to_json(alerts: Sequence[Alert]) -> list[bytes]:
    """:func:`alert_to_json` of each alert, byte for byte; the features of many alerts (those whose
    values are all finite floats, as the detector's are) rounded in one :func:`round_floats`."""
    batch = [i for i, a in enumerate(alerts)
             if a.features and all(type(v) is float for v in a.features.values())
             and math.isfinite(sum(a.features.values()))]
    if len(batch) < _BATCH_ROUNDING_MIN:
        return [alert_to_json(a) for a in alerts]
    keys = [sorted(alerts[i].features) for i in batch]  # type: ignore[arg-type]
    flat = round_floats([alerts[i].features[k] for i, ks in zip(batch, keys) for k in ks])  # type: ignore[index]
    out: list[bytes | None] = [None] * len(alerts)
    at = 0
    for i, ks in zip(batch, keys):
        out[i] = orjson.dumps(_alert_obj(alerts[i], dict(zip(ks, flat[at:at + len(ks)]))))
        at += len(ks)
    return [b if b is not None else alert_to_json(a) for a, b in zip(alerts, out)]


_BATCH_ROUNDING_MIN = 3  # fewer alerts: the array operations cost more than they save


def _alert_obj(alert: Alert, features: dict[str, float | None] | None) -> dict[str, Any]:
    return {
        "v": alert.v,
        "alert_id": alert.alert_id,
        "user_id": alert.user_id,
        "kind": alert.kind,
        "level": alert.level,
        "score": _num(alert.score),
        "model_version": alert.model_version,
        "event_time": format_rfc3339_ms(alert.event_time_ms),
        "emitted_at": None if alert.emitted_at_ms is None else format_rfc3339_ms(alert.emitted_at_ms),
        "reasons": [_reason_to_obj(r) for r in alert.reasons],
        "features": features,
        "details": {k: _detail(alert.details[k]) for k in sorted(alert.details)},
    }


def _opt_float(obj: Mapping[str, Any], key: str) -> float | None:
    x = obj.get(key)
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ValueError(f"alert field {key!r} must be a number or null, got {x!r}")
    return float(x)


def alert_from_json(data: bytes | str) -> Alert:
    """Parse canonical alert JSON back into an :class:`Alert`; raises ``ValueError`` if malformed."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"alert is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError("alert JSON must be an object")
    try:
        reasons = tuple(
            Reason(
                feature=r.get("feature"),
                value=_opt_float(r, "value"),
                baseline=_opt_float(r, "baseline"),
                contribution=_opt_float(r, "contribution"),
                threshold=(
                    r["threshold"] if isinstance(r.get("threshold"), str) else _opt_float(r, "threshold")
                ),
                text=r.get("text") if isinstance(r.get("text"), str) else None,
            )
            for r in obj.get("reasons") or ()
        )
        features_obj = obj.get("features")
        features = (
            None
            if features_obj is None
            else {str(k): float("nan") if v is None else float(v) for k, v in features_obj.items()}
        )
        emitted = obj.get("emitted_at")
        return Alert(
            v=obj["v"],
            alert_id=obj["alert_id"],
            user_id=obj["user_id"],
            kind=obj["kind"],
            level=obj["level"],
            score=_opt_float(obj, "score"),
            model_version=obj.get("model_version"),
            event_time_ms=parse_rfc3339_ms(obj["event_time"]),
            emitted_at_ms=None if emitted is None else parse_rfc3339_ms(emitted),
            reasons=reasons,
            features=features,
            details=dict(obj.get("details") or {}),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"alert JSON does not match contract v1: {exc!r}") from exc
