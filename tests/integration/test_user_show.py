"""`riskstream user show`: a user's state as the worker left it in Redis, in words and as JSON."""

from __future__ import annotations

import orjson
from click.testing import CliRunner

from stream.cli import main
from stream.core.detector import Detector, Release
from stream.core.policy import AlertPolicy, load_policy_config
from stream.state import RedisWindowStore, redis_client
from tests.eventgen import at, ev


def _teen_night(settings) -> None:  # type: ignore[no-untyped-def]
    """What a worker does for a 13-15-year-old active from 23:00 to 23:40 local time (UTC+1)."""
    client = redis_client(settings)
    store = RedisWindowStore(client, key_prefix=settings.key_prefix, ttl_s=settings.state_ttl_s)
    det = Detector(store, AlertPolicy(load_policy_config(None)))
    events = [ev("teen", at(2, 22, m), "view", dwell_ms=30_000, tz=60, age_band="13-15", event_id=f"t{m}")
              for m in range(0, 40)]
    out = det.process(Release([(e, None) for e in events], at(2, 23, 0)))
    det.commit(out)
    assert [a.kind for a in out.alerts] == ["rule:curfew", "rule:continuous_use"]
    client.close()


def test_user_show_in_words_and_json(settings) -> None:  # type: ignore[no-untyped-def]
    _teen_night(settings)
    runner = CliRunner()
    res = runner.invoke(main, ["user", "show", "teen", "--namespace", settings.namespace, "--no-model"])
    assert res.exit_code == 0, res.output
    text = res.output
    assert "user teen  (age band 13-15, rule profile young_teen)" in text
    assert "last event       2024-01-03 23:39 local (UTC+01:00)" in text
    assert "curfew           active in the night of 2024-01-03 (still open)" in text
    assert "rule:curfew elevated since 2024-01-03 22:01 UTC" in text.split("current levels   ")[1]
    assert "risk score now   not scored" in text
    res = runner.invoke(main, ["user", "show", "teen", "--namespace", settings.namespace, "--no-model", "--json"])
    assert res.exit_code == 0, res.output
    got = orjson.loads(res.output)
    assert got["user_id"] == "teen" and got["profile"] == "young_teen" and got["tz_offset_min"] == 60
    assert got["today_active_min"] >= 39 and got["features"]["sessions_day_7d"] >= 1
    assert got["policy"]["curfew_open"] is True and got["score"] is None
    assert got["policy"]["levels"]["rule:curfew"]["level"] == "elevated"  # what risk.levels holds for them


def test_user_show_scores_with_the_shipped_model(settings) -> None:  # type: ignore[no-untyped-def]
    _teen_night(settings)
    res = CliRunner().invoke(main, ["user", "show", "teen", "--namespace", settings.namespace, "--json"])
    assert res.exit_code == 0, res.output
    got = orjson.loads(res.output)
    assert 0.0 <= got["score"] <= 1.0 and got["model_version"]


def test_an_unknown_user_is_one_line_and_exit_1(settings) -> None:  # type: ignore[no-untyped-def]
    res = CliRunner().invoke(main, ["user", "show", "nobody", "--namespace", settings.namespace])
    assert res.exit_code == 1
    assert "no window state for user 'nobody'" in res.output
