"""Expected direction of effect of every feature on the risk of compulsive use, written once.

``+1``: more of it never means less risk, all else equal (the model must be non-decreasing in it);
``-1``: more of it never means more risk (non-increasing); ``0``: the literature gives no
established direction (the model is free, or leaves the feature out).

Sources are the studies of ``docs/research.md`` §2, §3 and §5.3 (letters as there: A Lin
2017 JCP, B Lin 2017 Transl Psychiatry, C Lin 2015, E Lee U 2014, F Choi 2017, G Tossell 2015,
H Noë 2019, I Rozgonjuk 2018, J Marciano 2022, N Terzimehić 2023). Training
(``models/train.py``: monotone constraints) and the tests (``tests/unit/test_monotonicity.py``)
read the table from here; nothing else restates it.

This module will move into the feature-spec package; keep it free of imports other than the
feature list.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from stream.core.features.spec import FEATURE_NAMES

__all__ = ["DIRECTIONS", "Direction", "check", "signs"]


class Direction(NamedTuple):
    sign: int  # +1, -1 or 0
    source: str


_VOLUME = "daily active time: A, E, F, G, I, J (docs/research.md §3 volume; §5.3 ≈2×)"
_PICKUPS = "uses / pickups per day: A, C, G (§5.3 ≈2×; I found no link for unlocks, so never negative)"
_NIGHT = "night-time use: F (night SNS/gaming), Common Sense 2023, Christensen 2016 (§3 timing)"
_ESCALATION = "upward trend in daily use and session length = tolerance: C (§3 escalation)"

DIRECTIONS: Final[dict[str, Direction]] = {
    "active_min_1h": Direction(+1, _VOLUME),
    "sessions_1h": Direction(+1, _PICKUPS),
    "active_min_24h": Direction(+1, _VOLUME),
    "sessions_24h": Direction(+1, _PICKUPS),
    "active_min_day_7d": Direction(+1, _VOLUME),
    "sessions_day_7d": Direction(+1, _PICKUPS),
    "sess_len_geomean_s_7d": Direction(0, "no direction: G shorter interactions vs C longer epochs (tolerance)"),
    "sess_len_logsd_7d": Direction(0, "no established direction (Falaki 2010 describes the spread only)"),
    "sess_len_mean_s_7d": Direction(0, "no direction: shorter checking (G) and longer binges (N) both occur"),
    "check_ratio_15s_7d": Direction(+1, "checking habit: G, Oulasvirta 2012, Ferreira 2014 (§3 fragmentation)"),
    "long_sess_30m_day_7d": Direction(+1, "long sessions / rabbit holes: N; §5.3 P(>30 min) ×2-3"),
    "night_share_7d": Direction(+1, _NIGHT),
    "curfew_min_day_7d": Direction(+1, _NIGHT + "; late-evening use, §7.1 R4/R5"),
    "late_sessions_day_7d": Direction(+1, "sessions starting 00:00-05:00: Common Sense 2023 (§5 #8), F"),
    "gap_geomean_min_7d": Direction(-1, "non-use gaps shorter in PSU: B (§5.3 'fewer, shorter, more regular')"),
    "gap_cv_7d": Direction(0, "B: more regular re-checking, but CV also falls for sparse daytime users; left free"),
    "burstiness_7d": Direction(0, "B vs Falaki 2010: no established direction; left free"),
    "rmssd_sess_s_7d": Direction(0, "B: lower RMSSD with PSU, confounded by session length; left free"),
    "hour_entropy_7d": Direction(0, "no established direction (E: 'different diurnal pattern')"),
    "day_similarity_7d": Direction(0, "B reports a similarity index, sign ambiguous for this definition"),
    "cat_share_social_7d": Direction(+1, "social interactions higher: G, H, F (§5.3)"),
    "cat_share_short_video_7d": Direction(+1, "short video: Common Sense 2023 (hours a day), §6 feed ×1.5"),
    "cat_share_messaging_7d": Direction(0, "messaging: G counts it with checking, but no share effect; free"),
    "cat_share_games_7d": Direction(0, "games share: no difference (G, §5.3)"),
    "cat_share_web_7d": Direction(0, "web: E mentions web content; no share effect established"),
    "cat_share_news_7d": Direction(0, "no source"),
    "views_per_active_min_7d": Direction(0, "no source (item pacing is a product property)"),
    "dwell_s_mean_7d": Direction(0, "no source (item pacing is a product property)"),
    "click_share_7d": Direction(0, "no source"),
    "wow_ratio": Direction(+1, _ESCALATION + "; §5 #20"),
    "escalation_ratio_28d": Direction(+1, _ESCALATION),
    "trend_active_pct_wk_28d": Direction(+1, _ESCALATION + " (daily use)"),
    "trend_sesslen_pct_wk_28d": Direction(+1, _ESCALATION + " (median epoch duration)"),
    "dur_cv_day_14d": Direction(0, "variance is the top gambling predictor (Finkenwirth 2021), not shown for PSU"),
    "weekend_ratio_28d": Direction(0, "no established direction"),
    "active_days_28d": Direction(+1, "daily use: A (frequency of use days); a day without use is never riskier"),
    "history_days": Direction(0, "not behaviour: time since the first event"),
}


def check(names: tuple[str, ...] = FEATURE_NAMES) -> None:
    """Raise ``ValueError`` unless the table covers exactly ``names`` with signs in {-1, 0, +1}."""
    missing = [n for n in names if n not in DIRECTIONS]
    extra = [n for n in DIRECTIONS if n not in names]
    bad = [n for n, d in DIRECTIONS.items() if d.sign not in (-1, 0, 1) or not d.source.strip()]
    if missing or extra or bad:
        raise ValueError(f"feature directions: missing {missing}, not features {extra}, invalid {bad}")


def signs(names: tuple[str, ...] = FEATURE_NAMES) -> tuple[int, ...]:
    """The signs in ``names`` order (for ``monotonic_cst``)."""
    check(names)
    return tuple(DIRECTIONS[n].sign for n in names)


check()
