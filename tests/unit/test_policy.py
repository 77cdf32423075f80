"""Alert policy: ML persistence/hysteresis/cool-down, time rules, config loading, state round trip."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from stream.core.alerts import alert_from_json, alert_id, alert_to_json
from stream.core.policy import (
    STATE_FIELDS,
    AlertPolicy,
    Decision,
    Evaluation,
    MlPolicy,
    PolicyConfig,
    PolicyState,
    RuleInputs,
    in_window,
    load_policy_config,
    parse_curfew,
)
from stream.errors import ConfigError

TICK = 60_000
T0 = 1_700_000_040_000  # an epoch-aligned tick end (2023-11-14T22:14:00Z)
MINUTE_2330 = 23 * 60 + 30


def ev(
    i: int,
    score: float | None = None,
    *,
    user: str = "u1",
    age_band: str | None = "adult",
    history_days: int = 30,
    today_active_min: float = 0.0,
    session_min: float = 0.0,
    local_minute: int = 12 * 60,
    local_day: int = 19_675,
) -> Evaluation:
    """The evaluation at tick index i (tick end T0 + i minutes)."""
    return Evaluation(
        user_id=user,
        tick_end_ms=T0 + i * TICK,
        score=score,
        rules=RuleInputs(
            today_active_min=today_active_min,
            session_min=session_min,
            local_minute=local_minute,
            local_day=local_day,
            age_band=age_band,
            history_days=history_days,
        ),
    )


def ml_policy(*, persistence_s: int = 300, cooldown_s: int = 0, **kw: float) -> AlertPolicy:
    ml = MlPolicy(persistence_s=persistence_s, cooldown_s=cooldown_s, **kw)  # type: ignore[arg-type]
    return AlertPolicy(PolicyConfig(ml=ml))


def run(policy: AlertPolicy, state: PolicyState, evs: list[Evaluation]) -> list[Decision]:
    out: list[Decision] = []
    for e in evs:
        out.extend(policy.decide(state, e))
    return out


def ml_only(ds: list[Decision]) -> list[tuple[int, str]]:
    return [((d.tick_end_ms - T0) // TICK, d.level) for d in ds if d.kind == "ml_risk"]


def kinds(ds: list[Decision]) -> list[str]:
    return [d.kind for d in ds]


# ---------------------------------------------------------------------------------------------
# ML layer transitions (persistence 5 min, no cool-down unless stated)


def test_persistence_not_yet_met_gives_nothing() -> None:
    policy, state = ml_policy(), PolicyState()
    assert run(policy, state, [ev(i, 0.6) for i in range(5)]) == []  # 4 min since t0 < 5 min
    assert state.ml_level == "none"
    assert state.elevated_since_ms == T0


def test_persistence_met_emits_elevated() -> None:
    policy, state = ml_policy(), PolicyState()
    ds = run(policy, state, [ev(i, 0.6) for i in range(7)])
    assert ml_only(ds) == [(5, "elevated")]
    d = ds[0]
    assert d.score == 0.6
    assert d.user_id == "u1"
    assert d.tick_end_ms == T0 + 5 * TICK
    assert d.alert_id == alert_id("u1", "ml_risk", "elevated", T0 + 5 * TICK)
    assert d.reasons == ()
    assert d.details == {
        "from_level": "none",
        "elevated_enter": 0.5,
        "elevated_exit": 0.4,
        "high_enter": 0.75,
        "high_exit": 0.65,
        "evidence": "ticks",
        "persistence_s": 300,
        "cooldown_s": 0,
    }
    assert state.ml_level == "elevated"


def test_persistence_counts_event_time_not_evaluations() -> None:
    policy, state = ml_policy(), PolicyState()
    # Two evaluations 5 minutes apart are enough; the score held at every evaluation in between.
    assert ml_only(run(policy, state, [ev(0, 0.55), ev(5, 0.55)])) == [(5, "elevated")]


def test_escalation_from_elevated_to_high() -> None:
    policy, state = ml_policy(), PolicyState()
    scores = [0.6] * 6 + [0.8] * 6
    ds = run(policy, state, [ev(i, s) for i, s in enumerate(scores)])
    assert ml_only(ds) == [(5, "elevated"), (11, "high")]  # high since tick 6, due at 11
    assert ds[1].details["from_level"] == "elevated"
    assert state.ml_level == "high"


def test_none_to_high_directly_when_both_are_due() -> None:
    policy, state = ml_policy(), PolicyState()
    assert ml_only(run(policy, state, [ev(i, 0.9) for i in range(8)])) == [(5, "high")]


def test_hovering_between_exit_and_enter_gives_nothing() -> None:
    policy, state = ml_policy(), PolicyState()
    run(policy, state, [ev(i, 0.6) for i in range(6)])
    assert state.ml_level == "elevated"
    hover = [0.41, 0.49, 0.45, 0.4, 0.55, 0.42] * 10
    assert run(policy, state, [ev(6 + i, s) for i, s in enumerate(hover)]) == []
    assert state.ml_level == "elevated"


def test_score_oscillating_around_enter_never_fires() -> None:
    policy, state = ml_policy(), PolicyState()
    scores = [0.51, 0.52, 0.53, 0.49] * 30  # never 5 min in a row above 0.5
    assert run(policy, state, [ev(i, s) for i, s in enumerate(scores)]) == []


def test_cleared_from_elevated_below_exit() -> None:
    policy, state = ml_policy(), PolicyState()
    ds = run(policy, state, [ev(i, 0.6) for i in range(6)] + [ev(6, 0.39)])
    assert ml_only(ds) == [(5, "elevated"), (6, "cleared")]
    assert ds[1].details["from_level"] == "elevated"
    assert state.ml_level == "none"


def test_de_escalation_high_to_elevated_then_cleared() -> None:
    policy, state = ml_policy(), PolicyState()
    evs = [ev(i, 0.9) for i in range(6)]
    evs += [ev(6, 0.7), ev(7, 0.66)]  # between high_exit and high_enter: stays high
    evs += [ev(8, 0.6)]  # < high_exit, >= elevated_exit
    evs += [ev(9, 0.45), ev(10, 0.3)]
    assert ml_only(run(policy, state, evs)) == [(5, "high"), (8, "elevated"), (10, "cleared")]


def test_high_straight_to_cleared_when_below_elevated_exit() -> None:
    policy, state = ml_policy(), PolicyState()
    evs = [ev(i, 0.9) for i in range(6)] + [ev(6, 0.2)]
    assert ml_only(run(policy, state, evs)) == [(5, "high"), (6, "cleared")]


def test_after_clear_persistence_must_be_earned_again() -> None:
    policy, state = ml_policy(), PolicyState()
    evs = [ev(i, 0.6) for i in range(6)] + [ev(6, 0.3)] + [ev(7 + i, 0.6) for i in range(6)]
    assert ml_only(run(policy, state, evs)) == [(5, "elevated"), (6, "cleared"), (12, "elevated")]


def test_cooldown_suppresses_and_later_fires_if_still_true() -> None:
    policy, state = ml_policy(cooldown_s=3600), PolicyState()
    run(policy, state, [ev(i, 0.6) for i in range(6)])  # elevated at tick 5
    # The score drops at tick 10, inside the 60-min cool-down: held back, state unchanged.
    assert run(policy, state, [ev(i, 0.3) for i in range(10, 65)]) == []
    assert state.ml_level == "elevated"
    assert state.ml_emitted_ms == T0 + 5 * TICK
    ds = policy.decide(state, ev(65, 0.3))  # 60 min after tick 5
    assert ml_only(ds) == [(65, "cleared")]


def test_cooldown_suppressed_transition_dropped_if_no_longer_true() -> None:
    policy, state = ml_policy(cooldown_s=3600), PolicyState()
    run(policy, state, [ev(i, 0.6) for i in range(6)])
    assert run(policy, state, [ev(i, 0.3) for i in range(10, 20)]) == []
    assert run(policy, state, [ev(i, 0.45) for i in range(20, 200)]) == []  # hovering again
    assert state.ml_level == "elevated"


def test_cooldown_applies_across_levels_escalation_waits() -> None:
    policy, state = ml_policy(cooldown_s=3600), PolicyState()
    evs = [ev(i, 0.6) for i in range(6)] + [ev(i, 0.9) for i in range(6, 80)]
    # high is due at tick 11 but the cool-down from tick 5 holds it to tick 65.
    assert ml_only(run(policy, state, evs)) == [(5, "elevated"), (65, "high")]


def test_not_scored_resets_persistence_timers() -> None:
    policy, state = ml_policy(), PolicyState()
    evs = [ev(i, 0.9) for i in range(4)] + [ev(4, None)] + [ev(5 + i, 0.9) for i in range(6)]
    assert ml_only(run(policy, state, evs)) == [(10, "high")]  # t0 restarts at tick 5


def test_not_scored_keeps_level_and_emits_nothing() -> None:
    policy, state = ml_policy(), PolicyState()
    run(policy, state, [ev(i, 0.6) for i in range(6)])
    assert run(policy, state, [ev(i, None) for i in range(6, 20)]) == []
    assert state.ml_level == "elevated"
    assert state.elevated_since_ms is None
    assert state.high_since_ms is None


def test_score_with_too_little_history_is_treated_as_not_scored() -> None:
    policy, state = ml_policy(), PolicyState()
    assert policy.min_history_days() == 7
    evs = [ev(i, 0.9, history_days=6) for i in range(20)]
    assert run(policy, state, evs) == []
    assert state.high_since_ms is None


def test_idempotent_reevaluation_of_an_old_tick() -> None:
    policy, state = ml_policy(), PolicyState()
    evs = [ev(i, 0.6) for i in range(6)]
    assert ml_only(run(policy, state, evs)) == [(5, "elevated")]
    before = state.to_fields()
    assert policy.decide(state, evs[5]) == []  # redelivered
    assert policy.decide(state, evs[2]) == []  # older
    assert policy.decide(state, ev(3, 0.1)) == []  # older, even with a different score
    assert state.to_fields() == before


def test_default_ml_timing_six_hours_and_a_day() -> None:
    policy, state = AlertPolicy(PolicyConfig()), PolicyState()
    evs = [ev(i, 0.8) for i in range(0, 361, 10)]  # every 10 min for 6 h
    assert ml_only(run(policy, state, evs)) == [(360, "high")]
    drop = [ev(361, 0.1), ev(360 + 1439, 0.1), ev(360 + 1440, 0.1)]
    assert ml_only(run(policy, state, drop)) == [(1800, "cleared")]


def test_malformed_evaluations_are_rejected() -> None:
    policy, state = ml_policy(), PolicyState()
    bad_tick = Evaluation("u", T0 + 1, 0.5, ev(0).rules)
    with pytest.raises(ValueError, match="aligned"):
        policy.decide(state, bad_tick)
    with pytest.raises(ValueError, match="finite"):
        policy.decide(state, ev(0, float("nan")))
    with pytest.raises(ValueError, match="local_minute"):
        policy.decide(state, ev(0, local_minute=1440))
    assert state == PolicyState()


# ---------------------------------------------------------------------------------------------
# Rules layer


def rules_policy() -> AlertPolicy:
    return AlertPolicy(load_policy_config(None))


def test_young_teen_at_2330_gets_curfew() -> None:
    policy, state = rules_policy(), PolicyState()
    ds = policy.decide(state, ev(0, age_band="13-15", local_minute=MINUTE_2330, history_days=0))
    assert kinds(ds) == ["rule:curfew"]
    d = ds[0]
    assert d.level == "elevated"
    assert d.score is None
    assert d.reasons == (("local_minute", MINUTE_2330, "22:00-06:00"),)
    assert d.details == {"profile": "young_teen", "curfew": "22:00-06:00", "night": 19_675}
    assert d.alert_id == alert_id("u1", "rule:curfew", "elevated", T0)


def levels(ds: list[Decision]) -> list[tuple[str, str]]:
    return [(d.kind, d.level) for d in ds]


def test_curfew_fires_once_per_night_and_clears_after_it() -> None:
    policy, state = rules_policy(), PolicyState()
    teen, day = "13-15", 19_675
    curfew = [("rule:curfew", "elevated")]
    assert levels(policy.decide(state, ev(0, age_band=teen, local_minute=22 * 60, local_day=day))) == curfew
    # the rest of that night, across midnight, is the same night: no further alert
    for i, (minute, d) in enumerate([(22 * 60 + 1, day), (23 * 60, day), (0, day + 1), (5 * 60 + 59, day + 1)]):
        assert policy.decide(state, ev(1 + 60 * i, age_band=teen, local_minute=minute, local_day=d)) == []
    # the first use after the night clears it; 06:00 is outside the window
    ds = policy.decide(state, ev(480, age_band=teen, local_minute=6 * 60, local_day=day + 1))
    assert levels(ds) == [("rule:curfew", "cleared")]
    assert ds[0].reasons == (("curfew_over_minute", 6 * 60, "22:00-06:00"),)
    assert policy.decide(state, ev(600, age_band=teen, local_minute=21 * 60 + 59, local_day=day + 1)) == []
    # the next night is a new one
    assert levels(policy.decide(state, ev(700, age_band=teen, local_minute=22 * 60 + 30, local_day=day + 1))) == curfew


def test_curfew_on_two_nights_in_a_row_without_daytime_use() -> None:
    policy, state = rules_policy(), PolicyState()
    teen, day = "13-15", 19_675
    assert levels(policy.decide(state, ev(0, age_band=teen, local_minute=1 * 60, local_day=day))) == [
        ("rule:curfew", "elevated")]
    # next use: the following night; the previous night is cleared and the new one alerted, at once
    ds = policy.decide(state, ev(1440, age_band=teen, local_minute=1 * 60, local_day=day + 1))
    assert levels(ds) == [("rule:curfew", "cleared"), ("rule:curfew", "elevated")]
    assert len({d.alert_id for d in ds}) == 2


def test_curfew_alerts_per_night_survive_the_state_codec() -> None:
    policy, state = rules_policy(), PolicyState()
    teen, day = "13-15", 19_675
    policy.decide(state, ev(0, age_band=teen, local_minute=23 * 60, local_day=day))
    state = PolicyState.from_fields(state.to_fields())
    assert policy.decide(state, ev(30, age_band=teen, local_minute=23 * 60 + 30, local_day=day)) == []


def test_adult_has_no_time_rules() -> None:
    policy, state = rules_policy(), PolicyState()
    evs = [
        ev(i, age_band="adult", local_minute=MINUTE_2330, today_active_min=600, session_min=300)
        for i in range(5)
    ]
    assert run(policy, state, evs) == []


@pytest.mark.parametrize("band", ["zz-unknown", None, ""])
def test_unknown_or_missing_band_uses_default_profile(band: str | None) -> None:
    policy = rules_policy()
    assert policy.profile_name(band) == "adult"
    assert policy.decide(PolicyState(), ev(0, age_band=band, local_minute=MINUTE_2330)) == []
    cfg = PolicyConfig.model_validate({"rules": {"default_profile": "young_teen"}})
    strict = AlertPolicy(cfg)
    assert strict.profile_name(band) == "young_teen"
    ds = strict.decide(PolicyState(), ev(0, age_band=band, local_minute=MINUTE_2330))
    assert kinds(ds) == ["rule:curfew"]
    assert ds[0].details["profile"] == "young_teen"


@pytest.mark.parametrize(
    ("band", "profile"),
    [("u8", "child"), ("u13", "child"), ("13-15", "young_teen"), ("16-17", "older_teen"),
     ("adult", "adult"), ("18+", "adult")],
)  # fmt: skip
def test_band_to_profile(band: str, profile: str) -> None:
    assert rules_policy().profile_name(band) == profile


def test_daily_cap_fires_once_per_local_day() -> None:
    policy, state = rules_policy(), PolicyState()
    teen = "13-15"
    assert policy.decide(state, ev(0, age_band=teen, today_active_min=59.9)) == []
    ds = policy.decide(state, ev(1, age_band=teen, today_active_min=60.0))
    assert kinds(ds) == ["rule:daily_cap"]
    assert ds[0].level == "high"
    assert ds[0].reasons == (("today_active_min", 60.0, 60),)
    assert ds[0].details == {"profile": "young_teen", "daily_cap_min": 60, "local_day": 19_675}
    assert policy.decide(state, ev(2, age_band=teen, today_active_min=75.0)) == []
    assert policy.decide(state, ev(300, age_band=teen, today_active_min=200.0)) == []
    # the next local day: the last day's alert clears (risk.levels drops the kind) at the first
    # evaluation, and the cap may fire again that day, once
    next_day = ev(1440, age_band=teen, today_active_min=2.0, local_day=19_676)
    ds = policy.decide(state, next_day)
    assert [(d.kind, d.level) for d in ds] == [("rule:daily_cap", "cleared")]
    assert ds[0].reasons == (("day_over", 19_676, 19_675),)
    assert ds[0].details == {"profile": "young_teen", "daily_cap_min": 60, "local_day": 19_675}
    assert policy.decide(state, ev(1441, age_band=teen, today_active_min=3.0, local_day=19_676)) == []
    ds = policy.decide(state, ev(1500, age_band=teen, today_active_min=61.0, local_day=19_676))
    assert [(d.kind, d.level) for d in ds] == [("rule:daily_cap", "high")]
    # an evaluation the day after that finds the cap reached at once: cleared, then the new day's alert
    ds = policy.decide(state, ev(2880, age_band=teen, today_active_min=61.0, local_day=19_677))
    assert [(d.kind, d.level) for d in ds] == [("rule:daily_cap", "cleared"), ("rule:daily_cap", "high")]
    assert len({d.alert_id for d in ds}) == 2


def test_a_state_stored_before_cleared_cap_alerts_clears_its_cap_day() -> None:
    """pol:cap_open did not exist before: a stored cap day is an alert never cleared."""
    fields = PolicyState(cap_day=19_675, cap_open=True).to_fields()
    del fields["pol:cap_open"]
    old = PolicyState.from_fields(fields)
    assert old.cap_open
    ds = rules_policy().decide(old, ev(1440, age_band="13-15", today_active_min=1.0, local_day=19_676))
    assert [(d.kind, d.level) for d in ds] == [("rule:daily_cap", "cleared")]
    assert not PolicyState.from_fields({**fields, "pol:cap_day": ""}).cap_open


def test_older_teen_cap_is_two_hours() -> None:
    policy, state = rules_policy(), PolicyState()
    assert policy.decide(state, ev(0, age_band="16-17", today_active_min=119.0)) == []
    assert kinds(policy.decide(state, ev(1, age_band="16-17", today_active_min=120.0))) == [
        "rule:daily_cap"
    ]


def test_continuous_use_fires_once_per_session_and_again_in_a_new_one() -> None:
    policy, state = rules_policy(), PolicyState()
    child = "u13"
    sessions = [(0, 10.0), (19, 29.0), (20, 30.0), (35, 45.0), (50, 60.0), (51, 61.0), (85, 95.0)]
    got = []
    for i, s in sessions:
        for d in policy.decide(state, ev(i, age_band=child, session_min=s)):
            got.append((i, d.kind, d.reasons))
    assert got == [(20, "rule:continuous_use", (("session_min", 30.0, 30),))]
    # A new session starts (length drops): the last one's alert clears, and the new session gets
    # its own alert at 30 min.
    ds = policy.decide(state, ev(200, age_band=child, session_min=1.0))
    assert [(d.kind, d.level) for d in ds] == [("rule:continuous_use", "cleared")]
    assert ds[0].reasons == (("session_over_min", 95.0, 30),)
    assert ds[0].details == {"profile": "child", "continuous_use_min": 30}
    assert policy.decide(state, ev(228, age_band=child, session_min=29.0)) == []
    ds = policy.decide(state, ev(229, age_band=child, session_min=30.0))
    assert kinds(ds) == ["rule:continuous_use"]


def test_continuous_use_resets_when_no_session() -> None:
    policy, state = rules_policy(), PolicyState()
    assert kinds(policy.decide(state, ev(0, age_band="13-15", session_min=31.0))) == [
        "rule:continuous_use"
    ]
    ds = policy.decide(state, ev(1, age_band="13-15", session_min=0.0))
    assert [(d.kind, d.level) for d in ds] == [("rule:continuous_use", "cleared")]
    assert policy.decide(state, ev(2, age_band="13-15", session_min=0.0)) == []  # cleared once
    assert kinds(policy.decide(state, ev(40, age_band="13-15", session_min=31.0))) == [
        "rule:continuous_use"
    ]


def test_older_teen_break_after_an_hour() -> None:
    policy, state = rules_policy(), PolicyState()
    assert policy.decide(state, ev(0, age_band="16-17", session_min=45.0)) == []
    ds = policy.decide(state, ev(15, age_band="16-17", session_min=60.0))
    assert ds[0].details == {"profile": "older_teen", "continuous_use_min": 60}


def test_rules_run_from_day_one_and_ml_comes_first() -> None:
    cfg = PolicyConfig(ml=MlPolicy(persistence_s=0, cooldown_s=0))
    policy, state = AlertPolicy(cfg), PolicyState()
    # No history: only the rules.
    e0 = ev(0, None, age_band="13-15", history_days=0, local_minute=MINUTE_2330,
            today_active_min=70, session_min=35)  # fmt: skip
    assert kinds(policy.decide(state, e0)) == [
        "rule:daily_cap", "rule:curfew", "rule:continuous_use"
    ]  # fmt: skip
    # 01:30 the next local day: the same curfew night (no new curfew alert), a new day for the cap
    e1 = ev(120, 0.9, age_band="13-15", history_days=10, local_minute=1 * 60 + 30, local_day=19_676,
            today_active_min=80, session_min=1)  # fmt: skip
    # (and a new session: the last one's continuous-use alert clears)
    assert [(d.kind, d.level) for d in policy.decide(state, e1)] == [
        ("ml_risk", "high"), ("rule:daily_cap", "cleared"), ("rule:daily_cap", "high"),
        ("rule:continuous_use", "cleared")]


def test_rule_decision_to_alert_json() -> None:
    policy = rules_policy()
    (d,) = policy.decide(PolicyState(), ev(0, age_band="13-15", local_minute=MINUTE_2330))
    alert = d.to_alert()
    assert alert.reasons[0].feature == "local_minute"
    assert alert.reasons[0].value == MINUTE_2330
    assert alert.reasons[0].threshold == "22:00-06:00"
    assert alert.event_time_ms == T0
    assert alert_from_json(alert_to_json(alert)) == alert


def test_curfew_parsing() -> None:
    assert parse_curfew("22:00-06:00") == (1320, 360)
    assert parse_curfew("00:00-06:00") == (0, 360)
    assert in_window(1439, 1320, 360)
    assert in_window(0, 1320, 360)
    assert not in_window(360, 1320, 360)
    assert in_window(0, 0, 360)
    assert not in_window(1320, 0, 360)
    for bad in ("24:00-06:00", "22:00-22:00", "22-06", "9:00-10:00"):
        with pytest.raises(ValueError):
            parse_curfew(bad)


# ---------------------------------------------------------------------------------------------
# Configuration


def test_default_file_loads_and_matches_the_model_defaults() -> None:
    cfg = load_policy_config(None)
    assert cfg == PolicyConfig()
    assert cfg.ml.persistence_s == 21_600
    assert cfg.ml.cooldown_s == 86_400
    assert cfg.rules.default_profile == "adult"
    profiles = cfg.rules.profiles
    assert profiles["child"].age_bands == ("u8", "u13")
    assert (profiles["young_teen"].daily_cap_min, profiles["young_teen"].curfew) == (
        60, "22:00-06:00"
    )  # fmt: skip
    assert profiles["older_teen"].continuous_use_min == 60
    assert profiles["adult"].daily_cap_min is None
    assert profiles["adult"].curfew is None
    # The packaged file is a real file in the package (shipped as package data).
    text = resources.files("stream").joinpath("config", "policy.toml").read_text("utf-8")
    assert tomllib.loads(text)["ml"]["persistence_s"] == 21_600
    assert "elevated_enter" not in tomllib.loads(text)["ml"]  # the model's thresholds serve


def test_explicit_path_loads(tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    p.write_text('[ml]\nhigh_enter = 0.8\n[rules]\ndefault_profile = "child"\n')
    cfg = load_policy_config(p)
    assert cfg.ml.high_enter == 0.8
    assert cfg.ml.elevated_enter == 0.5
    assert cfg.rules.default_profile == "child"
    assert load_policy_config(str(p)) == cfg


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("[ml]\nelevated_exit = 0.5\n", "elevated_exit"),
        ("[ml]\nhigh_exit = 0.9\n", "high_exit"),
        ("[ml]\nelevated_enter = 0.8\n", "elevated_enter"),
        ("[ml]\nhigh_enter = 1.5\n", "ml.high_enter"),
        ("[ml]\ncooldown_s = \"3600\"\n", "ml.cooldown_s"),
        ("[ml]\npersistence_s = -1\n", "ml.persistence_s"),
        ("[ml]\nbogus = 1\n", "ml.bogus"),
        ("[rules]\ndefault_profile = \"nobody\"\n", "default_profile"),
        ('[rules.profiles.x]\ncurfew = "25:00-06:00"\n[rules]\ndefault_profile = "x"\n',
         "rules.profiles.x.curfew"),
        ('[rules.profiles.x]\ndaily_cap_min = 0\n[rules]\ndefault_profile = "x"\n',
         "rules.profiles.x.daily_cap_min"),
        ('[rules.profiles.a]\nage_bands = ["k"]\n[rules.profiles.b]\nage_bands = ["k"]\n'
         '[rules]\ndefault_profile = "a"\n', "age band 'k'"),
    ],
)  # fmt: skip
def test_bad_file_raises_config_error_naming_file_and_field(
    tmp_path: Path, body: str, field: str
) -> None:
    p = tmp_path / "bad_policy.toml"
    p.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_policy_config(p)
    msg = str(info.value)
    assert str(p) in msg
    assert field in msg
    assert "\n" not in msg


def test_exit_not_below_enter_is_rejected_in_code_too() -> None:
    with pytest.raises(ValidationError, match="elevated_exit"):
        MlPolicy(elevated_enter=0.5, elevated_exit=0.5)
    with pytest.raises(ValidationError, match="high_exit"):
        MlPolicy(high_enter=0.7, high_exit=0.7)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "broken.toml"
    p.write_text("[ml\n")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        load_policy_config(p)
    with pytest.raises(ConfigError, match="missing.toml"):
        load_policy_config(tmp_path / "missing.toml")


def test_config_is_frozen() -> None:
    cfg = PolicyConfig()
    with pytest.raises(ValidationError):
        cfg.ml.high_enter = 0.9


def test_with_model_thresholds() -> None:
    cfg = PolicyConfig()
    new = cfg.with_model_thresholds(
        {"elevated_enter": 0.3, "elevated_exit": "0.2", "high_enter": 0.7, "other": 42.0}  # type: ignore[dict-item]
    )
    assert (new.ml.elevated_enter, new.ml.elevated_exit, new.ml.high_enter) == (0.3, 0.2, 0.7)
    assert new.ml.high_exit == 0.65  # not in the mapping: kept
    assert new.ml.persistence_s == cfg.ml.persistence_s
    assert new.rules == cfg.rules
    assert cfg.ml.elevated_enter == 0.5  # the original is untouched
    assert cfg.with_model_thresholds({}) == cfg
    with pytest.raises(ConfigError, match="high_exit"):
        cfg.with_model_thresholds({"high_exit": 0.8})
    with pytest.raises(ConfigError, match="high_exit"):
        cfg.with_model_thresholds({"high_enter": 0.6})  # below the kept high_exit 0.65
    with pytest.raises(ConfigError, match="ml.high_enter"):
        cfg.with_model_thresholds({"high_enter": "high"})  # type: ignore[dict-item]


# ---------------------------------------------------------------------------------------------
# State persistence


def test_state_round_trip_fresh_and_populated() -> None:
    assert PolicyState.from_fields({}) == PolicyState()
    fresh = PolicyState().to_fields()
    assert set(fresh) == set(STATE_FIELDS)
    assert PolicyState.from_fields(fresh) == PolicyState()
    s = PolicyState(
        last_tick_ms=T0, ml_level="high", ml_emitted_ms=T0 - TICK, elevated_since_ms=T0 - 9 * TICK,
        high_since_ms=None, cap_day=19_675, curfew_night=19_674, curfew_open=True, session_alerts=1,
        session_min=61.123456789012345,
    )  # fmt: skip
    fields = s.to_fields()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    assert set(fields) == set(STATE_FIELDS)
    assert fields["pol:hi_t0"] == ""  # unset fields are written too, so HSET clears stale values
    assert PolicyState.from_fields(fields) == s
    as_bytes: dict[str | bytes, str | bytes] = {k.encode(): v.encode() for k, v in fields.items()}
    assert PolicyState.from_fields(as_bytes) == s
    with_others = {**as_bytes, b"win:1h": b"123", "other": "x"}
    assert PolicyState.from_fields(with_others) == s


def test_copy_has_every_field_and_shares_nothing_decide_changes() -> None:
    """``copy`` (what a live store hands out instead of re-parsing fields) lists the fields by
    position: a field added to the class and not to ``copy`` fails here."""
    values = iter(range(1, 100))
    s = PolicyState(**{
        f.name: (f"v{next(values)}" if f.type == "str" else [0.5, 0.25] if f.name == "day_scores"
                 else {"ml_risk": ("high", 1, "a", 0.5)} if f.name == "levels"
                 else True if f.type == "bool" else float(next(values)) if f.type == "float" else next(values))
        for f in fields(PolicyState)})
    c = s.copy()
    assert c == s and c is not s
    assert [getattr(c, f.name) for f in fields(PolicyState)] == [getattr(s, f.name) for f in fields(PolicyState)]
    assert c.day_scores is not s.day_scores and c.levels is not s.levels
    c.day_scores.append(1.0)
    assert s.day_scores == [0.5, 0.25]
    assert PolicyState().copy() == PolicyState()


def test_corrupt_state_is_rejected() -> None:
    with pytest.raises(ValueError, match="pol:ml"):
        PolicyState.from_fields({"pol:ml": "extreme"})
    with pytest.raises(ValueError, match="corrupt"):
        PolicyState.from_fields({b"pol:tick": b"soon"})


# ---------------------------------------------------------------------------------------------
# Properties


@dataclass(frozen=True)
class Step:
    gap: int  # ticks since the previous evaluation
    score: float | None
    band: str | None
    session_min: float
    today_active_min: float
    local_minute: int


THRESHOLD_SCORES = [0.0, 0.39, 0.4, 0.41, 0.49, 0.5, 0.51, 0.64, 0.65, 0.66, 0.74, 0.75, 0.76, 1.0]
scores = st.one_of(
    st.none(),
    st.sampled_from(THRESHOLD_SCORES),
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
)
steps = st.builds(
    Step,
    gap=st.one_of(st.integers(1, 3), st.integers(1, 200)),
    score=scores,
    band=st.sampled_from([None, "u13", "13-15", "16-17", "adult", "??"]),
    session_min=st.floats(min_value=0.0, max_value=200.0, allow_nan=False),
    today_active_min=st.floats(min_value=0.0, max_value=300.0, allow_nan=False),
    local_minute=st.integers(0, 1439),
)
ml_configs = st.builds(
    MlPolicy,
    persistence_s=st.sampled_from([0, 60, 300, 3600]),
    cooldown_s=st.sampled_from([0, 60, 600, 3600, 86_400]),
    min_history_days=st.just(7),
)


def evaluations(seq: list[Step]) -> list[Evaluation]:
    out, i = [], 0
    for s in seq:
        i += s.gap
        out.append(
            ev(i, s.score, age_band=s.band, session_min=s.session_min,
               today_active_min=s.today_active_min, local_minute=s.local_minute,
               local_day=19_675 + i // 1440)
        )  # fmt: skip
    return out


def decide_all(policy: AlertPolicy, evs: list[Evaluation]) -> list[list[Decision]]:
    state = PolicyState()
    return [policy.decide(state, e) for e in evs]


@settings(max_examples=300, deadline=None)
@given(ml_configs, st.lists(steps, max_size=120))
def test_ml_never_two_alerts_within_cooldown(ml: MlPolicy, seq: list[Step]) -> None:
    policy = AlertPolicy(PolicyConfig(ml=ml))
    ticks = [
        d.tick_end_ms
        for ds in decide_all(policy, evaluations(seq))
        for d in ds
        if d.kind == "ml_risk"
    ]
    assert all(b - a >= ml.cooldown_s * 1000 for a, b in zip(ticks, ticks[1:], strict=False))


def _held(evs: list[Evaluation], i: int, threshold: float, persistence_ms: int) -> bool:
    """Whether the score was >= threshold at every evaluation of a run ending at i lasting persistence."""
    j = i
    while j >= 0:
        s = evs[j].score
        if s is None or s < threshold:
            return False
        if evs[i].tick_end_ms - evs[j].tick_end_ms >= persistence_ms:
            return True
        j -= 1
    return False


@settings(max_examples=300, deadline=None)
@given(ml_configs, st.lists(steps, max_size=120))
def test_ml_levels_follow_hysteresis_and_persistence(ml: MlPolicy, seq: list[Step]) -> None:
    policy = AlertPolicy(PolicyConfig(ml=ml))
    evs = evaluations(seq)
    persistence_ms = ml.persistence_s * 1000
    level = "none"
    for i, ds in enumerate(decide_all(policy, evs)):
        ml_ds = [d for d in ds if d.kind == "ml_risk"]
        assert len(ml_ds) <= 1
        if not ml_ds:
            continue
        d = ml_ds[0]
        score = evs[i].score
        assert score is not None
        assert d.score == score
        assert d.details["from_level"] == level
        if d.level == "high":
            assert level != "high"
            assert _held(evs, i, ml.high_enter, persistence_ms)
            level = "high"
        elif d.level == "elevated":
            if level == "none":
                assert _held(evs, i, ml.elevated_enter, persistence_ms)
            else:
                assert level == "high"
                assert ml.elevated_exit <= score < ml.high_exit
            level = "elevated"
        else:
            assert d.level == "cleared"
            assert level in ("elevated", "high")
            assert score < ml.elevated_exit
            level = "none"


@settings(max_examples=200, deadline=None)
@given(ml_configs, st.lists(steps, max_size=100), st.data())
def test_decisions_are_deterministic_and_state_persistence_is_lossless(
    ml: MlPolicy, seq: list[Step], data: st.DataObject
) -> None:
    evs = evaluations(seq)
    policy = AlertPolicy(PolicyConfig(ml=ml))
    first = decide_all(policy, evs)
    assert decide_all(AlertPolicy(PolicyConfig(ml=ml)), evs) == first

    split = data.draw(st.integers(0, len(evs)))
    state = PolicyState()
    out = [policy.decide(state, e) for e in evs[:split]]
    stored = {k.encode(): v.encode() for k, v in state.to_fields().items()}  # as redis-py returns
    state = PolicyState.from_fields(stored)
    out += [policy.decide(state, e) for e in evs[split:]]
    assert out == first


@settings(max_examples=200, deadline=None)
@given(st.lists(steps, min_size=1, max_size=80), st.data())
def test_redelivered_evaluations_change_nothing(seq: list[Step], data: st.DataObject) -> None:
    evs = evaluations(seq)
    policy = AlertPolicy(PolicyConfig(ml=MlPolicy(persistence_s=300, cooldown_s=600)))
    expected = [d for ds in decide_all(policy, evs) for d in ds]
    state, got = PolicyState(), []
    for i, e in enumerate(evs):
        got += policy.decide(state, e)
        # Redeliver a random earlier (or the same) evaluation: it must be a no-op.
        again = evs[data.draw(st.integers(0, i))]
        assert policy.decide(state, again) == []
    assert got == expected


# ---------------------------------------------------------------------------------------------
# Day-mean evidence (evidence = "day_mean"): the mean of the last N day-end scores


def day_mean_policy(days: int = 3, cooldown_s: int = 0) -> AlertPolicy:
    ml = MlPolicy(evidence="day_mean", evidence_days=days, cooldown_s=cooldown_s, elevated_enter=0.8,
                  elevated_exit=0.7, high_enter=0.9, high_exit=0.85)
    return AlertPolicy(PolicyConfig(ml=ml))


def days_of(day_scores: list[list[float]], first_day: int = 19_675) -> list[Evaluation]:
    """Consecutive ticks, one list of tick scores per local day (ticks 10 minutes apart)."""
    out, i = [], 0
    for d, scores in enumerate(day_scores):
        for s in scores:
            out.append(ev(i, s, local_day=first_day + d))
            i += 10
    return out


def test_day_mean_alerts_once_although_every_day_dips_below_enter() -> None:
    # Each day ends at 0.85 but dips to 0.5 in the morning: the tick rule's persistence would be
    # reset every day; the 3-day mean of day-end scores (0.85) is above 0.8 from the 4th day on.
    day = [0.5, 0.6, 0.85]
    policy, state = day_mean_policy(), PolicyState()
    ds = run(policy, state, days_of([day] * 6))
    ml = [d for d in ds if d.kind == "ml_risk"]
    assert [(d.level, d.details["evidence_mean"]) for d in ml] == [("elevated", 0.85)]
    # decided at the first tick of day 4, when day 3 closed (not earlier: 3 closed days needed)
    assert ml[0].tick_end_ms == days_of([day] * 6)[9].tick_end_ms
    assert ml[0].score == 0.5 and ml[0].details["evidence"] == "day_mean"
    assert ml[0].details["evidence_days"] == 3 and "persistence_s" not in ml[0].details


def test_day_mean_high_days_below_enter_no_alert_and_clears_on_mean() -> None:
    policy, state = day_mean_policy(), PolicyState()
    # two high days and one low one: mean (0.95 + 0.95 + 0.4) / 3 = 0.77 < 0.8
    assert [d for d in run(policy, state, days_of([[0.95], [0.95], [0.4], [0.1]])) if d.kind == "ml_risk"] == []
    policy, state = day_mean_policy(), PolicyState()
    evs = days_of([[0.95], [0.95], [0.95], [0.95], [0.3], [0.3], [0.3]])
    # the mean steps down a day at a time: 0.95 (high), 0.733 (below high_exit: elevated), 0.517
    assert [(round(d.details["evidence_mean"], 3), d.level) for d in run(policy, state, evs)
            if d.kind == "ml_risk"] == [(0.95, "high"), (0.733, "elevated"), (0.517, "cleared")]


def test_day_mean_only_scored_days_count() -> None:
    policy, state = day_mean_policy(), PolicyState()
    # a day with only unscored ticks (too little history, no model) is not a day of evidence
    evs = [ev(0, 0.95, local_day=100), ev(10, None, local_day=101), ev(20, 0.95, local_day=102),
           ev(30, 0.95, local_day=103)]
    assert run(policy, state, evs) == []
    assert state.day_scores == [0.95, 0.95] and state.cur_day == 103  # days 100 and 102 closed


def test_day_mean_state_round_trips_and_a_replayed_tick_is_a_no_op() -> None:
    policy, state = day_mean_policy(), PolicyState()
    evs = days_of([[0.9, 0.91], [0.92], [0.93], [0.94]])
    run(policy, state, evs[:-1])
    back = PolicyState.from_fields(state.to_fields())
    assert back == state and back.day_scores == [0.91, 0.92] and back.cur_score == 0.93
    before = back.to_fields()
    assert policy.decide(back, evs[2]) == [] and back.to_fields() == before  # replayed tick
    assert [d.level for d in policy.decide(back, evs[-1])] == ["high"]  # (0.91+0.92+0.93)/3
    assert PolicyState.from_fields({}).day_scores == []  # a hash from before the fields existed
    with pytest.raises(ValueError, match="non-finite"):
        PolicyState.from_fields({**state.to_fields(), "pol:days": "0.5,nan"})


def test_day_mean_cooldown_holds_and_later_fires_within_the_day() -> None:
    # ticks 10 min apart: high at minute 30; elevated is due at minute 120 (day 5's first tick) but
    # held by the 2-h cool-down until minute 150; cleared is due at 200, held until 270
    policy, state = day_mean_policy(cooldown_s=7200), PolicyState()
    evs = days_of([[0.95]] * 4 + [[0.3] * 8] * 3)
    assert ml_only(run(policy, state, evs)) == [(30, "high"), (150, "elevated"), (270, "cleared")]


def test_model_metadata_selects_day_mean_unless_the_file_decides() -> None:
    cfg = PolicyConfig()
    got = cfg.with_model_thresholds({"elevated_enter": 0.86, "elevated_exit": 0.76, "high_enter": 0.93,
                                     "high_exit": 0.88, "evidence_days": 3})
    assert (got.ml.evidence, got.ml.evidence_days, got.ml.elevated_enter) == ("day_mean", 3, 0.86)
    assert cfg.with_model_thresholds({"evidence_days": 0}).ml.evidence == "ticks"
    pinned = PolicyConfig(ml=MlPolicy(evidence="ticks"))
    assert pinned.with_model_thresholds({"evidence_days": 3}).ml.evidence == "ticks"
    for bad in (2.5, 8, -1, True):
        with pytest.raises(ConfigError, match="evidence_days"):
            cfg.with_model_thresholds({"evidence_days": bad})  # type: ignore[dict-item]
    with pytest.raises(ValidationError):
        MlPolicy(evidence="weekly")  # type: ignore[arg-type]
