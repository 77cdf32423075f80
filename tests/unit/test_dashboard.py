"""The dashboard's folds (levels, alerts, active users, worker rates) and its token check."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from stream.errors import ConfigError
from stream.settings import load_settings
from stream.tools.dashboard import ActiveUsers, AlertLog, Dashboard, LevelsBoard, WorkerRates, check_bind, scrape_totals


def _levels(uid: str, band: str | None, score: float | None, **kinds: str) -> bytes:
    return orjson.dumps({"v": 1, "user_id": uid, "age_band": band, "event_time": "2024-05-01T23:34:00.000Z",
                         "model_version": "m1", "score": score,
                         "levels": {k.replace("_", ":", 1) if k.startswith("rule_") else k:
                                    {"level": v, "since": "2024-05-01T23:00:00.000Z", "alert_id": "0" * 32,
                                     "score": score} for k, v in kinds.items()}})


def test_levels_fold_keeps_the_latest_record_and_tombstones_remove():
    b = LevelsBoard()
    b.apply_record(b"a", _levels("a", "13-15", 0.9, ml_risk="elevated"))
    b.apply_record(b"b", _levels("b", "13-15", 0.4, rule_curfew="elevated"))
    b.apply_record(b"c", _levels("c", None, 0.95, ml_risk="high"))
    b.apply_record(b"a", _levels("a", "13-15", 0.97, ml_risk="high", rule_curfew="elevated"))
    assert b.distribution() == {"13-15": {"elevated": 1, "high": 1}, "unknown": {"elevated": 0, "high": 1}}
    top = b.top(2, {"a": ["night share 7d 0.6"]})
    assert [r["user_id"] for r in top] == ["a", "c"]
    assert top[0]["level"] == "high" and top[0]["kinds"] == ["ml_risk", "rule:curfew"]
    assert top[0]["reasons"] == ["night share 7d 0.6"] and top[1]["reasons"] == []
    b.apply_record(b"a", None)
    assert len(b) == 2 and b.distribution()["13-15"] == {"elevated": 1, "high": 0}
    assert [r["user_id"] for r in b.top(10)] == ["c", "b"]


def test_unscored_users_come_last_in_the_top():
    b = LevelsBoard()
    b.apply_record(b"z", _levels("z", None, None, rule_daily_cap="elevated"))
    b.apply_record(b"y", _levels("y", None, 0.1, ml_risk="elevated"))
    assert [r["user_id"] for r in b.top(5)] == ["y", "z"]


def _alert(uid: str, kind: str, level: str, emitted: str, score: float | None = 0.8,
           event_time: str = "2024-05-01T23:34:00.000Z") -> dict[str, Any]:
    return {"v": 1, "alert_id": "1" * 32, "user_id": uid, "kind": kind, "level": level, "score": score,
            "event_time": event_time, "emitted_at": emitted,
            "reasons": [{"feature": "night_share_7d", "text": "night share 7d 0.661 (typical 0.123)"}] if level != "cleared" else [],
            "details": {}}


def test_alert_fold_is_the_fallback_board_and_cleared_removes():
    b = LevelsBoard()
    b.apply_alert(_alert("u1", "ml_risk", "elevated", "2026-01-01T00:00:00Z"))
    b.apply_alert(_alert("u1", "rule:curfew", "elevated", "2026-01-01T00:00:00Z"))
    b.apply_alert(_alert("u2", "ml_risk", "high", "2026-01-01T00:00:00Z", score=0.99))
    assert b.distribution() == {"unknown": {"elevated": 1, "high": 1}}
    b.apply_alert(_alert("u1", "rule:curfew", "cleared", "2026-01-01T00:00:00Z"))
    b.apply_alert(_alert("u1", "ml_risk", "cleared", "2026-01-01T00:00:00Z"))
    assert [r["user_id"] for r in b.top(5)] == ["u2"]


def test_alerts_per_minute_by_kind_and_level_use_the_publishing_time():
    log = AlertLog(minutes=5)
    now = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    log.add(_alert("u1", "ml_risk", "high", "2025-12-31T23:59:30.000Z"), now)
    log.add(_alert("u2", "ml_risk", "high", "2025-12-31T23:59:50.000Z"), now)
    log.add(_alert("u2", "rule:curfew", "elevated", "2025-12-31T23:57:10.000Z"), now)
    log.add(_alert("u3", "ml_risk", "elevated", "2025-12-31T23:40:00.000Z"), now)  # beyond 5 minutes
    assert log.per_minute(now) == {"ml_risk/high": 2}
    series = log.series(now)
    assert len(series["t"]) == 5 and series["t"][-1] == now
    assert series["counts"] == {"ml_risk/high": [0, 0, 0, 2, 0], "rule:curfew/elevated": [0, 1, 0, 0, 0]}
    h = log.history("u2")
    assert [a["kind"] for a in h["alerts"]] == ["ml_risk", "rule:curfew"]
    assert h["alerts"][0]["reasons"] == ["night share 7d 0.661 (typical 0.123)"]
    assert h["scores"] == [{"t": 1714606440.0, "score": 0.8}]
    assert log.reasons()["u1"] == ["night share 7d 0.661 (typical 0.123)"]
    assert log.history("nobody") == {"alerts": [], "scores": []}


def test_active_users_are_distinct_keys_within_the_window():
    a = ActiveUsers(window_s=60)
    a.saw([b"u1", b"u2", b"u1"], 100.0)
    a.saw([b"u3"], 150.0)
    assert a.count(150.0) == 3
    assert a.count(161.0) == 1


METRICS = """# HELP riskstream_events_total Events by outcome
# TYPE riskstream_events_total counter
riskstream_events_total{outcome="applied"} %d
riskstream_events_total{outcome="late"} %d
# HELP riskstream_messages_total Kafka messages consumed
# TYPE riskstream_messages_total counter
riskstream_messages_total %d
# HELP riskstream_watermark_lag_seconds Wall clock minus the partition watermark (event time)
# TYPE riskstream_watermark_lag_seconds gauge
riskstream_watermark_lag_seconds{partition="events.clicks/0"} 12.5
riskstream_watermark_lag_seconds{partition="events.clicks/1"} 30.0
"""


def test_worker_rates_from_two_scrapes_summed_over_workers():
    first = scrape_totals(METRICS % (100, 5, 10))
    assert first == {"events_in": 100.0, "events_applied": 100.0, "messages": 10.0, "dlq": 0.0,
                     "watermark_lag_s": 30.0}
    r = WorkerRates()
    r.observe("w1", first, 10.0)
    r.observe("w2", scrape_totals(METRICS % (0, 0, 0)), 10.0)
    r.observe("w1", scrape_totals(METRICS % (300, 5, 30)), 12.0)
    r.observe("w2", scrape_totals(METRICS % (40, 0, 4)), 12.0)
    s = r.summary()
    assert s["events_applied_per_s"] == 120.0 and s["events_in_per_s"] == 120.0 and s["messages_per_s"] == 12.0
    assert s["events_applied_total"] == 340.0 and s["workers_up"] == 2 and s["watermark_lag_s"] == 30.0
    r.failed("w2", "ClientConnectorError: refused")
    s = r.summary()
    assert s["workers_up"] == 1 and s["events_applied_per_s"] == 100.0 and "w2" in s["errors"]


# -- the token ------------------------------------------------------------------------------------
def test_a_non_loopback_bind_needs_a_token():
    assert check_bind("127.0.0.1:8090", None) == ("127.0.0.1", 8090)
    assert check_bind("[::1]:8090", None) == ("::1", 8090)
    with pytest.raises(ConfigError, match="needs a token"):
        check_bind("0.0.0.0:8090", None)
    with pytest.raises(ConfigError, match="needs a token"):
        check_bind("dash.example:8090", None)
    assert check_bind("0.0.0.0:8090", "x" * 32) == ("0.0.0.0", 8090)
    with pytest.raises(ConfigError, match="at least 16"):
        check_bind("0.0.0.0:8090", "short")
    with pytest.raises(ConfigError, match="host:port"):
        check_bind("nonsense", None)


class _Feed:
    def snapshot(self, now: float) -> dict[str, Any]:
        return {"active_users": 3, "top": []}

    def history(self, uid: str) -> dict[str, Any]:
        return {"alerts": [], "scores": [], "asked": uid}


def _reports(uid: str) -> dict[str, Any] | None:
    return {"user_id": uid} if uid.startswith("known") else None


async def _with_client(token: str | None, body: Any) -> None:
    dash = Dashboard(load_settings(namespace="t"), _Feed(), _reports, [], token=token, scrape_every_s=60)
    async with TestClient(TestServer(dash.app(), host="127.0.0.1")) as client:
        await body(client)


TOKEN = "s3cret-token-0123456789"


def test_token_401_without_200_with():
    async def body(c: TestClient) -> None:
        for path in ("/", "/api/state", "/api/stream", "/api/users/known1", "/static/dashboard.js"):
            r = await c.get(path)
            assert r.status == 401, path
            assert TOKEN not in await r.text()
        r = await c.get("/api/state", headers={"Authorization": "Bearer wrong-token-000000000"})
        assert r.status == 401
        r = await c.get("/api/state", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status == 200 and (await r.json())["active_users"] == 3
        r = await c.get("/static/dashboard.js", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status == 200
        # the browser: one visit with ?token= sets the session cookie and drops the token from the URL
        r = await c.get(f"/?token={TOKEN}", allow_redirects=False)
        assert r.status == 302 and r.headers["Location"] == "/"
        r = await c.get("/")
        assert r.status == 200 and "riskstream" in await r.text()
        r = await c.get("/api/state")
        assert r.status == 200

    asyncio.run(_with_client(TOKEN, body))


def test_without_a_token_on_loopback_everything_is_served_and_user_ids_round_trip():
    async def body(c: TestClient) -> None:
        assert (await c.get("/")).status == 200
        r = await c.get("/api/users/known%2F%20%3Cb%3E")
        assert r.status == 200 and (await r.json()) == {"user_id": "known/ <b>"}
        r = await c.get("/api/users/unknown")
        assert r.status == 404
        r = await c.get("/api/history/a%2Fb")
        assert (await r.json())["asked"] == "a/b"
        r = await c.get("/api/stream")
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        line = await r.content.readline()
        assert line.startswith(b"data: ") and orjson.loads(line[6:])["active_users"] == 3
        r.close()

    asyncio.run(_with_client(None, body))
