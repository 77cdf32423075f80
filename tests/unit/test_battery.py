"""Face-validity battery (issue #11): hand-built archetypes through the real offline detector with
the shipped model. See tests/battery/generator.py for the archetypes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.battery.generator import ARCHETYPES, COMPULSIVE, HEALTHY, MINOR, battery_events, user_events
from tests.battery.run import SHIPPED, Tally, run

USERS = 10
DAYS = 21


@pytest.fixture(scope="module")
def battery(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tally]:
    return run(SHIPPED, users=USERS, days=DAYS, workdir=tmp_path_factory.mktemp("battery"))


def test_the_generator_is_deterministic_and_spans_the_days() -> None:
    a = list(user_events("checker", 3, days=DAYS, seed=5))
    b = list(user_events("checker", 3, days=DAYS, seed=5))
    assert a == b
    span_days = (max(e.ts_ms for e in a) - min(e.ts_ms for e in a)) / 86_400_000
    assert span_days > DAYS - 1.5
    assert len({e.user_id for e in battery_events(2, 3)}) == 2 * len(ARCHETYPES)


@pytest.mark.parametrize("archetype", sorted(COMPULSIVE))
def test_compulsive_archetypes_get_an_ml_risk_alert(battery: dict[str, Tally], archetype: str) -> None:
    t = battery[archetype]
    assert len(t.elevated_or_high) >= 0.9 * t.users, (archetype, sorted(t.elevated_or_high))


@pytest.mark.parametrize("archetype", sorted(HEALTHY))
def test_healthy_archetypes_are_rarely_alerted(battery: dict[str, Tally], archetype: str) -> None:
    t = battery[archetype]
    assert len(t.high) <= 0.1 * t.users, (archetype, sorted(t.high))
    assert len(t.elevated_or_high) <= 0.25 * t.users, (archetype, sorted(t.elevated_or_high))


@pytest.mark.parametrize("archetype", sorted(MINOR))
def test_minors_rules_fire(battery: dict[str, Tally], archetype: str) -> None:
    t = battery[archetype]
    assert len(t.rules) == t.users


def test_the_battery_uses_the_shipped_model() -> None:
    assert Path(SHIPPED).exists()
