"""Random but reproducible event logs and a small policy/scorer for determinism tests."""

from __future__ import annotations

import numpy as np

from stream.core.events import CATEGORIES, Event
from stream.core.features import FEATURE_INDEX, FEATURE_NAMES
from stream.core.policy import MlPolicy, PolicyConfig
from stream.core.scoring import ConstantScorer
from tests.eventgen import at

BANDS = ("13-15", "u13", "16-17", "adult", None)


def random_log(seed: int, *, users: int = 6, hours: float = 5.0, start_hour: int = 20) -> list[Event]:
    """A few users with bursts of clicks and views over some hours, crossing local midnight."""
    rng = np.random.default_rng(seed)
    out: list[Event] = []
    t0 = at(3, start_hour)
    horizon = int(hours * 3_600_000)
    for u in range(users):
        uid = f"u{seed}-{u}"
        band = BANDS[u % len(BANDS)]
        tz = int(rng.choice([0, 60, -300, 330]))
        t = t0 + int(rng.integers(0, 600_000))
        n = 0
        while t < t0 + horizon:
            kind = "view" if rng.random() < 0.7 else "click"
            out.append(Event(
                user_id=uid, ts_ms=t, type=kind, event_id=f"{uid}-{n}",
                category=str(rng.choice(CATEGORIES)),
                dwell_ms=int(rng.lognormal(9.5, 1.0)) if kind == "view" else 0,
                tz_offset_min=tz, age_band=band, item_id=None, session_id=None))
            n += 1
            # mostly dense use, sometimes a pause that ends the session
            t += int(rng.exponential(15_000)) if rng.random() < 0.85 else int(rng.exponential(900_000))
    return out


def short_policy() -> PolicyConfig:
    """Short timings so a few hours of events exercise persistence, cool-down and rules."""
    return PolicyConfig(ml=MlPolicy(persistence_s=300, cooldown_s=1800, min_history_days=0))


def feature_scorer() -> ConstantScorer:
    """A deterministic stand-in model whose score moves with the features."""
    i_s, i_n, i_a = FEATURE_INDEX["sessions_1h"], FEATURE_INDEX["night_share_7d"], FEATURE_INDEX["active_min_1h"]

    def p(x: np.ndarray) -> np.ndarray:
        z = 0.08 * x[:, i_s] + 2.5 * x[:, i_n] + 0.04 * x[:, i_a] - 2.0
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    return ConstantScorer(p, feature_names=FEATURE_NAMES)
