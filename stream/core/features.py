"""The feature spec: the ordered feature list, its version and hash, and the one implementation.

Window snapshots (:class:`stream.core.windows.Snapshot`) in, a float32 matrix ``[N, F]`` out, plus
the few raw quantities the rules layer needs. Training (``models/``) and the stream call the same
:func:`compute`; nothing else in the project computes features. Each feature is documented in
``docs/features.md`` (name, definition, window, unit).

Conventions: all bucket arithmetic is in the user's local time (last known ``tz_offset_min``);
"7 d" windows are the 168 hour buckets or the 7 day buckets ending with the tick's (partial) local
day; "28 d" trend features use complete days before today that lie inside the user's history; per-day
means divide by the days of history inside the window (at most 7), so new users are not diluted.
Sums are taken over integer counters (exact); floating point work is elementwise, so a row's
features never depend on which other rows share its batch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from stream.core import layout as L
from stream.core.windows import Snapshot

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


def _div(a: NDArray[np.float64], b: NDArray[np.float64], default: float = 0.0) -> NDArray[np.float64]:
    out = np.full(a.shape, default, dtype=np.float64)
    np.divide(a, b, out=out, where=b > 0)
    return out


def _slot_buckets(head: NDArray[np.int64], slots: int) -> NDArray[np.int64]:
    """The absolute bucket each ring slot holds, given the newest bucket written: [N, slots].

    A slot s holds the unique bucket b in (head - slots, head] with b ≡ s (mod slots). Features
    are computed in slot order with masks derived from these buckets, so rings are never
    re-indexed (a gather per row costs more than all the arithmetic).
    """
    s = np.arange(slots, dtype=np.int64)[None, :]
    h = head[:, None]
    return h - ((h - s) % slots)


def _ols_slope(y: NDArray[np.float64], x: NDArray[np.float64], w: NDArray[np.float64]) -> NDArray[np.float64]:
    sw = w.sum(axis=1)
    xm = _div((w * x).sum(axis=1), sw)
    ym = _div((w * y).sum(axis=1), sw)
    dx = (x - xm[:, None]) * w
    num = (dx * (y - ym[:, None])).sum(axis=1)
    den = (dx * (x - xm[:, None])).sum(axis=1)
    return _div(num, den)


def compute(snaps: Sequence[Snapshot]) -> tuple[NDArray[np.float32], RuleArrays]:
    """Features ``[N, F]`` (float32, FEATURE_NAMES order) and rule inputs for window snapshots."""
    n = len(snaps)
    if n == 0:
        e = np.zeros(0, dtype=np.int64)
        return np.zeros((0, N_FEATURES), dtype=np.float32), RuleArrays(
            e.astype(np.float64), e.astype(np.float64), e, e, e)
    rings = np.frombuffer(b"".join(s.rings for s in snaps), dtype=L.RING_DTYPE)
    rings = rings.reshape(n, L.RING_WORDS).astype(np.int64)
    sc = np.array([s.scalars for s in snaps], dtype=np.int64)
    t = np.array([s.tick_end_ms for s in snaps], dtype=np.int64)

    tz = np.where(sc[:, L.S_TZ] == L.NONE, 0, sc[:, L.S_TZ] - L.TZ_BIAS)
    tl = t + tz * 60_000 - 1  # last local millisecond inside the tick
    h_top = tl // L.HOUR_MS
    d_top = tl // L.DAY_MS
    frac_h = ((tl % L.HOUR_MS) + 1) / L.HOUR_MS

    hring = rings[:, L.H_BASE:L.D_BASE].reshape(n, L.HOUR_SLOTS, len(L.H_FIELDS))
    dring = rings[:, L.D_BASE:L.X_BASE].reshape(n, L.DAY_SLOTS, len(L.D_FIELDS))
    xring = rings[:, L.X_BASE:].reshape(n, L.DETAIL_SLOTS, len(L.X_FIELDS))
    hb = _slot_buckets(sc[:, L.S_HH], L.HOUR_SLOTS)
    db = _slot_buckets(sc[:, L.S_DH], L.DAY_SLOTS)
    xb = _slot_buckets(sc[:, L.S_DH], L.DETAIL_SLOTS)
    hk = h_top[:, None] - hb  # age of each hour slot: 0 = the tick's hour
    dk = d_top[:, None] - db  # age of each day slot: 0 = the tick's local day
    xk = d_top[:, None] - xb
    h_in = (hk >= 0) & (hk < L.HOUR_SLOTS)
    # A user who never wrote has head = NONE: every slot reads as an old, invalid bucket.
    written = (sc[:, L.S_HH] != L.NONE)[:, None]
    h_in &= written
    d_written = (sc[:, L.S_DH] != L.NONE)[:, None]

    fd = np.where(sc[:, L.S_FD] == L.NONE, d_top, sc[:, L.S_FD])
    history = np.clip(d_top - fd + 1, 0, L.DAY_SLOTS)
    days7 = np.clip(history, 1, 7).astype(np.float64)

    f = np.zeros((n, N_FEATURES), dtype=np.float64)
    idx = FEATURE_INDEX

    # -- 1 h and 24 h: whole hour buckets, the oldest one weighted by the part still in the window.
    ha = hring[:, :, L.H_ACTIVE] * h_in
    hs = hring[:, :, L.H_SESSIONS] * h_in
    rest = (1.0 - frac_h)[:, None]
    w1 = (hk == 0) + (hk == 1) * rest
    w24 = (hk < 24) + (hk == 24) * rest
    f[:, idx["active_min_1h"]] = (ha * w1).sum(axis=1) / 60_000
    f[:, idx["sessions_1h"]] = (hs * w1).sum(axis=1)
    f[:, idx["active_min_24h"]] = (ha * w24).sum(axis=1) / 60_000
    f[:, idx["sessions_24h"]] = (hs * w24).sum(axis=1)

    # -- 7 d from hour buckets: volume, timing, regularity.
    a7 = ha.sum(axis=1)
    f[:, idx["active_min_day_7d"]] = a7 / 60_000 / days7
    f[:, idx["sessions_day_7d"]] = hs.sum(axis=1) / days7
    hod = hb % 24
    night = (hod >= NIGHT_HOURS[0]) & (hod < NIGHT_HOURS[1])
    curfew = (hod >= CURFEW_FEATURE_HOURS[0]) | (hod < CURFEW_FEATURE_HOURS[1])
    f[:, idx["night_share_7d"]] = _div((ha * night).sum(axis=1).astype(np.float64), a7.astype(np.float64))
    f[:, idx["curfew_min_day_7d"]] = (ha * curfew).sum(axis=1) / 60_000 / days7
    f[:, idx["late_sessions_day_7d"]] = (hs * night).sum(axis=1) / days7

    rows = np.arange(n, dtype=np.int64)[:, None]
    weights = ha.ravel().astype(np.float64)  # integers < 2**53: bincount sums them exactly
    profile = np.bincount((rows * 24 + hod).ravel(), weights=weights, minlength=n * 24).reshape(n, 24)
    tot = profile.sum(axis=1, keepdims=True)
    p = _div(profile, np.broadcast_to(tot, profile.shape))
    plogp = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    f[:, idx["hour_entropy_7d"]] = -plogp.sum(axis=1)

    day_off = np.clip(d_top[:, None] - hb // 24, 0, 7)  # 0 = today … 7 (invalid slots weigh 0)
    days = np.bincount((rows * 192 + day_off * 24 + hod).ravel(), weights=weights,
                       minlength=n * 192).reshape(n, 8, 24)
    a_d, b_d = days[:, 1:6, :], days[:, 2:7, :]  # pairs of complete consecutive days (1,2) … (5,6)
    dot = (a_d * b_d).sum(axis=2)
    norm = np.sqrt((a_d * a_d).sum(axis=2) * (b_d * b_d).sum(axis=2))
    cos = _div(dot, norm)
    pair_ok = norm > 0
    f[:, idx["day_similarity_7d"]] = _div((cos * pair_ok).sum(axis=1), pair_ok.sum(axis=1).astype(np.float64))

    # -- 7 d from the detailed day buckets: sessions, gaps, content.
    x_in = (xk >= 0) & (xk < 7) & d_written
    xs = (xring * x_in[:, :, None]).sum(axis=1).astype(np.float64)
    closed = xs[:, L.X_CLOSED]
    mlog = _div(xs[:, L.X_LOGLEN] / L.LOG_SCALE, closed)
    f[:, idx["sess_len_geomean_s_7d"]] = np.where(closed > 0, np.expm1(mlog), 0.0)
    var_log = _div(xs[:, L.X_LOGLEN_SQ] / L.LOG_SCALE, closed) - mlog * mlog
    f[:, idx["sess_len_logsd_7d"]] = np.sqrt(np.maximum(var_log, 0.0))
    f[:, idx["sess_len_mean_s_7d"]] = _div(xs[:, L.X_LEN_S], closed)
    f[:, idx["check_ratio_15s_7d"]] = _div(xs[:, L.X_SHORT15], closed)
    f[:, idx["long_sess_30m_day_7d"]] = xs[:, L.X_LONG30] / days7

    gn = xs[:, L.X_GAP_N]
    f[:, idx["gap_geomean_min_7d"]] = np.where(
        gn > 0, np.expm1(_div(xs[:, L.X_GAP_LOG] / L.LOG_SCALE, gn)) / 60.0, 0.0)
    mu = _div(xs[:, L.X_GAP_S], gn)
    sd = np.sqrt(np.maximum(_div(xs[:, L.X_GAP_SQ] * L.SQ_UNIT_S2, gn) - mu * mu, 0.0))
    f[:, idx["gap_cv_7d"]] = _div(sd, mu)
    f[:, idx["burstiness_7d"]] = np.where(gn > 1, _div(sd - mu, sd + mu), 0.0)
    f[:, idx["rmssd_sess_s_7d"]] = np.sqrt(_div(xs[:, L.X_RMSSD_SQ] * L.SQ_UNIT_S2, xs[:, L.X_RMSSD_N]))

    cats = xs[:, L.X_CAT0:L.X_CAT0 + len(L.CATEGORY_INDEX)]
    cat_tot = cats.sum(axis=1)
    for c in ("social", "short_video", "messaging", "games", "web", "news"):
        f[:, idx[f"cat_share_{c}_7d"]] = _div(cats[:, L.CATEGORY_INDEX[c]], cat_tot)
    views, clicks = xs[:, L.X_VIEWS], xs[:, L.X_CLICKS]
    f[:, idx["views_per_active_min_7d"]] = _div(views, cat_tot / 60_000)
    f[:, idx["dwell_s_mean_7d"]] = _div(xs[:, L.X_DWELL_S], views)
    f[:, idx["click_share_7d"]] = _div(clicks, clicks + views)

    # -- 28 d: escalation and variability over complete days inside the user's history.
    d_in = (dk >= 0) & (dk < L.DAY_SLOTS) & d_written
    in_hist = d_in & (db >= fd[:, None])
    complete = in_hist & (dk >= 1)
    da = dring[:, :, L.D_ACTIVE] * d_in / 60_000  # minutes per local day, in slot order

    def mean_over(lo: int, hi: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        m = complete & (dk >= lo) & (dk <= hi)
        cnt = m.sum(axis=1).astype(np.float64)
        return _div((da * m).sum(axis=1), cnt), cnt

    w1m, c1 = mean_over(1, 7)
    w2m, c2 = mean_over(8, 14)
    base, cb = mean_over(8, 27)
    f[:, idx["wow_ratio"]] = np.where((c1 > 0) & (c2 > 0), (w1m + SMOOTH_MIN) / (w2m + SMOOTH_MIN), 1.0)
    f[:, idx["escalation_ratio_28d"]] = np.where(
        (c1 > 0) & (cb > 0), (w1m + SMOOTH_MIN) / (base + SMOOTH_MIN), 1.0)

    x = -dk.astype(np.float64)
    wa = complete.astype(np.float64)
    mean_all = _div((da * wa).sum(axis=1), wa.sum(axis=1))
    slope = _ols_slope(da, x, wa)
    f[:, idx["trend_active_pct_wk_28d"]] = np.where(
        wa.sum(axis=1) >= MIN_TREND_DAYS, slope * 7 * 100 / np.maximum(mean_all, SMOOTH_MIN), 0.0)
    dclosed = (dring[:, :, L.D_CLOSED] * d_in).astype(np.float64)
    sl = np.where(dclosed > 0, np.expm1(_div(dring[:, :, L.D_LOGLEN] / L.LOG_SCALE, dclosed)), 0.0)
    ws = (complete & (dclosed > 0)).astype(np.float64)
    sl_mean = _div((sl * ws).sum(axis=1), ws.sum(axis=1))
    sl_slope = _ols_slope(sl, x, ws)
    f[:, idx["trend_sesslen_pct_wk_28d"]] = np.where(
        ws.sum(axis=1) >= MIN_TREND_DAYS, sl_slope * 7 * 100 / np.maximum(sl_mean, 1.0), 0.0)

    m14 = (complete & (dk <= 14)).astype(np.float64)
    c14 = m14.sum(axis=1)
    mean14 = _div((da * m14).sum(axis=1), c14)
    var14 = _div((((da - mean14[:, None]) ** 2) * m14).sum(axis=1), c14)
    f[:, idx["dur_cv_day_14d"]] = np.where(c14 >= 3, _div(np.sqrt(var14), mean14), 0.0)

    weekday = (db + 3) % 7  # local day 0 (1970-01-01) was a Thursday; 0 = Monday
    wkend = complete & (weekday >= 5)
    wkday = complete & (weekday < 5)
    me = _div((da * wkend).sum(axis=1), wkend.sum(axis=1).astype(np.float64))
    mw = _div((da * wkday).sum(axis=1), wkday.sum(axis=1).astype(np.float64))
    f[:, idx["weekend_ratio_28d"]] = np.where(
        (wkend.sum(axis=1) > 0) & (wkday.sum(axis=1) > 0), (me + SMOOTH_MIN) / (mw + SMOOTH_MIN), 1.0)
    f[:, idx["active_days_28d"]] = ((dring[:, :, L.D_ACTIVE] > 0) & in_hist).sum(axis=1)
    f[:, idx["history_days"]] = history

    # -- rule inputs
    ss, se = sc[:, L.S_SS], sc[:, L.S_SE]
    ongoing = (se != L.NONE) & (t - se <= L.SESSION_GAP_MS)
    session_min = np.where(ongoing, (np.minimum(se, t) - ss) / 60_000, 0.0)
    tick_start_local = t - L.TICK_MS + tz * 60_000
    rules = RuleArrays(
        today_active_min=(dring[:, :, L.D_ACTIVE] * (dk == 0) * d_in).sum(axis=1) / 60_000,
        session_min=np.maximum(session_min, 0.0),
        local_minute=(tick_start_local % L.DAY_MS) // 60_000,
        local_day=tick_start_local // L.DAY_MS,
        history_days=history,
    )
    return f.astype(np.float32), rules
