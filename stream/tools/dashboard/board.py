"""What the dashboard shows, folded from the streams it reads: pure code, no I/O.

* :class:`LevelsBoard`: every user's current levels, from the compacted ``risk.levels`` topic
  (contract levels v1: the latest record per user, a tombstone removes the user) or, while that
  topic does not exist, from the alerts themselves (an ``elevated``/``high`` alert sets its kind's
  level, a ``cleared`` clears it).
* :class:`AlertLog`: alerts per minute by kind and level (by ``emitted_at``, the publishing time),
  each user's last alerts and score points.
* :class:`ActiveUsers`: distinct users with input messages in the last few minutes.
* :class:`WorkerRates`: events/s in and applied, messages/s and the watermark lag, from two
  successive scrapes of the workers' Prometheus text.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["ActiveUsers", "AlertLog", "LevelsBoard", "WorkerRates", "parse_time", "scrape_totals"]

_RANK = {"elevated": 1, "high": 2}
NO_BAND = "unknown"


def parse_time(s: str | None) -> float | None:
    """RFC 3339 (``…Z``) -> epoch seconds, or None."""
    if not s:
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _top_level(levels: dict[str, Any]) -> str | None:
    best = None
    for lv in levels.values():
        name = lv.get("level") if isinstance(lv, dict) else None
        if name in _RANK and (best is None or _RANK[name] > _RANK[best]):
            best = name
    return best


class LevelsBoard:
    """Users' current levels (the fold of risk.levels, or of risk.alerts as a fallback)."""

    def __init__(self) -> None:
        self._users: dict[str, dict[str, Any]] = {}
        self.records = 0

    def __len__(self) -> int:
        return len(self._users)

    def apply_record(self, key: bytes | None, value: bytes | None) -> None:
        """One risk.levels message: the user's whole current state, or a tombstone (value None)."""
        self.records += 1
        if value is None:
            if key is not None:
                self._users.pop(key.decode("utf-8", "replace"), None)
            return
        rec = orjson.loads(value)
        if not isinstance(rec, dict) or not isinstance(rec.get("user_id"), str):
            return
        levels = rec.get("levels") if isinstance(rec.get("levels"), dict) else {}
        if not levels:
            self._users.pop(rec["user_id"], None)
            return
        self._users[rec["user_id"]] = {"age_band": rec.get("age_band"), "score": rec.get("score"),
                                       "event_time": rec.get("event_time"), "levels": levels}

    def apply_alert(self, alert: dict[str, Any]) -> None:
        """Fold one alert (the fallback while there is no risk.levels topic)."""
        uid, kind, level = alert.get("user_id"), alert.get("kind"), alert.get("level")
        if not isinstance(uid, str) or not isinstance(kind, str):
            return
        u = self._users.get(uid)
        if level == "cleared":
            if u is not None:
                u["levels"].pop(kind, None)
                if not u["levels"]:
                    del self._users[uid]
            return
        if level not in _RANK:
            return
        if u is None:
            u = self._users[uid] = {"age_band": None, "score": None, "event_time": None, "levels": {}}
        raw_details = alert.get("details")
        details: dict[str, Any] = raw_details if isinstance(raw_details, dict) else {}
        band = details.get("age_band")
        if isinstance(band, str):
            u["age_band"] = band
        u["score"] = alert.get("score")
        u["event_time"] = alert.get("event_time")
        u["levels"][kind] = {"level": level, "since": alert.get("event_time"), "alert_id": alert.get("alert_id"),
                             "score": alert.get("score")}

    def distribution(self) -> dict[str, dict[str, int]]:
        """Age band -> {elevated, high}: users by their highest current level over all kinds."""
        out: dict[str, dict[str, int]] = {}
        for u in self._users.values():
            top = _top_level(u["levels"])
            if top is None:
                continue
            band = u["age_band"] or NO_BAND
            counts = out.setdefault(band, {"elevated": 0, "high": 0})
            counts[top] += 1
        return dict(sorted(out.items()))

    def top(self, n: int, reasons: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        """The n users with the highest current score (unscored users last, then by id)."""
        def order(item: tuple[str, dict[str, Any]]) -> tuple[float, str]:
            s = item[1]["score"]
            return (-(s if isinstance(s, (int, float)) and math.isfinite(s) else -1.0), item[0])

        rows = []
        for uid, u in sorted(self._users.items(), key=order)[:n]:
            rows.append({"user_id": uid, "age_band": u["age_band"], "score": u["score"],
                         "level": _top_level(u["levels"]), "kinds": sorted(u["levels"]),
                         "since": u["event_time"], "reasons": (reasons or {}).get(uid, [])})
        return rows


@dataclass
class AlertLog:
    """Recent alerts: per-minute counts by kind/level, each user's last alerts and score points."""

    minutes: int = 30
    per_user: int = 50
    max_users: int = 20_000
    _events: deque[tuple[float, str]] = field(default_factory=deque)
    _users: OrderedDict[str, dict[str, deque[Any]]] = field(default_factory=OrderedDict)
    total: int = 0

    def add(self, alert: dict[str, Any], arrived: float) -> None:
        self.total += 1
        uid = alert.get("user_id")
        emitted = parse_time(alert.get("emitted_at")) or arrived
        self._events.append((emitted, f"{alert.get('kind')}/{alert.get('level')}"))
        if isinstance(uid, str):
            u = self._users.get(uid)
            if u is None:
                u = self._users[uid] = {"alerts": deque(maxlen=self.per_user), "scores": deque(maxlen=500)}
                while len(self._users) > self.max_users:
                    self._users.popitem(last=False)
            self._users.move_to_end(uid)
            u["alerts"].append({k: alert.get(k) for k in ("alert_id", "kind", "level", "score", "event_time",
                                                         "emitted_at")}
                               | {"reasons": _reason_texts(alert)})
            self.add_score(uid, alert.get("event_time"), alert.get("score"))

    def add_score(self, uid: str, event_time: Any, score: Any) -> None:
        t = parse_time(event_time) if isinstance(event_time, str) else None
        if t is None or not isinstance(score, (int, float)):
            return
        u = self._users.get(uid)
        if u is None:
            u = self._users[uid] = {"alerts": deque(maxlen=self.per_user), "scores": deque(maxlen=500)}
        pts = u["scores"]
        if not pts or pts[-1] != (t, score):
            pts.append((t, float(score)))

    def _trim(self, now: float) -> None:
        horizon = now - self.minutes * 60
        while self._events and self._events[0][0] < horizon:
            self._events.popleft()

    def per_minute(self, now: float) -> dict[str, int]:
        """kind/level -> alerts emitted in the last 60 s."""
        self._trim(now)
        out: dict[str, int] = {}
        for t, k in self._events:
            if now - 60 < t <= now + 5:
                out[k] = out.get(k, 0) + 1
        return dict(sorted(out.items()))

    def series(self, now: float) -> dict[str, Any]:
        """Alerts per minute over the last ``minutes`` minutes: minute starts and one count list per kind/level."""
        self._trim(now)
        start = math.floor(now / 60) * 60 - (self.minutes - 1) * 60
        t = [start + 60 * i for i in range(self.minutes)]
        counts: dict[str, list[int]] = {}
        for ts, k in self._events:
            i = int((ts - start) // 60)
            if 0 <= i < self.minutes:
                counts.setdefault(k, [0] * self.minutes)[i] += 1
        return {"t": t, "counts": dict(sorted(counts.items()))}

    def reasons(self) -> dict[str, list[str]]:
        """Each user's reasons of their latest alert that had any."""
        out = {}
        for uid, u in self._users.items():
            for a in reversed(u["alerts"]):
                if a["reasons"]:
                    out[uid] = a["reasons"]
                    break
        return out

    def history(self, uid: str) -> dict[str, Any]:
        u = self._users.get(uid)
        if u is None:
            return {"alerts": [], "scores": []}
        return {"alerts": list(u["alerts"]),
                "scores": [{"t": t, "score": s} for t, s in sorted(u["scores"])]}


def _reason_texts(alert: dict[str, Any]) -> list[str]:
    out = []
    for r in alert.get("reasons") or []:
        if isinstance(r, dict):
            text = r.get("text") or r.get("feature")
            if isinstance(text, str):
                out.append(text)
    return out


@dataclass
class ActiveUsers:
    """Distinct users (message keys) seen on the input topics within ``window_s`` seconds."""

    window_s: float = 300.0
    _seen: dict[bytes, float] = field(default_factory=dict)

    def saw(self, keys: Iterable[bytes], now: float) -> None:
        for k in keys:
            self._seen[k] = now

    def count(self, now: float) -> int:
        horizon = now - self.window_s
        stale = [k for k, t in self._seen.items() if t < horizon]
        for k in stale:
            del self._seen[k]
        return len(self._seen)


def scrape_totals(text: str) -> dict[str, float]:
    """The counters the dashboard rates, from one worker's Prometheus text."""
    out = {"events_in": 0.0, "events_applied": 0.0, "messages": 0.0, "dlq": 0.0}
    lag: float | None = None
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "riskstream_events_total":
                if s.labels.get("outcome") != "late":  # late events are applied (for volume): a subset
                    out["events_in"] += s.value
                if s.labels.get("outcome") == "applied":
                    out["events_applied"] += s.value
            elif s.name == "riskstream_messages_total":
                out["messages"] += s.value
            elif s.name == "riskstream_dlq_total":
                out["dlq"] += s.value
            elif s.name == "riskstream_watermark_lag_seconds" and math.isfinite(s.value):
                lag = s.value if lag is None else max(lag, s.value)
    if lag is not None:
        out["watermark_lag_s"] = lag
    return out


@dataclass
class WorkerRates:
    """Per-second rates from successive scrapes of each worker's totals."""

    _last: dict[str, tuple[float, dict[str, float]]] = field(default_factory=dict)
    _rates: dict[str, dict[str, float]] = field(default_factory=dict)
    _totals: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def observe(self, addr: str, totals: dict[str, float], now: float) -> None:
        self.errors.pop(addr, None)
        prev = self._last.get(addr)
        self._last[addr] = (now, totals)
        self._totals[addr] = totals
        if prev is None or now <= prev[0]:
            return
        dt = now - prev[0]
        # a restarted worker starts its counters at 0: count its new total, not a negative rate
        self._rates[addr] = {k: (v - prev[1].get(k, 0.0) if v >= prev[1].get(k, 0.0) else v) / dt
                             for k, v in totals.items() if k != "watermark_lag_s"}

    def failed(self, addr: str, error: str) -> None:
        self.errors[addr] = error
        self._rates.pop(addr, None)

    def summary(self) -> dict[str, Any]:
        def total(key: str) -> float:
            return sum(r.get(key, 0.0) for r in self._rates.values())

        lags = [t["watermark_lag_s"] for a, t in self._totals.items()
                if "watermark_lag_s" in t and a not in self.errors]
        return {"events_in_per_s": round(total("events_in"), 1),
                "events_applied_per_s": round(total("events_applied"), 1),
                "messages_per_s": round(total("messages"), 1),
                "events_applied_total": sum(t.get("events_applied", 0.0) for t in self._totals.values()),
                "watermark_lag_s": round(max(lags), 1) if lags else None,
                "workers_up": len([a for a in self._last if a not in self.errors]),
                "errors": dict(self.errors)}
