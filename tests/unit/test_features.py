"""The feature spec: hand-checked values, batch independence, finiteness, a pinned spec hash."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core import features as F
from stream.core.windows import Item, MemoryWindowStore, UserBatch
from tests.eventgen import at, ev
from tests.scenarios import random_log

FAR = 2**62


def snapshots_of(events):
    per = defaultdict(list)
    for e in sorted(events, key=lambda e: (e.ts_ms, e.type, e.event_id)):
        per[e.user_id].append(Item(e))
    res = MemoryWindowStore().apply([UserBatch(u, i) for u, i in per.items()], FAR)
    return [s for r in res for s in r.snapshots]


def regular_user(days: int = 10, tz: int = 60):
    """Four blocks a day (UTC 08, 12, 20, 23), five 25-s sessions each, all social."""
    out = []
    for d in range(days):
        for hour in (8, 12, 20, 23):
            for k in range(5):
                t = at(d, hour, 10 * k)
                out.append(ev("u", t, "view", dwell_ms=20_000, tz=tz, age_band="13-15"))
                out.append(ev("u", t + 25_000, "click", tz=tz, age_band="13-15"))
    return out


def test_hand_made_user_has_the_expected_features():
    snaps = snapshots_of(regular_user())
    x, rules = F.compute(snaps[-1:])
    f = dict(zip(F.FEATURE_NAMES, x[0].tolist()))
    assert f["sessions_day_7d"] == pytest.approx(20.0)
    assert f["active_min_day_7d"] == pytest.approx(20 * 25 / 60, rel=1e-6)
    assert f["sess_len_mean_s_7d"] == pytest.approx(25.0)
    assert f["sess_len_geomean_s_7d"] == pytest.approx(25.0, rel=1e-2)
    assert f["sess_len_logsd_7d"] == pytest.approx(0.0, abs=1e-2)
    assert f["check_ratio_15s_7d"] == 0.0
    # UTC 23:00 is 00:00 local (+60 min): one block of four is at night
    assert f["night_share_7d"] == pytest.approx(0.25)
    assert f["late_sessions_day_7d"] == pytest.approx(5.0)
    assert f["hour_entropy_7d"] == pytest.approx(2.0, abs=1e-6)  # four equal hours
    assert f["day_similarity_7d"] == pytest.approx(1.0)
    assert f["cat_share_social_7d"] == 1.0 and f["cat_share_games_7d"] == 0.0
    assert f["dwell_s_mean_7d"] == pytest.approx(20.0)
    assert f["click_share_7d"] == pytest.approx(0.5)
    assert f["history_days"] == 11  # day 0 … day 9, plus the local day after the last UTC 23:00 block
    assert f["active_days_28d"] == 11
    assert rules.local_minute[0] == 40  # the last tick starts at 23:40 UTC = 00:40 local
    assert rules.today_active_min[0] == pytest.approx(5 * 25 / 60)


def test_escalating_user_has_a_positive_trend_and_ratio():
    out = []
    for d in range(21):
        minutes = 20 + 3 * d
        for k in range(minutes):  # one-minute views in a row: one long session a day
            out.append(ev("esc", at(d, 18, k), "view", dwell_ms=60_000))
    x, _ = F.compute(snapshots_of(out)[-1:])
    f = dict(zip(F.FEATURE_NAMES, x[0].tolist()))
    assert f["trend_active_pct_wk_28d"] > 20
    assert f["escalation_ratio_28d"] > 1.2
    assert f["wow_ratio"] > 1.1
    # six closed long sessions in the window; today's is still open at the tick
    assert f["long_sess_30m_day_7d"] == pytest.approx(6 / 7)


def test_empty_batch_has_the_right_shape():
    x, rules = F.compute([])
    assert x.shape == (0, F.N_FEATURES) and x.dtype == np.float32
    assert rules.today_active_min.shape == (0,)


def test_spec_hash_is_pinned():
    # Changing features, their order or the window layout changes this hash; update it on purpose
    # (and retrain the shipped model: a mismatching model is refused at load).
    assert F.FEATURE_SPEC_HASH == "e998886324017d7c"
    assert len(F.FEATURE_NAMES) == len(set(F.FEATURE_NAMES)) == F.N_FEATURES == 37


SNAPS = snapshots_of(random_log(5, users=8, hours=30)) + snapshots_of(regular_user(12))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, len(SNAPS) - 1), min_size=1, max_size=60))
def test_a_rows_features_do_not_depend_on_its_batch(picks):
    batch = [SNAPS[i] for i in picks]
    x, _ = F.compute(batch)
    for row, i in enumerate(picks):
        alone, _ = F.compute([SNAPS[i]])
        assert np.array_equal(x[row], alone[0])  # bitwise, not approximately


def test_features_are_finite_and_nonnegative_where_they_must_be():
    x, _ = F.compute(SNAPS)
    assert np.isfinite(x).all()
    nonneg = [i for i, n in enumerate(F.FEATURE_NAMES) if not n.startswith(("trend_", "burstiness"))]
    assert (x[:, nonneg] >= 0).all()
    shares = [i for i, n in enumerate(F.FEATURE_NAMES) if "share" in n or "ratio_15s" in n]
    assert (x[:, shares] <= 1.0 + 1e-6).all()
