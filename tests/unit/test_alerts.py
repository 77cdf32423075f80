"""Alert contract v1: deterministic ids and canonical JSON (docs/contracts.md §3)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.core.alerts import (
    ALERT_SCHEMA_VERSION,
    KINDS,
    LEVELS,
    Alert,
    Reason,
    alert_from_json,
    alert_id,
    alert_to_json,
    alerts_to_json,
    format_rfc3339_ms,
    parse_rfc3339_ms,
    round_floats,
)


def test_constants() -> None:
    assert ALERT_SCHEMA_VERSION == 1
    assert KINDS == ("ml_risk", "rule:daily_cap", "rule:curfew", "rule:continuous_use")
    assert LEVELS == ("elevated", "high", "cleared")


def test_alert_id_matches_documented_recipe() -> None:
    expected = hashlib.blake2b(b"2:u1,7:ml_risk,4:high,1:0,", digest_size=16).hexdigest()
    assert alert_id("u1", "ml_risk", "high", 0) == expected
    assert len(expected) == 32


def test_alert_id_counts_utf8_bytes_and_negative_ticks() -> None:
    payload = "3:é!,11:rule:curfew,8:elevated,4:-600,".encode()
    assert alert_id("é!", "rule:curfew", "elevated", -600) == hashlib.blake2b(
        payload, digest_size=16
    ).hexdigest()


def test_alert_id_is_deterministic() -> None:
    a = alert_id("user-42", "ml_risk", "elevated", 1_700_000_040_000)
    assert a == alert_id("user-42", "ml_risk", "elevated", 1_700_000_040_000)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("a|b", "c", "high", 1), ("a", "b|c", "high", 1)),
        (("a:1", "ml_risk", "high", 1), ("a", "1:ml_risk", "high", 1)),
        (("u1", "ml_risk", "high", 12), ("u11", "ml_risk", "high", 2)),
        (("u", "ml_risk", "elevated", 60_000), ("u", "ml_risk", "high", 60_000)),
        (("u", "ml_risk", "high", 60_000), ("u", "ml_risk", "high", 120_000)),
        (("u", "ml_risk", "high", 60_000), ("u", "rule:curfew", "high", 60_000)),
        (("2:u,", "x", "y", 0), ("", "2:u,x", "y", 0)),
    ],
)
def test_alert_id_does_not_collide(
    left: tuple[str, str, str, int], right: tuple[str, str, str, int]
) -> None:
    assert alert_id(*left) != alert_id(*right)


@given(st.text(min_size=1), st.data())
def test_alert_id_differs_wherever_user_and_kind_are_split(joined: str, data: st.DataObject) -> None:
    # A plain concatenation would collide for every split of the same string; ours never does.
    i = data.draw(st.integers(0, len(joined)))
    j = data.draw(st.integers(0, len(joined)).filter(lambda k: k != i))
    left = alert_id(joined[:i], joined[i:], "high", 60_000)
    right = alert_id(joined[:j], joined[j:], "high", 60_000)
    assert left != right


def test_alert_id_rejects_non_int_tick() -> None:
    with pytest.raises(TypeError):
        alert_id("u", "ml_risk", "high", 1.0)  # type: ignore[arg-type]


def _alert(**overrides: object) -> Alert:
    base: dict[str, object] = {
        "alert_id": alert_id("user-1", "ml_risk", "high", 1_700_000_040_000),
        "user_id": "user-1",
        "kind": "ml_risk",
        "level": "high",
        "score": 0.812345,
        "model_version": "gbt-2024-06-01",
        "event_time_ms": 1_700_000_040_000,
        "emitted_at_ms": 1_700_000_042_345,
        "reasons": (
            Reason(feature="night_share", value=0.42, baseline=0.1, contribution=0.25),
            Reason(feature="sessions_day", value=88.0, baseline=None, contribution=0.1),
        ),
        "features": {"sessions_day": 88.0, "night_share": 0.42},
        "details": {"from_level": "none", "high_enter": 0.75, "persistence_s": 21600},
    }
    base.update(overrides)
    return Alert(**base)  # type: ignore[arg-type]


def test_json_has_contract_keys_in_order_and_rfc3339_times() -> None:
    obj = orjson.loads(alert_to_json(_alert()))
    assert list(obj) == [
        "v", "alert_id", "user_id", "kind", "level", "score", "model_version",
        "event_time", "emitted_at", "reasons", "features", "details",
    ]  # fmt: skip
    assert obj["v"] == 1
    assert obj["event_time"] == "2023-11-14T22:14:00.000Z"
    assert obj["emitted_at"] == "2023-11-14T22:14:02.345Z"
    assert obj["reasons"][0] == {
        "feature": "night_share", "value": 0.42, "baseline": 0.1, "contribution": 0.25,
        "threshold": None, "text": None,
    }  # fmt: skip
    assert list(obj["features"]) == ["night_share", "sessions_day"]  # sorted: canonical bytes


def test_json_round_trip() -> None:
    alert = _alert()
    assert alert_from_json(alert_to_json(alert)) == alert


def test_json_round_trip_rule_alert_without_emitted_at() -> None:
    alert = _alert(
        alert_id=alert_id("kid", "rule:curfew", "elevated", 60_000),
        user_id="kid",
        kind="rule:curfew",
        level="elevated",
        score=None,
        model_version=None,
        event_time_ms=60_000,
        emitted_at_ms=None,
        reasons=(Reason.for_rule("local_minute", 1410, "22:00-06:00"),),
        features=None,
        details={"profile": "young_teen", "curfew": "22:00-06:00", "night": 0},
    )
    data = alert_to_json(alert)
    obj = orjson.loads(data)
    assert obj["emitted_at"] is None
    assert obj["event_time"] == "1970-01-01T00:01:00.000Z"
    assert obj["reasons"][0]["threshold"] == "22:00-06:00"
    assert obj["reasons"][0]["text"] == "23:30 local time, inside the curfew 22:00-06:00"
    assert alert_from_json(data) == alert


@pytest.mark.parametrize(("name", "value", "threshold", "text"), [
    ("local_minute", 23 * 60 + 34, "22:00-06:00", "23:34 local time, inside the curfew 22:00-06:00"),
    ("curfew_over_minute", 6 * 60 + 5, "22:00-06:00", "06:05 local time, the curfew night (22:00-06:00) is over"),
    ("today_active_min", 121.4, 120, "121 min today, cap 120"),
    ("session_min", 61.0, 60, "61 min without a break, limit 60"),
])
def test_rule_reasons_read_as_a_person_would_say_them(name: str, value: float, threshold: float | str,
                                                      text: str) -> None:
    assert Reason.for_rule(name, value, threshold).text == text


def test_feature_reasons_name_value_and_typical_value() -> None:
    r = Reason.for_feature("night_share_7d", 0.6612, 0.1234, 0.2)
    assert r.text == "night share 7d 0.661 (typical 0.123)"
    assert (r.feature, r.value, r.baseline, r.contribution) == ("night_share_7d", 0.6612, 0.1234, 0.2)


def test_floats_are_rounded_to_6_decimals_so_serialisation_is_canonical() -> None:
    alert = _alert(score=0.1 + 0.2, features={"x": 1 / 3}, details={"t": 2 / 3})
    data = alert_to_json(alert)
    obj = orjson.loads(data)
    assert obj["score"] == 0.3
    assert obj["features"] == {"x": 0.333333}
    assert obj["details"] == {"t": 0.666667}
    assert alert_to_json(alert_from_json(data)) == data


def test_numpy_float_values_serialise_like_python_floats() -> None:
    plain = alert_to_json(_alert(features={"x": float(np.float32(0.1))}))
    numpy_ = alert_to_json(_alert(features={"x": np.float32(0.1)}))
    assert plain == numpy_


def test_stamped_sets_emitted_at_only() -> None:
    alert = _alert(emitted_at_ms=None)
    stamped = alert.stamped(1_700_000_099_001)
    assert stamped.emitted_at_ms == 1_700_000_099_001
    assert stamped.alert_id == alert.alert_id
    assert orjson.loads(alert_to_json(stamped))["emitted_at"] == "2023-11-14T22:14:59.001Z"


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1, "1970-01-01T00:00:00.001Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
        (1_709_251_199_999, "2024-02-29T23:59:59.999Z"),
    ],
)
def test_rfc3339_formatting(ms: int, text: str) -> None:
    assert format_rfc3339_ms(ms) == text
    assert parse_rfc3339_ms(text) == ms


def test_rfc3339_parse_accepts_offsets_and_rejects_naive() -> None:
    assert parse_rfc3339_ms("1970-01-01T01:00:00.500+01:00") == 500
    with pytest.raises(ValueError):
        parse_rfc3339_ms("1970-01-01T00:00:00.000")


@given(st.integers(min_value=-62_135_596_800_000 + 86_400_000, max_value=253_402_300_799_999))
def test_rfc3339_round_trip_property(ms: int) -> None:
    assert parse_rfc3339_ms(format_rfc3339_ms(ms)) == ms


def test_invalid_alerts_are_rejected() -> None:
    with pytest.raises(ValueError, match="level"):
        _alert(level="low")
    with pytest.raises(ValueError, match="kind"):
        _alert(kind="rule:")
    with pytest.raises(ValueError, match="schema"):
        alert_from_json(alert_to_json(_alert()).replace(b'"v":1', b'"v":2'))
    with pytest.raises(ValueError, match="JSON"):
        alert_from_json(b"{not json")
    with pytest.raises(ValueError, match="contract"):
        alert_from_json(b'{"v":1}')


def _same_floats(a: list[float], b: list[float]) -> bool:
    """Equal as doubles, signs of zero included (orjson writes -0.0 and 0.0 differently)."""
    return len(a) == len(b) and all(x == y and math.copysign(1, x) == math.copysign(1, y) for x, y in zip(a, b))


_finite = st.floats(allow_nan=False, allow_infinity=False)
# halves of the last decimal place (ties, where the array's product may land on either side), dyadic
# values with a tie in their exact expansion (1/128 = 0.0078125), and values near 2**52 / 10**6
_tricky = st.one_of(
    _finite,
    st.integers(-(10**12), 10**12).map(lambda n: (n + 0.5) / 1e6),
    st.tuples(st.integers(-(2**40), 2**40), st.integers(0, 60)).map(lambda t: t[0] / 2.0 ** t[1]),
    st.floats(min_value=4e9, max_value=6e9),
    st.integers(-(10**9), 10**9).map(lambda n: n / 1e6),
)


@given(st.lists(_tricky, max_size=80), st.integers(0, 9))
def test_round_floats_is_round_of_each_value_exactly(values: list[float], decimals: int) -> None:
    assert _same_floats(round_floats(values, decimals), [round(v, decimals) for v in values])
    assert _same_floats(round_floats(np.array(values, np.float64), decimals), [round(v, decimals) for v in values])


def test_round_floats_ties_and_signed_zero() -> None:
    vals = [0.0078125, -0.0078125, 2.5e-6, 0.0000005, -1e-9, -0.0, 1e300, 5e-324, 4503599627.3704995]
    assert _same_floats(round_floats(vals), [round(v, 6) for v in vals])


_feature_values = st.one_of(_tricky, st.sampled_from([math.nan, math.inf, -math.inf]), st.integers(-5, 5))


@given(st.lists(st.one_of(st.none(), st.dictionaries(st.sampled_from([f"f{i}" for i in range(40)]), _feature_values,
                                                     max_size=40)), max_size=8))
def test_alerts_to_json_is_alert_to_json_of_each(feature_maps: list[dict[str, float] | None]) -> None:
    """The batch serialiser (one rounding for many alerts' features) writes the same bytes."""
    alerts = [_alert(features=f, user_id=f"u{i}") for i, f in enumerate(feature_maps)]
    assert alerts_to_json(alerts) == [alert_to_json(a) for a in alerts]
