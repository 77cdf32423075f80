"""Current levels (risk.levels, docs/contracts.md §4a): the fold of alerts, its persisted form, and
the records a pipeline writes — after the alerts of the step, with the same producer."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from stream.core.alerts import Alert, alert_id
from stream.core.events import encode_event
from stream.core.levels import Level, decode_levels, encode_levels, fold, levels_to_json
from stream.core.policy import PolicyState, load_policy_config
from stream.offline import build_detector, decode_log, final_levels, run_detector, score_log, Summary
from tests.contracts import assert_valid_levels
from tests.eventgen import at, ev
from tests.scenarios import feature_scorer, random_log, short_policy
from tests.unit.test_pipeline import pipeline, step


def _alert(kind: str, level: str, t: int, score: float | None = None) -> Alert:
    return Alert(alert_id=alert_id("u1", kind, level, t), user_id="u1", kind=kind, level=level, score=score,
                 event_time_ms=t)


def test_each_alert_sets_its_kind_and_cleared_removes_it() -> None:
    a1 = _alert("ml_risk", "elevated", at(0, 20), 0.6)
    a2 = _alert("rule:curfew", "elevated", at(0, 23))
    a3 = _alert("ml_risk", "high", at(1, 1), 0.8)
    lv = fold({}, [a1, a2, a3])
    assert lv == {"ml_risk": Level("high", at(1, 1), a3.alert_id, 0.8),
                  "rule:curfew": Level("elevated", at(0, 23), a2.alert_id, None)}
    assert fold(lv, [_alert("rule:curfew", "cleared", at(1, 7))]) == {"ml_risk": lv["ml_risk"]}
    assert fold({}, [_alert("ml_risk", "cleared", at(1, 7))]) == {}  # clearing nothing changes nothing


def test_the_persisted_levels_round_trip_and_a_corrupt_value_is_an_error() -> None:
    lv = {"ml_risk": Level("high", at(1, 1), "a" * 32, 0.8), "rule:curfew": Level("elevated", at(0, 23), "b" * 32, None)}
    assert decode_levels(encode_levels(lv)) == lv
    state = PolicyState(levels=lv)
    assert PolicyState.from_fields(state.to_fields()) == state
    assert PolicyState.from_fields(PolicyState().to_fields()).levels is None  # "": not known
    assert PolicyState.from_fields(PolicyState(levels={}).to_fields()).levels == {}  # known: none
    with pytest.raises(ValueError, match="corrupt"):
        PolicyState.from_fields({**state.to_fields(), "pol:lv": '{"ml_risk": ["high"]}'})


def test_a_record_names_every_current_kind_and_none_is_a_tombstone() -> None:
    from stream.core.levels import LevelsRecord

    lv = {"rule:curfew": Level("elevated", at(0, 23), "b" * 32, None), "ml_risk": Level("high", at(1, 1), "a" * 32, 0.8)}
    rec = assert_valid_levels(levels_to_json(LevelsRecord("u1", "13-15", at(1, 1), "m1", 0.8123456789, lv)))
    assert rec == {"v": 1, "user_id": "u1", "age_band": "13-15", "event_time": "2024-01-02T01:00:00.000Z",
                   "model_version": "m1", "score": 0.812346,
                   "levels": {"ml_risk": {"level": "high", "since": "2024-01-02T01:00:00.000Z",
                                          "alert_id": "a" * 32, "score": 0.8},
                              "rule:curfew": {"level": "elevated", "since": "2024-01-01T23:00:00.000Z",
                                              "alert_id": "b" * 32, "score": None}}}
    assert levels_to_json(None) is None


def test_a_pipeline_writes_levels_after_the_alerts_that_change_them() -> None:
    """A 13-15 user active at 23:00 (curfew 22:00-06:00) and again at 07:00: the curfew alert, then
    its levels record; the cleared alert, then a tombstone. The first tick of a user with no stored
    levels writes a record (or a tombstone) too."""
    p, producer = pipeline()
    idle = {(0, "click"): True, (0, "view"): True}

    def send(ts: int, off: int) -> list[tuple[str, bytes | None, bytes | None]]:
        before = len(producer.records)
        e = ev("u1", ts, "click", age_band="13-15")
        step(p, [(p.s.clicks_topic, 0, off, b"u1", encode_event(e))])
        step(p, [], idle, partitions=[])
        return producer.records[before:]

    first = send(at(0, 20), 0)  # 20:00: no rule fires; levels not known yet -> a tombstone
    assert [(t, v) for t, _, v in first] == [(p.s.levels_topic, None)]
    assert send(at(0, 20, 5), 1) == []  # known and unchanged: nothing
    night = send(at(0, 23), 2)
    assert [t for t, _, _ in night] == [p.s.alerts_topic, p.s.levels_topic]
    alert = orjson.loads(night[0][2])
    rec = assert_valid_levels(night[1][2])
    assert night[1][1] == b"u1" and alert["kind"] == "rule:curfew"
    assert rec["levels"] == {"rule:curfew": {"level": "elevated", "since": alert["event_time"],
                                             "alert_id": alert["alert_id"], "score": None}}
    assert rec["age_band"] == "13-15" and rec["event_time"] == alert["event_time"]
    morning = send(at(1, 7), 3)
    assert [(t, orjson.loads(v)["level"] if t == p.s.alerts_topic else v) for t, _, v in morning] == [
        (p.s.alerts_topic, "cleared"), (p.s.levels_topic, None)]


def test_riskstream_score_levels_out_writes_each_users_final_value(tmp_path: Path) -> None:
    log = tmp_path / "e.jsonl"
    log.write_bytes(b"".join(encode_event(e) + b"\n" for e in random_log(5)))
    out, levels = io.BytesIO(), io.BytesIO()
    score_log(log, out, policy_config=short_policy(), scorer=feature_scorer(), levels_out=levels)
    written = [assert_valid_levels(line) for line in levels.getvalue().splitlines()]
    assert written and [r["user_id"] for r in written] == sorted(r["user_id"] for r in written)
    # the same as folding the alerts written to --out, user by user
    by_user: dict[str, dict] = {}
    for line in out.getvalue().splitlines():
        a = orjson.loads(line)
        kinds = by_user.setdefault(a["user_id"], {})
        if a["level"] == "cleared":
            kinds.pop(a["kind"], None)
        else:
            kinds[a["kind"]] = {"level": a["level"], "since": a["event_time"], "alert_id": a["alert_id"],
                                "score": a["score"]}
    assert {r["user_id"]: r["levels"] for r in written} == {u: k for u, k in by_user.items() if k}
    # and the same as the updates the detector hands out
    det, _ = build_detector(short_policy(), feature_scorer())
    ups: list = []
    run_detector(decode_log(log, Summary()), det, lambda a: None, Summary(), emit_levels=ups.append)
    assert [orjson.loads(levels_to_json(r) or b"") for _, r in sorted(final_levels(ups).items())] == written


def test_daily_cap_and_continuous_use_leave_the_levels_when_their_day_and_session_are_over(tmp_path: Path) -> None:
    """A 13-15-year-old uses the platform 70 min without a break one afternoon (cap 60 min, break
    after 45), then briefly the next morning: the one-shot rule kinds are listed, then cleared."""
    day0 = [ev("teen", at(0, 15, m, s), "view", dwell_ms=20_000, age_band="13-15")
            for m in range(70) for s in (0, 20, 40)]
    day1 = [ev("teen", at(1, 9, m), "view", dwell_ms=20_000, age_band="13-15") for m in range(3)]
    log = tmp_path / "teen.jsonl"
    log.write_bytes(b"".join(encode_event(e) + b"\n" for e in day0 + day1))
    out, levels = io.BytesIO(), io.BytesIO()
    score_log(log, out, policy_config=load_policy_config(None), scorer=None, levels_out=levels)  # the shipped rules
    alerts = [orjson.loads(line) for line in out.getvalue().splitlines()]
    seen = [(a["kind"], a["level"], a["event_time"][:10]) for a in alerts if a["kind"].startswith("rule:")]
    d0, d1 = (orjson.loads(encode_event(e))["ts"] for e in (day0[0], day1[0]))
    assert ("rule:daily_cap", "high", _date(d0)) in seen
    assert ("rule:continuous_use", "elevated", _date(d0)) in seen
    assert ("rule:daily_cap", "cleared", _date(d1)) in seen
    assert ("rule:continuous_use", "cleared", _date(d1)) in seen
    final = [assert_valid_levels(line) for line in levels.getvalue().splitlines()]
    assert all(not set(r["levels"]) & {"rule:daily_cap", "rule:continuous_use"} for r in final), final


def _date(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date().isoformat()
