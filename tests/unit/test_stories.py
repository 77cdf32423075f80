"""The detector core's "done when" stories, end to end offline with the shipped model.

Hand-made users over ten days, scored by ``riskstream score``'s code path with the shipped model and
the default policy (its thresholds, persistence, cool-down and rule profiles):

* a user with many short checking sessions all day and long use every night gets ``ml_risk``
  alerts, with reasons that are about checking, night use or volume;
* a light daytime user gets none;
* a 13-15-year-old using the platform at 23:30 local time gets a curfew rule alert.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.core.events import encode_event
from stream.core.features import FEATURE_NAMES, FEATURE_SPEC_HASH
from stream.core.policy import load_policy_config
from stream.core.scoring import OnnxScorer
from stream.offline import score_log
from tests.contracts import assert_valid_alert
from tests.eventgen import at, ev

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "riskstream.onnx"
DAYS = 10


def compulsive() -> list:
    out = []
    for d in range(DAYS):
        for k in range(60):  # a pickup every ~15 min from 07:00: a few seconds of checking
            t = at(d, 7, 0) + k * 14 * 60_000
            out += [ev("compulsive", t, "view", dwell_ms=6_000, category="social"),
                    ev("compulsive", t + 6_500, "click", category="social")]
        for k in range(150):  # 00:30-03:00 scrolling short videos every night
            out.append(ev("compulsive", at(d, 0, 30) + k * 60_000, "view", dwell_ms=55_000,
                          category="short_video"))
    return out


def light() -> list:
    out = []
    for d in range(DAYS):
        for hour in (12, 18):  # two ten-minute reads a day
            out += [ev("light", at(d, hour, m), "view", dwell_ms=50_000, category="news") for m in range(10)]
    return out


def minor() -> list:
    return [ev("minor", at(5, 22, 30) + k * 30_000, "view", dwell_ms=25_000, tz=60, age_band="13-15")
            for k in range(20)]  # 23:30-23:40 local (UTC+1)


@pytest.fixture(scope="module")
def alerts(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    log = tmp_path_factory.mktemp("stories") / "events.jsonl"
    log.write_bytes(b"\n".join(encode_event(e) for e in compulsive() + light() + minor()) + b"\n")
    scorer = OnnxScorer(SHIPPED, expected_spec_hash=FEATURE_SPEC_HASH, expected_feature_names=FEATURE_NAMES)
    out = tmp_path_factory.mktemp("stories") / "alerts.jsonl"
    with out.open("wb") as f:
        score_log(log, f, policy_config=load_policy_config(None), scorer=scorer, now_ms=at(400))
    return [assert_valid_alert(line) for line in out.read_bytes().splitlines()]


def test_a_compulsive_checker_and_night_user_gets_ml_risk_alerts_with_sensible_reasons(alerts):
    ml = [a for a in alerts if a["user_id"] == "compulsive" and a["kind"] == "ml_risk"]
    raised = [a for a in ml if a["level"] in ("elevated", "high")]
    assert raised, f"no ml_risk alert for the compulsive user: {[(a['kind'], a['level']) for a in alerts]}"
    sensible = {"check_ratio_15s_7d", "sessions_day_7d", "sessions_24h", "night_share_7d", "curfew_min_day_7d",
                "late_sessions_day_7d", "active_min_day_7d", "active_min_24h", "sess_len_geomean_s_7d",
                "gap_geomean_min_7d", "cat_share_short_video_7d", "sess_len_logsd_7d", "sess_len_mean_s_7d",
                "long_sess_30m_day_7d", "burstiness_7d", "gap_cv_7d", "rmssd_sess_s_7d", "hour_entropy_7d"}
    for a in raised:
        names = [r["feature"] for r in a["reasons"]]
        assert names and set(names) <= sensible, names
        assert all(r["contribution"] > 0 for r in a["reasons"])
        assert a["score"] >= a["details"]["elevated_enter"]


def test_a_light_daytime_user_gets_no_alert(alerts):
    assert [a for a in alerts if a["user_id"] == "light"] == []


def test_a_minor_at_2330_local_gets_a_curfew_alert(alerts):
    kinds = {(a["kind"], a["level"]) for a in alerts if a["user_id"] == "minor"}
    assert ("rule:curfew", "elevated") in kinds
