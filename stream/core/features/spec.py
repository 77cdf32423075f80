"""The feature spec: the ordered feature list, its version and hash, the raw rule quantities."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from stream.core import layout as L

__all__ = [
    "CURFEW_FEATURE_HOURS",
    "FEATURE_INDEX",
    "FEATURE_NAMES",
    "FEATURE_SPEC",
    "FEATURE_SPEC_HASH",
    "FEATURE_VERSION",
    "MIN_TREND_DAYS",
    "NIGHT_HOURS",
    "N_FEATURES",
    "SMOOTH_MIN",
    "RuleArrays",
]

FEATURE_VERSION: Final = 1

FEATURE_NAMES: Final[tuple[str, ...]] = (
    "active_min_1h",
    "sessions_1h",
    "active_min_24h",
    "sessions_24h",
    "active_min_day_7d",
    "sessions_day_7d",
    "sess_len_geomean_s_7d",
    "sess_len_logsd_7d",
    "sess_len_mean_s_7d",
    "check_ratio_15s_7d",
    "long_sess_30m_day_7d",
    "night_share_7d",
    "curfew_min_day_7d",
    "late_sessions_day_7d",
    "gap_geomean_min_7d",
    "gap_cv_7d",
    "burstiness_7d",
    "rmssd_sess_s_7d",
    "hour_entropy_7d",
    "day_similarity_7d",
    "cat_share_social_7d",
    "cat_share_short_video_7d",
    "cat_share_messaging_7d",
    "cat_share_games_7d",
    "cat_share_web_7d",
    "cat_share_news_7d",
    "views_per_active_min_7d",
    "dwell_s_mean_7d",
    "click_share_7d",
    "wow_ratio",
    "escalation_ratio_28d",
    "trend_active_pct_wk_28d",
    "trend_sesslen_pct_wk_28d",
    "dur_cv_day_14d",
    "weekend_ratio_28d",
    "active_days_28d",
    "history_days",
)
N_FEATURES: Final = len(FEATURE_NAMES)
FEATURE_INDEX: Final = {n: i for i, n in enumerate(FEATURE_NAMES)}

NIGHT_HOURS: Final = (0, 5)  # [00:00, 05:00) local
CURFEW_FEATURE_HOURS: Final = (22, 6)  # [22:00, 06:00) local, wraps midnight
MIN_TREND_DAYS: Final = 7
SMOOTH_MIN: Final = 10.0  # minutes added to both sides of activity ratios

FEATURE_SPEC: Final = {
    "version": FEATURE_VERSION,
    "names": list(FEATURE_NAMES),
    "layout": L.LAYOUT_SPEC,
    "night_hours": list(NIGHT_HOURS),
    "curfew_feature_hours": list(CURFEW_FEATURE_HOURS),
    "min_trend_days": MIN_TREND_DAYS,
    "smooth_min": SMOOTH_MIN,
}
FEATURE_SPEC_HASH: Final = hashlib.sha256(
    json.dumps(FEATURE_SPEC, sort_keys=True, separators=(",", ":")).encode()
).hexdigest()[:16]
"""Short, stable hash of everything that defines the features; models carry it in metadata."""


@dataclass(frozen=True, slots=True)
class RuleArrays:
    """Raw per-row quantities for the rules layer (not model features)."""

    today_active_min: NDArray[np.float64]
    session_min: NDArray[np.float64]
    local_minute: NDArray[np.int64]
    local_day: NDArray[np.int64]
    history_days: NDArray[np.int64]
