"""The compiled feature kernel (numba): one pass over a row's window state."""

from __future__ import annotations

import math
from typing import Final

import numpy as np
from numba import njit
from numpy.typing import NDArray

from stream.core import layout as L
from stream.core.features.spec import (
    CURFEW_FEATURE_HOURS,
    FEATURE_INDEX,
    FEATURE_SPEC_HASH,
    MIN_TREND_DAYS,
    N_FEATURES,
    NIGHT_HOURS,
    SMOOTH_MIN,
)
from stream.core.jit import CacheGuard, constants_key

__all__ = ["GUARD", "feature_kernel"]

# -- the kernel --------------------------------------------------------------------------------------
# numba freezes module globals into the compiled code, so the kernel reads its constants (the
# layout, the hour ranges, the feature columns) as plain module-level ints and tuples; it cannot
# read FEATURE_INDEX, a dict.
_C = FEATURE_INDEX
_ACT_1H, _SES_1H, _ACT_24H, _SES_24H = (
    _C["active_min_1h"], _C["sessions_1h"], _C["active_min_24h"], _C["sessions_24h"])
_ACT_DAY, _SES_DAY, _NIGHT_SHARE, _CURFEW_DAY, _LATE_DAY, _ENTROPY, _DAY_SIM = (
    _C["active_min_day_7d"], _C["sessions_day_7d"], _C["night_share_7d"], _C["curfew_min_day_7d"],
    _C["late_sessions_day_7d"], _C["hour_entropy_7d"], _C["day_similarity_7d"])
_LEN_GEO, _LEN_LOGSD, _LEN_MEAN, _CHECK, _LONG_DAY = (
    _C["sess_len_geomean_s_7d"], _C["sess_len_logsd_7d"], _C["sess_len_mean_s_7d"],
    _C["check_ratio_15s_7d"], _C["long_sess_30m_day_7d"])
_GAP_GEO, _GAP_CV, _BURST, _RMSSD = (
    _C["gap_geomean_min_7d"], _C["gap_cv_7d"], _C["burstiness_7d"], _C["rmssd_sess_s_7d"])
_CAT_SHARE_NAMES: Final = ("social", "short_video", "messaging", "games", "web", "news")
_CAT_FEATURES = tuple(_C[f"cat_share_{c}_7d"] for c in _CAT_SHARE_NAMES)
_CAT_FIELDS = tuple(L.X_CAT0 + L.CATEGORY_INDEX[c] for c in _CAT_SHARE_NAMES)
_N_CATS: Final = len(L.CATEGORY_INDEX)  # all categories, "other" included: the share denominator
_VIEWS_MIN, _DWELL, _CLICK_SHARE = (
    _C["views_per_active_min_7d"], _C["dwell_s_mean_7d"], _C["click_share_7d"])
_WOW, _ESCALATION, _TREND_ACT, _TREND_LEN, _DUR_CV, _WEEKEND, _ACTIVE_DAYS, _HISTORY = (
    _C["wow_ratio"], _C["escalation_ratio_28d"], _C["trend_active_pct_wk_28d"],
    _C["trend_sesslen_pct_wk_28d"], _C["dur_cv_day_14d"], _C["weekend_ratio_28d"],
    _C["active_days_28d"], _C["history_days"])
_NH, _ND, _NX = len(L.H_FIELDS), len(L.D_FIELDS), len(L.X_FIELDS)

_KERNEL_KEY: Final = constants_key(FEATURE_SPEC_HASH, L.NONE, L.TZ_BIAS, L.HOUR_MS, L.DAY_MS)
"""The constants the kernel bakes in (the spec hash covers the layout; the others are not in it);
see :mod:`stream.core.jit`."""


@njit(cache=True, nogil=True)
def _compiled_key() -> int:
    return _KERNEL_KEY


@njit(cache=True, nogil=True)
def _div(a: float, b: float) -> float:
    """``a / b``, or 0 when ``b`` is not positive (empty windows)."""
    return a / b if b > 0 else 0.0


@njit(cache=True, nogil=True)
def _ols_slope(y: NDArray[np.float64], x: NDArray[np.float64], m: int, sx: float, sy: float) -> float:
    """Least-squares slope of ``y[:m]`` on ``x[:m]`` given their sums (0 when undefined)."""
    xm, ym = _div(sx, float(m)), _div(sy, float(m))
    num = den = 0.0
    for j in range(m):
        dx = x[j] - xm
        num += dx * (y[j] - ym)
        den += dx * dx
    return _div(num, den)


@njit(cache=True, nogil=True)
def feature_kernel(rings: NDArray[np.uint32], sc: NDArray[np.int64], tick_end: NDArray[np.int64],
            out: NDArray[np.float32], today_min: NDArray[np.float64], session_min: NDArray[np.float64],
            local_minute: NDArray[np.int64], local_day: NDArray[np.int64],
            history_days: NDArray[np.int64]) -> None:
    """Fill ``out`` and the rule arrays row by row.

    Slot ``s`` of a ring with ``k`` slots holds the unique bucket ``b`` in ``(head - k, head]``
    with ``b ≡ s (mod k)``. Each ring is walked over the buckets that are both still held and inside
    its window, oldest first, so the slot, hour of day and day advance by one instead of being
    divided out per slot; the hour ring is first gathered into a days × hours grid. Integer
    counters are summed in int64 (exact); float work follows the definitions in float64 and is cast
    to float32 once per feature. The scratch buffers are reset or overwritten for every row, so no
    value crosses rows.
    """
    f = np.empty(N_FEATURES, dtype=np.float64)
    profile = np.empty(24, dtype=np.int64)  # 7 d active ms per local hour of day
    ha = np.empty((8, 24), dtype=np.int64)  # hour ring active ms by local day (0 = today … 7), hour
    hs = np.empty((8, 24), dtype=np.int64)  # … and sessions started
    norm2 = np.empty(8, dtype=np.float64)  # squared norm of each day's profile
    xs = np.empty(_NX, dtype=np.int64)  # detailed fields summed over 7 d
    # complete days in the history, oldest first: position (minus the age) and active minutes …
    cx = np.empty(L.DAY_SLOTS, dtype=np.float64)
    cy = np.empty(L.DAY_SLOTS, dtype=np.float64)
    # … and of those, the days that closed a session: position and mean log session length
    lx = np.empty(L.DAY_SLOTS, dtype=np.float64)
    ly = np.empty(L.DAY_SLOTS, dtype=np.float64)
    for i in range(rings.shape[0]):
        r = rings[i]
        t = tick_end[i]
        tz = 0 if sc[i, L.S_TZ] == L.NONE else sc[i, L.S_TZ] - L.TZ_BIAS
        tl = t + tz * 60_000 - 1  # last local millisecond inside the tick
        h_top = tl // L.HOUR_MS
        d_top = tl // L.DAY_MS
        rest = 1.0 - ((tl % L.HOUR_MS) + 1) / L.HOUR_MS  # part of the oldest hour still in 1 h / 24 h
        hh, dh = sc[i, L.S_HH], sc[i, L.S_DH]  # ring heads; NONE: never written
        fd = d_top if sc[i, L.S_FD] == L.NONE else sc[i, L.S_FD]
        history = min(max(d_top - fd + 1, 0), L.DAY_SLOTS)
        days7 = float(min(max(history, 1), 7))
        f[:] = 0.0

        # -- hour ring: gathered into local days × hours of day, then summed by window.
        ha[:, :] = 0
        hs[:, :] = 0
        if hh != L.NONE:
            lo = max(hh, h_top) - L.HOUR_SLOTS + 1
            slot, hod, day = lo % L.HOUR_SLOTS, lo % 24, d_top - lo // 24
            for _ in range(lo, min(hh, h_top) + 1):
                ha[day, hod] = r[L.H_BASE + slot * _NH + L.H_ACTIVE]
                hs[day, hod] = r[L.H_BASE + slot * _NH + L.H_SESSIONS]
                slot = slot + 1 if slot + 1 < L.HOUR_SLOTS else 0
                hod += 1
                if hod == 24:
                    hod, day = 0, day - 1
        # 1 h and 24 h: whole hour buckets, the oldest one weighted by the part still in the window.
        top = h_top % 24  # the tick's hour, in day 0
        a1, s1 = ha[0, top], hs[0, top]
        a1_old, s1_old = (ha[0, top - 1], hs[0, top - 1]) if top > 0 else (ha[1, 23], hs[1, 23])
        a24 = s24 = 0
        for h in range(24):  # today up to the tick's hour, yesterday after it
            a24 += ha[0, h] if h <= top else ha[1, h]
            s24 += hs[0, h] if h <= top else hs[1, h]
        a24_old, s24_old = ha[1, top], hs[1, top]
        # 7 d: the whole grid, by hour of day.
        a7 = s7 = a_night = s_night = a_curfew = 0
        for h in range(24):
            pa = ps = 0
            for d in range(8):
                pa += ha[d, h]
                ps += hs[d, h]
            profile[h] = pa
            a7 += pa
            s7 += ps
            if NIGHT_HOURS[0] <= h < NIGHT_HOURS[1]:
                a_night += pa
                s_night += ps
            if h >= CURFEW_FEATURE_HOURS[0] or h < CURFEW_FEATURE_HOURS[1]:
                a_curfew += pa
        f[_ACT_1H] = (a1 + a1_old * rest) / 60_000
        f[_SES_1H] = s1 + s1_old * rest
        f[_ACT_24H] = (a24 + a24_old * rest) / 60_000
        f[_SES_24H] = s24 + s24_old * rest
        f[_ACT_DAY] = a7 / 60_000 / days7
        f[_SES_DAY] = s7 / days7
        f[_NIGHT_SHARE] = _div(float(a_night), float(a7))
        f[_CURFEW_DAY] = a_curfew / 60_000 / days7
        f[_LATE_DAY] = s_night / days7

        plogp = 0.0
        for h in range(24):
            if profile[h] > 0:
                p = profile[h] / a7
                plogp += p * math.log2(p)
        f[_ENTROPY] = -plogp  # -0.0 for one active hour or none, as alerts have always shown it

        for d in range(1, 7):
            q = 0.0  # float: squares of u32 sums can pass int64
            for h in range(24):
                q += float(ha[d, h]) * float(ha[d, h])
            norm2[d] = q
        sim, pairs = 0.0, 0  # cosine of consecutive complete days (1, 2) … (5, 6)
        for d in range(1, 6):
            norm = math.sqrt(norm2[d] * norm2[d + 1])
            if norm > 0:
                dot = 0.0
                for h in range(24):
                    dot += float(ha[d, h]) * float(ha[d + 1, h])
                sim += dot / norm
                pairs += 1
        f[_DAY_SIM] = _div(sim, float(pairs))

        # -- detailed day ring (7 local days ending today): sessions, gaps, content.
        xs[:] = 0
        if dh != L.NONE:
            for b in range(max(dh - L.DETAIL_SLOTS, d_top - 7) + 1, min(dh, d_top) + 1):
                base = L.X_BASE + (b % L.DETAIL_SLOTS) * _NX
                for k in range(_NX):
                    xs[k] += r[base + k]
        closed = float(xs[L.X_CLOSED])
        mlog = _div(xs[L.X_LOGLEN] / L.LOG_SCALE, closed)
        f[_LEN_GEO] = math.expm1(mlog) if closed > 0 else 0.0
        var_log = _div(xs[L.X_LOGLEN_SQ] / L.LOG_SCALE, closed) - mlog * mlog
        f[_LEN_LOGSD] = math.sqrt(max(var_log, 0.0))
        f[_LEN_MEAN] = _div(float(xs[L.X_LEN_S]), closed)
        f[_CHECK] = _div(float(xs[L.X_SHORT15]), closed)
        f[_LONG_DAY] = xs[L.X_LONG30] / days7

        gn = float(xs[L.X_GAP_N])
        f[_GAP_GEO] = math.expm1(_div(xs[L.X_GAP_LOG] / L.LOG_SCALE, gn)) / 60.0 if gn > 0 else 0.0
        mu = _div(float(xs[L.X_GAP_S]), gn)
        sd = math.sqrt(max(_div(float(xs[L.X_GAP_SQ]) * L.SQ_UNIT_S2, gn) - mu * mu, 0.0))
        f[_GAP_CV] = _div(sd, mu)
        f[_BURST] = _div(sd - mu, sd + mu) if gn > 1 else 0.0
        f[_RMSSD] = math.sqrt(_div(float(xs[L.X_RMSSD_SQ]) * L.SQ_UNIT_S2, float(xs[L.X_RMSSD_N])))

        cat_ms = 0
        for c in range(_N_CATS):
            cat_ms += xs[L.X_CAT0 + c]
        cat_tot = float(cat_ms)
        for c in range(len(_CAT_FEATURES)):
            f[_CAT_FEATURES[c]] = _div(float(xs[_CAT_FIELDS[c]]), cat_tot)
        views, clicks = float(xs[L.X_VIEWS]), float(xs[L.X_CLICKS])
        f[_VIEWS_MIN] = _div(views, cat_tot / 60_000)
        f[_DWELL] = _div(float(xs[L.X_DWELL_S]), views)
        f[_CLICK_SHARE] = _div(clicks, clicks + views)

        # -- day ring (28 d): escalation and variability over complete days inside the history.
        today = active_days = 0
        s_all = s_w1 = s_w2 = s_base = s14 = s_end = s_wkd = 0.0  # sums of daily minutes …
        x_all = x_sl = 0.0  # … and of the positions of the days in the trends
        m = c_w1 = c_w2 = c_base = c14 = c_end = c_wkd = ml = 0  # … and their day counts
        if dh != L.NONE:
            lo = max(dh, d_top) - L.DAY_SLOTS + 1
            slot = lo % L.DAY_SLOTS
            for b in range(lo, min(dh, d_top) + 1):
                w = L.D_BASE + slot * _ND
                slot = slot + 1 if slot + 1 < L.DAY_SLOTS else 0
                active = r[w + L.D_ACTIVE]
                dk = d_top - b  # age: 0 = the tick's local day
                if dk == 0:
                    today += active
                if b < fd:  # before the user's history
                    continue
                if active > 0:
                    active_days += 1
                if dk == 0:  # today is not complete
                    continue
                pos, da = -float(dk), active / 60_000
                cx[m], cy[m] = pos, da
                m += 1
                x_all += pos
                s_all += da
                if dk <= 7:
                    s_w1 += da
                    c_w1 += 1
                elif dk <= 14:
                    s_w2 += da
                    c_w2 += 1
                if dk >= 8:  # the baseline: days 8 … 27
                    s_base += da
                    c_base += 1
                if dk <= 14:
                    s14 += da
                    c14 += 1
                if (b + 3) % 7 >= 5:  # local day 0 (1970-01-01) was a Thursday; 5, 6 = Sat, Sun
                    s_end += da
                    c_end += 1
                else:
                    s_wkd += da
                    c_wkd += 1
                dclosed = float(r[w + L.D_CLOSED])
                if dclosed > 0:
                    lx[ml], ly[ml] = pos, r[w + L.D_LOGLEN] / L.LOG_SCALE / dclosed
                    x_sl += pos
                    ml += 1

        w1m, w2m, base_m = _div(s_w1, float(c_w1)), _div(s_w2, float(c_w2)), _div(s_base, float(c_base))
        f[_WOW] = (w1m + SMOOTH_MIN) / (w2m + SMOOTH_MIN) if c_w1 > 0 and c_w2 > 0 else 1.0
        f[_ESCALATION] = (w1m + SMOOTH_MIN) / (base_m + SMOOTH_MIN) if c_w1 > 0 and c_base > 0 else 1.0
        if m >= MIN_TREND_DAYS:
            slope = _ols_slope(cy, cx, m, x_all, s_all)
            f[_TREND_ACT] = slope * 7 * 100 / max(_div(s_all, float(m)), SMOOTH_MIN)
        if ml >= MIN_TREND_DAYS:  # only then the days' session lengths are needed
            s_sl = 0.0
            for j in range(ml):
                ly[j] = math.expm1(ly[j])  # the day's geometric-mean session length, s
                s_sl += ly[j]
            slope = _ols_slope(ly, lx, ml, x_sl, s_sl)
            f[_TREND_LEN] = slope * 7 * 100 / max(_div(s_sl, float(ml)), 1.0)
        if c14 >= 3:
            mean14 = _div(s14, float(c14))
            sq = 0.0
            for j in range(m):
                if cx[j] >= -14:  # at most 14 days old
                    sq += (cy[j] - mean14) ** 2
            f[_DUR_CV] = _div(math.sqrt(_div(sq, float(c14))), mean14)
        me, mw = _div(s_end, float(c_end)), _div(s_wkd, float(c_wkd))
        f[_WEEKEND] = (me + SMOOTH_MIN) / (mw + SMOOTH_MIN) if c_end > 0 and c_wkd > 0 else 1.0
        f[_ACTIVE_DAYS] = active_days
        f[_HISTORY] = history

        for k in range(N_FEATURES):
            out[i, k] = f[k]

        # -- rule inputs
        ss, se = sc[i, L.S_SS], sc[i, L.S_SE]
        ongoing = se != L.NONE and t - se <= L.SESSION_GAP_MS
        session_min[i] = max((min(se, t) - ss) / 60_000, 0.0) if ongoing else 0.0
        tick_start_local = t - L.TICK_MS + tz * 60_000
        today_min[i] = today / 60_000
        local_minute[i] = (tick_start_local % L.DAY_MS) // 60_000
        local_day[i] = tick_start_local // L.DAY_MS
        history_days[i] = history


GUARD = CacheGuard(_KERNEL_KEY, _compiled_key, (_div, _ols_slope, feature_kernel))
