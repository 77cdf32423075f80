"""``riskstream alerts tail`` for people: the line format, colour and the --kind/--level filters
(the Kafka side is tests/integration/test_tail.py)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from stream.cli import main
from stream.core.alerts import Alert, Reason, alert_from_json, alert_id, alert_to_json
from stream.tools.tail import (
    format_alert,
    matches,
    minutes_in_words,
    parse_kinds,
    parse_levels,
    reason_in_words,
    render,
)
from tests.eventgen import at

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "alerts.jsonl"


def alert(kind: str, level: str, *reasons: Reason, **kw: object) -> Alert:
    tick = at(3, 22, 31)
    return Alert(alert_id=alert_id("u1", kind, level, tick), user_id="u1", kind=kind, level=level,
                 event_time_ms=tick, reasons=reasons, **kw)  # type: ignore[arg-type]


def test_minutes_in_words() -> None:
    assert [minutes_in_words(m) for m in (0, 45, 59.6, 60, 61, 120, 121, 1439)] == [
        "0 min", "45 min", "1 h", "1 h", "1 h 1 min", "2 h", "2 h 1 min", "23 h 59 min"]


def test_caps_and_limits_in_words() -> None:
    assert reason_in_words(Reason.for_rule("today_active_min", 121, 120)) == "2 h 1 min today, cap 2 h"
    assert reason_in_words(Reason.for_rule("session_min", 61, 60)) == "1 h 1 min without a break, limit 1 h"
    curfew = Reason.for_rule("local_minute", 1410, "22:00-06:00")
    assert reason_in_words(curfew) == "23:30 local time, inside the curfew 22:00-06:00"  # the reason's text
    ml = Reason.for_feature("night_share_7d", 0.661, 0.123, 0.2)
    assert reason_in_words(ml) == "night share 7d 0.661 (typical 0.123)"
    assert reason_in_words(Reason(feature="x", value=2.0)) == "x=2"


def test_a_curfew_alert_shows_local_time_reason_profile_and_night() -> None:
    a = alert("rule:curfew", "elevated", Reason.for_rule("local_minute", 1410, "22:00-06:00"), score=0.131,
              details={"profile": "young_teen", "curfew": "22:00-06:00", "night": 19726})
    line = format_alert(a)
    assert line.startswith("2024-01-04 22:31 UTC (23:30 local)  u1 ")
    assert " curfew " in line and " elevated " in line and "score 0.13" in line
    assert line.endswith("23:30 local time, inside the curfew 22:00-06:00  [profile young_teen, night of 2024-01-04]")


def test_a_daily_cap_alert_says_minutes_and_cap_in_words_and_the_local_day() -> None:
    a = alert("rule:daily_cap", "high", Reason.for_rule("today_active_min", 181, 180),
              details={"profile": "adult", "daily_cap_min": 180, "local_day": 19726})
    line = format_alert(a)
    assert "2024-01-04 22:31 UTC " in line and "local)" not in line  # local time unknown: UTC only
    assert " daily cap " in line and " HIGH " in line
    assert line.endswith("3 h 1 min today, cap 3 h  [profile adult, local day 2024-01-04]")


def test_an_ml_alert_shows_reasons_and_thresholds_and_a_cleared_one_where_it_came_from() -> None:
    details = {"from_level": "none", "elevated_enter": 0.5, "elevated_exit": 0.4, "high_enter": 0.75,
               "high_exit": 0.65, "persistence_s": 300, "cooldown_s": 1800}
    a = alert("ml_risk", "elevated", Reason.for_feature("sessions_24h", 31.0, 6.0, 0.12), score=0.55,
              details=details)
    assert format_alert(a).endswith("sessions 24h 31 (typical 6)  [elevated at 0.5, cleared below 0.4, held 5 min]")
    cleared = alert("ml_risk", "cleared", score=0.3, details={**details, "from_level": "high"})
    line = format_alert(cleared)
    assert " ML risk " in line and " cleared " in line and line.endswith("[was high, high at 0.75, cleared below 0.65, held 5 min]")


def test_colour_by_level_only_when_asked() -> None:
    for level, colour in (("high", "red"), ("elevated", "yellow"), ("cleared", "green")):
        a = alert("ml_risk", level)
        plain = format_alert(a)
        coloured = format_alert(a, color=True)
        assert "\x1b[" not in plain and "\x1b[" in coloured
        assert click.unstyle(coloured) == plain
        assert click.style("x", fg=colour).split("x")[0] in coloured


def test_every_golden_alert_formats_to_one_line() -> None:
    for raw in GOLDEN.read_bytes().splitlines():
        line = render(raw)
        assert line is not None and "\n" not in line
        assert line == format_alert(alert_from_json(raw))


@pytest.mark.parametrize(("values", "expected"), [
    ((), None),
    (("ml_risk",), {"ml_risk"}),
    (("curfew",), {"rule:curfew"}),
    (("rule:daily_cap,continuous_use", " ml_risk "), {"rule:daily_cap", "rule:continuous_use", "ml_risk"}),
    ((",",), None),
])
def test_kind_filter_values(values: tuple[str, ...], expected: set[str] | None) -> None:
    assert parse_kinds(values) == (None if expected is None else frozenset(expected))


def test_level_filter_values_and_errors() -> None:
    assert parse_levels(("high,cleared", "high")) == {"high", "cleared"}
    assert parse_levels(()) is None
    with pytest.raises(click.BadParameter, match="unknown level 'HIGH'"):
        parse_levels(("HIGH",))
    with pytest.raises(click.BadParameter, match="unknown kind 'rule:nap'"):
        parse_kinds(("rule:nap",))


def test_filters_apply_to_people_lines_and_to_json_lines() -> None:
    raw = alert_to_json(alert("rule:curfew", "elevated"))
    assert matches("rule:curfew", "elevated", None, None)
    assert render(raw, kinds={"rule:curfew"}, levels={"elevated"}) is not None
    assert render(raw, kinds={"ml_risk"}) is None
    assert render(raw, levels={"high", "cleared"}) is None
    assert render(raw, as_json=True, kinds={"rule:curfew"}) == raw.decode()
    assert render(raw, as_json=True, levels={"high"}) is None
    assert render(b"{broken", kinds={"ml_risk"}, where="t:0@5") == "(unreadable alert at t:0@5)"
    assert render(b"{broken", as_json=True, kinds={"ml_risk"}) == "{broken"  # never hidden


def test_cli_refuses_unknown_filters_before_touching_kafka() -> None:
    r = CliRunner().invoke(main, ["alerts", "tail", "--kind", "curfew,nap", "--bootstrap", "127.0.0.1:1"])
    assert r.exit_code == 2 and "Invalid value for '--kind'" in r.output and "'nap'" in r.output
    r = CliRunner().invoke(main, ["alerts", "tail", "--level", "hi"])
    assert r.exit_code == 2 and "Invalid value for '--level'" in r.output
    r = CliRunner().invoke(main, ["alerts", "tail", "--help"])
    assert "--kind" in r.output and "--color / --no-color" in r.output
