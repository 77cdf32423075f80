"""``riskstream alerts tail``: follow ``risk.alerts`` for people (or pass JSON lines through).

One line per alert: the tick in UTC and, where the alert knows it (curfew alerts carry the user's
local minute), the local time of day; the user; the kind and level in words, coloured by level
when asked; the score; the reasons in words (minutes as hours and minutes, caps and limits) and
the policy details that matter to a reader. ``--kind`` / ``--level`` keep only some alerts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection, Iterable
from datetime import date, timedelta

import click
import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    TopicPartition,
)

from stream.core.alerts import KINDS, LEVELS, Alert, Detail, Reason, alert_from_json
from stream.errors import BrokerUnavailableError
from stream.kafka_conf import librdkafka_config, metadata, watch_of
from stream.settings import Settings

__all__ = ["format_alert", "matches", "parse_kinds", "parse_levels", "tail"]

_KIND_WORDS = {"ml_risk": "ML risk", "rule:daily_cap": "daily cap", "rule:curfew": "curfew",
               "rule:continuous_use": "continuous use"}
_LEVEL_STYLE: dict[str, dict[str, object]] = {
    "high": {"fg": "red", "bold": True}, "elevated": {"fg": "yellow"}, "cleared": {"fg": "green"}}
_LOCAL_MINUTE = ("local_minute", "curfew_over_minute")  # rule inputs that are a local time of day
_EPOCH_DAY = date(1970, 1, 1)


# -- filters ---------------------------------------------------------------------------------------
def _split(values: Iterable[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def parse_kinds(values: Iterable[str]) -> frozenset[str] | None:
    """``--kind`` values (repeated and/or comma-separated; ``curfew`` means ``rule:curfew``) -> kinds,
    or None for all. Raises ``click.BadParameter`` naming the allowed ones."""
    out = set()
    for v in _split(values):
        kind = v if v in KINDS else f"rule:{v}"
        if kind not in KINDS:
            raise click.BadParameter(f"unknown kind {v!r}; one of {', '.join(KINDS)} (rule: may be left out)")
        out.add(kind)
    return frozenset(out) or None


def parse_levels(values: Iterable[str]) -> frozenset[str] | None:
    """``--level`` values (repeated and/or comma-separated) -> levels, or None for all."""
    out = set(_split(values))
    bad = sorted(out - set(LEVELS))
    if bad:
        raise click.BadParameter(f"unknown level {bad[0]!r}; one of {', '.join(LEVELS)}")
    return frozenset(out) or None


def matches(kind: object, level: object, kinds: Collection[str] | None, levels: Collection[str] | None) -> bool:
    return (kinds is None or kind in kinds) and (levels is None or level in levels)


# -- words -----------------------------------------------------------------------------------------
def minutes_in_words(minutes: float) -> str:
    """``45`` -> ``45 min``, ``120`` -> ``2 h``, ``121`` -> ``2 h 1 min``."""
    m = round(minutes)
    if m < 60:
        return f"{m} min"
    h, m = divmod(m, 60)
    return f"{h} h" if m == 0 else f"{h} h {m} min"


def _clock(minute: float) -> str:
    m = int(minute) % 1440
    return f"{m // 60:02d}:{m % 60:02d}"


def _is_num(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def reason_in_words(r: Reason) -> str | None:
    """Minute-valued rule inputs in hours and minutes; otherwise the reason's own text."""
    if r.feature == "today_active_min" and r.value is not None:
        cap = f", cap {minutes_in_words(r.threshold)}" if isinstance(r.threshold, int | float) else ""
        return f"{minutes_in_words(r.value)} today{cap}"
    if r.feature == "session_min" and r.value is not None:
        limit = f", limit {minutes_in_words(r.threshold)}" if isinstance(r.threshold, int | float) else ""
        return f"{minutes_in_words(r.value)} without a break{limit}"
    if r.text is not None:
        return r.text
    if r.feature is None or r.value is None:
        return None
    return f"{r.feature}={r.value:g}" + (f" ≥ {r.threshold}" if r.threshold is not None else "")


def _day(n: Detail) -> str | None:
    return (_EPOCH_DAY + timedelta(days=int(n))).isoformat() if _is_num(n) else None


def details_in_words(a: Alert) -> list[str]:
    """The policy details a reader needs, in words (profile, caps, limits, thresholds, local day)."""
    d = a.details
    out: list[str] = []
    if "profile" in d:
        out.append(f"profile {d['profile']}")
    if not a.reasons:  # else the reasons say them
        if _is_num(d.get("daily_cap_min")):
            out.append(f"daily cap {minutes_in_words(float(d['daily_cap_min']))}")
        if _is_num(d.get("continuous_use_min")):
            out.append(f"limit {minutes_in_words(float(d['continuous_use_min']))} without a break")
        if d.get("curfew"):
            out.append(f"curfew {d['curfew']}")
    if (day := _day(d.get("local_day", ""))) is not None:
        out.append(f"local day {day}")
    if (night := _day(d.get("night", ""))) is not None and d.get("night"):
        out.append(f"night of {night}")
    if a.kind == "ml_risk":
        if d.get("from_level") not in (None, "none"):
            out.append(f"was {d['from_level']}")
        tier = a.level if a.level != "cleared" else str(d.get("from_level", ""))
        enter, leave = d.get(f"{tier}_enter"), d.get(f"{tier}_exit")
        if isinstance(enter, int | float) and isinstance(leave, int | float):
            out.append(f"{tier} at {enter:g}, cleared below {leave:g}")
        if _is_num(d.get("persistence_s")) and d["persistence_s"]:
            out.append(f"held {minutes_in_words(float(d['persistence_s']) / 60)}")
    return out


def local_time(a: Alert) -> str | None:
    """The user's local time of day at the alert, where the alert carries it (curfew alerts)."""
    for r in a.reasons:
        if r.feature in _LOCAL_MINUTE and r.value is not None:
            return _clock(r.value)
    return None


def format_alert(a: Alert, *, color: bool = False) -> str:
    """One line for people: time (UTC, and local where known), user, kind, level, score, reasons, details."""
    t = time.strftime("%Y-%m-%d %H:%M", time.gmtime(a.event_time_ms / 1000))
    local = local_time(a)
    when = f"{t} UTC" + (f" ({local} local)" if local else " " * 14)
    word = a.level.upper() if a.level == "high" else a.level
    pad = " " * max(0, 8 - len(word))
    level = (click.style(word, **_LEVEL_STYLE.get(a.level, {})) if color else word) + pad  # type: ignore[arg-type]
    score = f"score {a.score:.2f}" if a.score is not None else " " * 10
    words = [w for w in (reason_in_words(r) for r in a.reasons) if w]
    detail = details_in_words(a)
    tail = "  ".join(p for p in ("; ".join(words), f"[{', '.join(detail)}]" if detail else "") if p)
    return f"{when}  {a.user_id:<14} {_KIND_WORDS.get(a.kind, a.kind):<14} {level}  {score}  {tail}".rstrip()


# -- the consumer ----------------------------------------------------------------------------------
def _kind_level(value: bytes) -> tuple[object, object]:
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None, None
    return (obj.get("kind"), obj.get("level")) if isinstance(obj, dict) else (None, None)


def tail(settings: Settings, emit: Callable[[str], None], *, from_beginning: bool = False,
         user: str | None = None, as_json: bool = False, max_alerts: int | None = None,
         idle_timeout_s: float | None = None, kinds: Collection[str] | None = None,
         levels: Collection[str] | None = None, color: bool = False) -> int:
    """Print alerts until interrupted, ``max_alerts`` shown, or ``idle_timeout_s`` without one.

    ``kinds`` / ``levels``: show only these (None: all); unreadable records are always shown."""
    conf = librdkafka_config(settings, **{"group.id": f"riskstream-tail-{uuid.uuid4().hex[:8]}",
                                          "enable.auto.commit": False})
    c = Consumer(conf)
    try:
        md = metadata(c, watch_of(conf), settings, settings.alerts_topic, timeout_s=10)
        t = md.topics.get(settings.alerts_topic)
        if t is None or t.error is not None:
            raise BrokerUnavailableError(f"topic {settings.alerts_topic} not found: run `riskstream topics create`")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        c.assign([TopicPartition(settings.alerts_topic, p, start) for p in t.partitions])
        shown = 0
        last = time.monotonic()
        while max_alerts is None or shown < max_alerts:
            m = c.poll(0.5)
            if m is None or m.error():
                if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                    break
                continue
            last = time.monotonic()
            value = m.value() or b""
            if user is not None and (m.key() or b"").decode(errors="replace") != user:
                continue
            line = render(value, as_json=as_json, kinds=kinds, levels=levels, color=color,
                          where=f"{m.topic()}:{m.partition()}@{m.offset()}")
            if line is None:
                continue
            emit(line)
            shown += 1
        return shown
    finally:
        c.close()


def render(value: bytes, *, as_json: bool = False, kinds: Collection[str] | None = None,
           levels: Collection[str] | None = None, color: bool = False, where: str = "?") -> str | None:
    """The line to print for one record, or None when the filters leave it out."""
    if as_json:
        kind, level = _kind_level(value)
        if kind is not None and not matches(kind, level, kinds, levels):
            return None
        return value.decode(errors="replace")
    try:
        a = alert_from_json(value)
    except ValueError:
        return f"(unreadable alert at {where})"
    if not matches(a.kind, a.level, kinds, levels):
        return None
    return format_alert(a, color=color)
