"""``riskstream alerts tail``: follow ``risk.alerts`` for people (or pass JSON lines through)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaException,
    TopicPartition,
)

from stream.core.alerts import Alert, Reason, alert_from_json
from stream.errors import BrokerUnavailableError
from stream.logconfig import kafka_logger
from stream.settings import Settings

__all__ = ["format_alert", "tail"]

_LEVEL = {"high": "HIGH    ", "elevated": "elevated", "cleared": "cleared "}


def format_alert(a: Alert) -> str:
    when = a.event_time_ms
    t = time.strftime("%Y-%m-%d %H:%M", time.gmtime(when / 1000))
    score = f"score {a.score:.2f}" if a.score is not None else "        "
    reasons = "; ".join(_reason_text(r) for r in a.reasons if r.feature is not None and r.value is not None)
    return f"{t}Z  {a.user_id:<14} {a.kind:<20} {_LEVEL.get(a.level, a.level)}  {score}  {reasons}"


def _reason_text(r: Reason) -> str:
    if r.text is not None:
        return r.text
    return f"{r.feature}={r.value:g}" + (f" ≥ {r.threshold}" if r.threshold is not None else "")


def tail(settings: Settings, emit: Callable[[str], None], *, from_beginning: bool = False,
         user: str | None = None, as_json: bool = False, max_alerts: int | None = None,
         idle_timeout_s: float | None = None) -> int:
    """Print alerts until interrupted, ``max_alerts`` shown, or ``idle_timeout_s`` without one."""
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "logger": kafka_logger(),
                  "group.id": f"riskstream-tail-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    try:
        try:
            md = c.list_topics(settings.alerts_topic, timeout=10)
        except KafkaException as e:
            raise BrokerUnavailableError(f"Kafka at {settings.kafka_bootstrap}: {e.args[0]}") from e
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
            if as_json:
                emit(value.decode(errors="replace"))
            else:
                try:
                    emit(format_alert(alert_from_json(value)))
                except ValueError:
                    emit(f"(unreadable alert at {m.topic()}:{m.partition()}@{m.offset()})")
            shown += 1
        return shown
    finally:
        c.close()
