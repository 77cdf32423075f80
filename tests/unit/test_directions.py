"""The direction-of-effect table covers exactly the feature spec, with sources."""

from __future__ import annotations

import pytest

from stream.core.features import directions as FD
from stream.core.features import FEATURE_NAMES


def test_the_table_covers_exactly_the_features() -> None:
    FD.check()
    assert set(FD.DIRECTIONS) == set(FEATURE_NAMES)
    assert len(FD.signs()) == len(FEATURE_NAMES)


def test_the_literature_directions_are_positive() -> None:
    for name in ("night_share_7d", "check_ratio_15s_7d", "long_sess_30m_day_7d", "escalation_ratio_28d",
                 "active_min_day_7d", "late_sessions_day_7d", "sessions_day_7d", "trend_active_pct_wk_28d"):
        assert FD.DIRECTIONS[name].sign == +1, name


def test_check_rejects_a_missing_or_extra_name() -> None:
    with pytest.raises(ValueError, match="missing"):
        FD.check(FEATURE_NAMES + ("new_feature",))
    with pytest.raises(ValueError, match="not features"):
        FD.check(FEATURE_NAMES[:-1])
