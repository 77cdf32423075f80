"""``riskstream alerts tail`` against the real broker: filters, formats and colour end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from confluent_kafka import Producer

from stream.core.alerts import Alert, Reason, alert_id, alert_to_json
from stream.tools.tail import tail
from tests.contracts import assert_valid_alert
from tests.eventgen import at

ROOT = Path(__file__).resolve().parents[2]


def _publish(settings) -> list[Alert]:
    def a(user: str, kind: str, level: str, minute: int, *reasons: Reason) -> Alert:
        tick = at(3, 22, minute)
        return Alert(alert_id=alert_id(user, kind, level, tick), user_id=user, kind=kind, level=level,
                     event_time_ms=tick, reasons=reasons, score=0.5, details={"profile": "young_teen"})

    alerts = [
        a("t1", "rule:curfew", "elevated", 1, Reason.for_rule("local_minute", 1381, "22:00-06:00")),
        a("t2", "ml_risk", "high", 2, Reason.for_feature("sessions_24h", 31.0, 6.0, 0.1)),
        a("t1", "rule:daily_cap", "high", 3, Reason.for_rule("today_active_min", 121, 120)),
        a("t2", "ml_risk", "cleared", 4),
    ]
    p = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for x in alerts:
        value = alert_to_json(x)
        assert_valid_alert(value)
        p.produce(settings.alerts_topic, key=x.user_id.encode(), value=value)
    assert p.flush(30) == 0
    return alerts


def test_tail_filters_by_kind_and_level_and_writes_lines_for_people(settings):
    _publish(settings)
    lines: list[str] = []
    n = tail(settings, lines.append, from_beginning=True, idle_timeout_s=3, max_alerts=4,
             kinds={"ml_risk", "rule:daily_cap"}, levels={"high"})
    assert n == 2 and len(lines) == 2
    assert any(" ML risk " in line and "sessions 24h 31 (typical 6)" in line for line in lines)
    assert any(" daily cap " in line and "2 h 1 min today, cap 2 h" in line for line in lines)


def test_cli_tail_with_comma_separated_filters_and_forced_colour(settings):
    _publish(settings)
    r = subprocess.run([sys.executable, "-m", "stream", "alerts", "tail", "--namespace", settings.namespace,
                        "--from-beginning", "--idle-timeout", "3", "--kind", "curfew,ml_risk", "--level",
                        "elevated", "--level", "cleared", "--color"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2, r.stdout
    assert "(23:01 local)" in lines[0] or "(23:01 local)" in lines[1]
    assert all("\x1b[" in line for line in lines)  # --color even into a pipe
    r = subprocess.run([sys.executable, "-m", "stream", "alerts", "tail", "--namespace", settings.namespace,
                        "--from-beginning", "--idle-timeout", "3", "--level", "high"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2 and "\x1b[" not in r.stdout  # a pipe: no colour
