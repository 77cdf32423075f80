"""Behaviour simulator: a :class:`~models.population.Population` in, contract-v1 events out.

Per user and local day (docs/research.md §5, §9; every number here is cited there or marked [assumption]):

* sessions (pickups): Poisson count around the user's sessions/day, with a day effect, a weekend
  factor and, for escalating users, a trend;
* session lengths: a mixture of *checking* (lognormal, median 8 s, σ 0.6, weight ≈ 0.40), *engaged*
  (lognormal σ 1.5 below 10 min) and a shifted Pareto tail (α 1.8) above 10 min; the engaged median
  is solved per user so that sessions × mean length ≈ the user's daily minutes;
* start times: cumulated gaps ``Exp(1)·LogNormal(0, σ_gap)`` (σ_gap > 0 gives a decreasing hazard,
  bursty re-use; compulsive users have a smaller σ_gap: more regular re-checking), warped through
  the user's 24-hour profile for that day (chronotype, school hours, weekend, night share), then
  pushed apart so that consecutive sessions are at least 31 s apart (one pickup session each under
  the 30 s rule of ``stream.core.layout``);
* a session is a run of back-to-back view events (one per item on screen, ``dwell_ms`` = its time
  on screen; the count follows the category's mean dwell), with clicks inside views; one category
  per session.

Events are generated per chunk of users, vectorised with numpy; chunk ``i`` uses its own random
stream ``SeedSequence([seed, 1, i])``, so the output does not depend on the number of workers. JSON
lines are formatted with per-user templates byte-identical to :func:`stream.core.events.encode_event`
(a test pins the two together); ``.gz`` output is one gzip member per chunk (mtime 0).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr, ndtri

from models.population import AGE_BANDS, Population, local_midnight_ms
from stream.core.events import CATEGORIES

DEFAULT_START: Final = date(2025, 1, 6)  # a Monday
CHUNK_USERS: Final = 48
GZIP_LEVEL: Final = 1  # speed over size: level 6 is ~3x slower for ~12 % smaller files

SESSION_MIN_GAP_MS: Final = 31_000  # > SESSION_GAP_MS (30 s): each simulated session is one pickup
CHECK_MEDIAN_S: Final = 8.0
CHECK_SIGMA: Final = 0.6
ENGAGED_SIGMA: Final = 1.5
TAIL_START_S: Final = 600.0
TAIL_ALPHA: Final = 1.8
SESSION_MAX_S: Final = 4 * 3600.0
REFERENCE_MEAN_LEN_S: Final = 135.0  # 180 min / 80 sessions: the typical adult's mean pickup length
DAY_SIGMA_COUNT: Final = 0.18  # day-to-day variation [assumption], on top of Poisson and length noise
DAY_SIGMA_LEN: Final = 0.18
DAY_SIGMA_HOUR: Final = 0.35  # day-to-day noise of the hourly profile
HABIT_SIGMA_HOUR: Final = 0.30  # per-user fixed deviation of the hourly profile
WEEKEND_COUNT: Final = 1.08  # weekend ×1.1-1.3 in minutes (docs/research.md §9)
WEEKEND_LEN: Final = 1.10
# The population's minutes and sessions are averages over the week: weekdays are scaled down so
# that the weekend factors above do not inflate them.
WEEK_COUNT_NORM: Final = 1.0 / (5 / 7 + 2 / 7 * WEEKEND_COUNT)
WEEK_LEN_NORM: Final = (5 / 7 + 2 / 7 * WEEKEND_COUNT) / (5 / 7 + 2 / 7 * WEEKEND_COUNT * WEEKEND_LEN)
SCHOOL_HOURS: Final = (8, 15)
SCHOOL_FACTOR: Final = 0.35

# Mean time on screen per item (view), seconds [assumption]: a feed post, a short video, a chat,
# a game round, a web page / article.
DWELL_MEAN_S: Final = {
    "social": 70.0, "short_video": 50.0, "messaging": 120.0, "games": 360.0, "web": 150.0,
    "news": 120.0, "other": 150.0,
}
CLICK_FACTOR: Final = {
    "social": 1.2, "short_video": 0.7, "messaging": 2.0, "games": 0.6, "web": 1.0, "news": 0.8,
    "other": 1.0,
}
# Checking sessions are mostly messaging and social (Oulasvirta 2012; Tossell 2015).
CHECK_CATEGORY: Final = {
    "social": 0.35, "short_video": 0.05, "messaging": 0.45, "games": 0.0, "web": 0.05, "news": 0.05,
    "other": 0.05,
}
# Hourly activity weights, local time, adult weekday [assumption]; 00-05 is rescaled per user to
# the user's night share.
BASE_PROFILE: Final = (
    0.60, 0.30, 0.20, 0.15, 0.15, 0.40, 1.50, 3.00, 3.50, 3.00, 2.80, 2.80,
    4.00, 3.80, 2.80, 2.80, 3.20, 3.80, 4.20, 4.80, 5.80, 6.20, 5.20, 3.00,
)
NIGHT_HOURS: Final = 5  # hours 0..4 are "night" (00:00-05:00, docs/research.md §9)

_CAT_INDEX: Final = {c: i for i, c in enumerate(CATEGORIES)}
_DWELL: Final = np.array([DWELL_MEAN_S[c] for c in CATEGORIES])
_CLICK: Final = np.array([CLICK_FACTOR[c] for c in CATEGORIES])
_CHECK_CUM: Final = np.cumsum([CHECK_CATEGORY[c] for c in CATEGORIES])
DAY_MS: Final = 86_400_000


# ---------------------------------------------------------------------------------------------
# Session-length model


def _tail_mean() -> float:
    a, lo, hi = TAIL_ALPHA, TAIL_START_S, SESSION_MAX_S
    return float(a / (a - 1) * lo - (hi ** (1 - a)) * lo**a / (a - 1))


def _body_mean(m: NDArray[np.float64]) -> NDArray[np.float64]:
    """Mean of a lognormal(median m, σ) truncated to (0, TAIL_START_S)."""
    s = ENGAGED_SIGMA
    z = np.log(TAIL_START_S / m) / s
    return np.asarray(m * math.exp(s * s / 2) * ndtr(z - s) / np.maximum(ndtr(z), 1e-12), dtype=np.float64)


def engaged_median(mean_len_s: NDArray[np.float64], check_w: NDArray[np.float64],
                   tail_p: NDArray[np.float64]) -> NDArray[np.float64]:
    """The engaged-body median that makes the mixture mean equal ``mean_len_s`` (bisection)."""
    check_mean = CHECK_MEDIAN_S * math.exp(CHECK_SIGMA**2 / 2)
    body_target = (mean_len_s - check_w * check_mean - (1 - check_w) * tail_p * _tail_mean()) / (
        (1 - check_w) * (1 - tail_p))
    lo = np.full(mean_len_s.shape, math.log(1.0))
    hi = np.full(mean_len_s.shape, math.log(50_000.0))
    for _ in range(50):
        mid = (lo + hi) / 2
        too_big = _body_mean(np.exp(mid)) > body_target
        hi = np.where(too_big, mid, hi)
        lo = np.where(too_big, lo, mid)
    return np.asarray(np.exp((lo + hi) / 2), dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# One chunk of users


@dataclass
class Chunk:
    """Events (sorted by user, time, type) and sessions of one chunk of users."""

    users: NDArray[np.int64]  # population indices of the chunk's users
    ev_user: NDArray[np.int64]  # local user index 0..len(users)-1
    ev_ts: NDArray[np.int64]  # event time, epoch ms (UTC)
    ev_click: NDArray[np.bool_]
    ev_cat: NDArray[np.int64]
    ev_dwell: NDArray[np.int64]  # ms, 0 for clicks
    ev_seq: NDArray[np.int64]  # per-user event number
    ev_sess: NDArray[np.int64]  # per-user session number
    s_user: NDArray[np.int64]
    s_day: NDArray[np.int64]
    s_start_local_ms: NDArray[np.int64]  # ms since the first local midnight
    s_len_ms: NDArray[np.int64]
    v_night_ms: NDArray[np.int64]  # per local user: view time starting in 00:00-05:00 local
    v_total_ms: NDArray[np.int64]  # per local user: all view time
    cat_ms: NDArray[np.int64]  # per local user × category


def _day_profiles(pop: Population, users: NDArray[np.int64], weekdays: NDArray[np.int64],
                  rng: np.random.Generator) -> NDArray[np.float64]:
    """Hourly weights [U, D, 24] (rows sum to 1) for each user and local day."""
    u, d = len(users), len(weekdays)
    base = np.asarray(BASE_PROFILE)
    hours = np.arange(24)
    weekend = weekdays >= 5
    chrono = pop.chronotype_h[users][:, None] + weekend[None, :].astype(np.int64)  # later at weekends
    prof = base[(hours[None, None, :] - chrono[:, :, None]) % 24]
    young = (pop.age[users] < AGE_BANDS.index("adult"))[:, None, None]
    school = (hours >= SCHOOL_HOURS[0]) & (hours < SCHOOL_HOURS[1])
    prof = prof * np.where(young & ~weekend[None, :, None] & school[None, None, :], SCHOOL_FACTOR, 1.0)
    prof = prof * np.exp(HABIT_SIGMA_HOUR * rng.standard_normal((u, 1, 24)))
    night = hours < NIGHT_HOURS
    day_mass = np.where(night, 0.0, prof).sum(axis=2, keepdims=True)
    night_mass = np.where(night, prof, 0.0).sum(axis=2, keepdims=True)
    ns = pop.night_share[users][:, None, None]
    prof = np.where(night, prof / night_mass * ns, prof / day_mass * (1 - ns))
    prof = prof * np.exp(DAY_SIGMA_HOUR * rng.standard_normal((u, d, 24)))
    return np.asarray(prof / prof.sum(axis=2, keepdims=True), dtype=np.float64)


def _segment_starts(counts: NDArray[np.int64]) -> NDArray[np.int64]:
    return np.asarray(np.cumsum(counts) - counts, dtype=np.int64)


def generate_chunk(pop: Population, users: NDArray[np.int64], start: date,
                   rng: np.random.Generator) -> Chunk:
    """Simulate ``pop.days`` days of the given users; vectorised over users, days and sessions."""
    nu, nd = len(users), pop.days
    weekdays = (np.arange(nd) + start.weekday()) % 7
    weekend = weekdays >= 5

    # -- sessions per user-day -----------------------------------------------------------------
    zd = rng.standard_normal((nu, nd))
    z2 = rng.standard_normal((nu, nd))
    onset = pop.escalation_onset_day[users][:, None]
    weeks = np.where(onset >= 0, np.maximum(np.arange(nd)[None, :] - onset, 0) / 7.0, 0.0)
    rate = pop.escalation_rate_wk[users][:, None]
    lam = (pop.sessions_day[users][:, None] * np.exp(DAY_SIGMA_COUNT * zd - DAY_SIGMA_COUNT**2 / 2)
           * (WEEK_COUNT_NORM * np.where(weekend, WEEKEND_COUNT, 1.0))[None, :] * (1 + rate / 2) ** weeks)
    n_sess = rng.poisson(lam).astype(np.int64)  # [U, D]
    check_w = pop.check_weight[users]
    mean_len = pop.minutes_day[users] * 60.0 / pop.sessions_day[users]
    # Users whose sessions are short on average also binge less often (keeps the body plausible).
    tail_p = pop.tail_prob[users] * np.clip(mean_len / REFERENCE_MEAN_LEN_S, 0.25, 3.0)
    m_user = engaged_median(mean_len, check_w, tail_p)
    m_ud = (m_user[:, None] * np.exp(DAY_SIGMA_LEN * (0.7 * zd + 0.7 * z2))
            * (WEEK_LEN_NORM * np.where(weekend, WEEKEND_LEN, 1.0))[None, :] * (1 + rate) ** weeks
            * np.where(weekend[None, :], pop.weekend_factor[users][:, None], 1.0))

    flat = n_sess.ravel()
    m = int(flat.sum())
    s_ud = np.repeat(np.arange(nu * nd), flat)
    s_user = s_ud // nd
    s_day = s_ud % nd

    # -- session lengths -------------------------------------------------------------------------
    r = rng.random(m)
    checking = r < check_w[s_user]
    tail = ~checking & (rng.random(m) < tail_p[s_user])
    length_s = np.empty(m)
    nc = int(checking.sum())
    length_s[checking] = np.clip(CHECK_MEDIAN_S * np.exp(CHECK_SIGMA * rng.standard_normal(nc)), 1.0, 60.0)
    nt = int(tail.sum())
    length_s[tail] = np.minimum(TAIL_START_S * rng.random(nt) ** (-1.0 / TAIL_ALPHA), SESSION_MAX_S)
    body = ~checking & ~tail
    mb = m_ud.ravel()[s_ud[body]]
    cap = ndtr(np.log(TAIL_START_S / mb) / ENGAGED_SIGMA)
    q = np.clip(rng.random(int(body.sum())) * cap, 1e-12, 1 - 1e-12)
    length_s[body] = np.clip(mb * np.exp(ENGAGED_SIGMA * ndtri(q)), 1.0, TAIL_START_S)
    len_ms = np.rint(length_s * 1000).astype(np.int64)

    # -- start times: cumulated gaps warped through the day's hourly profile ----------------------
    prof = _day_profiles(pop, users, weekdays, rng).reshape(nu * nd, 24)
    cdf = np.cumsum(prof, axis=1)
    gap_counts = flat + 1
    g_seg = np.repeat(np.arange(nu * nd), gap_counts)
    sig = pop.gap_sigma[users][g_seg // nd]
    gaps = rng.exponential(1.0, len(g_seg)) * np.exp(sig * rng.standard_normal(len(g_seg)))
    cs = np.cumsum(gaps)
    g_first = _segment_starts(gap_counts)
    base = cs[g_first] - gaps[g_first]
    total = cs[g_first + gap_counts - 1] - base
    pos = (cs - base[g_seg]) / total[g_seg]
    keep = np.ones(len(g_seg), dtype=bool)
    keep[g_first + gap_counts - 1] = False  # the last cumulated gap is the day's end
    pos = pos[keep]
    rows = cdf[s_ud]
    hour = np.minimum((pos[:, None] > rows[:, :23]).sum(axis=1), 23)
    lo = np.where(hour > 0, rows[np.arange(m), hour - 1], 0.0)
    w = prof[s_ud, hour]
    frac = np.clip((pos - lo) / np.maximum(w, 1e-12), 0.0, 1.0)
    t0_ms = np.rint((hour + frac) * 3_600_000).astype(np.int64)  # within the local day

    # Lay the day out: idle time keeps the proportions of the gaps above, compressed so that the
    # sessions fit, and every session starts at least SESSION_MIN_GAP_MS after the previous one
    # ended; so nothing overlaps and nothing spills into the next day.
    busy = np.bincount(s_ud, weights=len_ms + SESSION_MIN_GAP_MS, minlength=nu * nd)
    over = busy > 0.9 * DAY_MS  # [guard] an extreme day: shorten its sessions to fit
    if over.any():
        shrink = np.where(over, 0.9 * DAY_MS / np.maximum(busy, 1), 1.0)[s_ud]
        len_ms = np.maximum(np.rint(len_ms * shrink).astype(np.int64), 1000)
        length_s = len_ms / 1000.0
        busy = np.bincount(s_ud, weights=len_ms + SESSION_MIN_GAP_MS, minlength=nu * nd)
    squeeze = (DAY_MS - busy) / DAY_MS
    step = len_ms + SESSION_MIN_GAP_MS
    before = np.cumsum(step) - step
    s_first = _segment_starts(flat)
    before = before - before[s_first[s_ud]] + SESSION_MIN_GAP_MS  # (days without sessions are never indexed)
    start_ms = (s_day * DAY_MS + np.floor(t0_ms * squeeze[s_ud]).astype(np.int64) + before).astype(np.int64)
    u_first = _segment_starts(np.bincount(s_user, minlength=nu))

    # -- categories and views ------------------------------------------------------------------
    cum_w = np.cumsum(pop.category_weight[users], axis=1)
    rc = rng.random(m)
    cat = np.where(
        checking,
        np.minimum((rc[:, None] > _CHECK_CUM[None, :]).sum(axis=1), len(CATEGORIES) - 1),
        np.minimum((rc[:, None] > cum_w[s_user]).sum(axis=1), len(CATEGORIES) - 1),
    ).astype(np.int64)
    n_views = np.where(
        checking,
        1 + (rng.random(m) < 0.25),
        np.clip(rng.poisson(length_s / (_DWELL[cat] * pop.dwell_mult[users][s_user])), 1, 600),
    ).astype(np.int64)
    nv = int(n_views.sum())
    v_sess = np.repeat(np.arange(m), n_views)
    gw = rng.gamma(1.5, size=nv)
    gcs = np.cumsum(gw)
    v_first = _segment_starts(n_views)
    gbase = gcs[v_first] - gw[v_first]
    gtot = gcs[v_first + n_views - 1] - gbase
    end_off = np.floor(len_ms[v_sess] * ((gcs - gbase[v_sess]) / gtot[v_sess])).astype(np.int64)
    last = v_first + n_views - 1
    end_off[last] = len_ms
    start_off = np.empty(nv, dtype=np.int64)
    start_off[1:] = end_off[:-1]
    start_off[v_first] = 0
    v_start = start_ms[v_sess] + start_off
    v_dwell = end_off - start_off

    # -- clicks inside views ---------------------------------------------------------------------
    p_click = np.where(checking[v_sess], 0.3, pop.click_rate[users][s_user[v_sess]] * _CLICK[cat[v_sess]])
    has_click = rng.random(nv) < p_click
    c_idx = np.nonzero(has_click)[0]
    c_start = v_start[c_idx] + np.floor(rng.random(len(c_idx)) * v_dwell[c_idx]).astype(np.int64)

    # -- assemble, order per user by time -------------------------------------------------------
    ev_sess_global = np.concatenate([v_sess, v_sess[c_idx]])
    ev_local = np.concatenate([v_start, c_start])
    ev_click = np.concatenate([np.zeros(nv, dtype=bool), np.ones(len(c_idx), dtype=bool)])
    ev_dwell = np.concatenate([v_dwell, np.zeros(len(c_idx), dtype=np.int64)])
    ev_user = s_user[ev_sess_global]
    order = np.lexsort((ev_click, ev_local, ev_user))
    ev_sess_global, ev_local, ev_click, ev_dwell, ev_user = (
        ev_sess_global[order], ev_local[order], ev_click[order], ev_dwell[order], ev_user[order])
    e_first = _segment_starts(np.bincount(ev_user, minlength=nu))
    ev_seq = np.arange(len(ev_user)) - e_first[ev_user]
    ev_sess = ev_sess_global - u_first[s_user[ev_sess_global]]
    tz = pop.tz_offset_min[users]
    ev_ts = local_midnight_ms(start, 0, 0) + ev_local - tz[ev_user] * 60_000

    v_hour = (v_start % DAY_MS) // 3_600_000
    v_user = s_user[v_sess]
    night_ms = np.bincount(v_user, weights=np.where(v_hour < NIGHT_HOURS, v_dwell, 0), minlength=nu)
    total_ms = np.bincount(v_user, weights=v_dwell, minlength=nu)
    cat_ms = np.zeros((nu, len(CATEGORIES)), dtype=np.int64)
    np.add.at(cat_ms, (s_user, cat), len_ms)
    return Chunk(
        users=users, ev_user=ev_user, ev_ts=ev_ts.astype(np.int64), ev_click=ev_click,
        ev_cat=cat[ev_sess_global], ev_dwell=ev_dwell, ev_seq=ev_seq.astype(np.int64),
        ev_sess=ev_sess.astype(np.int64), s_user=s_user, s_day=s_day, s_start_local_ms=start_ms,
        s_len_ms=len_ms, v_night_ms=night_ms.astype(np.int64),
        v_total_ms=total_ms.astype(np.int64), cat_ms=cat_ms,
    )


# ---------------------------------------------------------------------------------------------
# JSON lines


def _templates(pop: Population, users: NDArray[np.int64]) -> list[str]:
    """Per user: [view template, click template] with the user's constant fields filled in.

    Field order and spelling are those of ``encode_event`` (orjson, no spaces); ``%.0s`` swallows
    the dwell argument in the click template (clicks carry no dwell_ms).
    """
    out: list[str] = []
    for i in users.tolist():
        uid = pop.user_id[i]
        tail = f'"session_id":"{uid}-s%d","tz_offset_min":{int(pop.tz_offset_min[i])},"age_band":"{pop.age_band(i)}"}}\n'
        head = f'{{"v":1,"event_id":"{uid}-%d","user_id":"{uid}","ts":%d,'
        out.append(head + '"type":"view","category":"%s","dwell_ms":%d,' + tail)
        out.append(head + '"type":"click","category":"%s",%.0s' + tail)
    return out


def format_lines(pop: Population, chunk: Chunk) -> bytes:
    """The chunk's events as contract-v1 JSON lines (byte-identical to ``encode_event``)."""
    tmpl = _templates(pop, chunk.users)
    t_idx = (2 * chunk.ev_user + chunk.ev_click).tolist()
    cats = [CATEGORIES[c] for c in range(len(CATEGORIES))]
    cat = [cats[c] for c in chunk.ev_cat.tolist()]
    text = "".join([
        tmpl[k] % (q, t, c, d, s)
        for k, q, t, c, d, s in zip(t_idx, chunk.ev_seq.tolist(), chunk.ev_ts.tolist(), cat,
                                    chunk.ev_dwell.tolist(), chunk.ev_sess.tolist())
    ])
    return text.encode("ascii")


# ---------------------------------------------------------------------------------------------
# Statistics for --validate


HIST_EDGES: Final = np.concatenate([[0.0], np.logspace(-1, 5, 1201)])  # seconds


@dataclass
class ChunkStats:
    """What ``--validate`` needs from one chunk (small: no per-event arrays)."""

    users: NDArray[np.int64]
    events: int
    sessions: int
    short15: int
    len_hist: NDArray[np.int64]
    merged_hist: NDArray[np.int64]
    day_minutes: NDArray[np.float64]  # [U, D]
    sessions_per_day: NDArray[np.float64]
    night_share: NDArray[np.float64]
    events_per_day: NDArray[np.float64]
    burstiness: NDArray[np.float64]
    gap_median_s: NDArray[np.float64]
    cat_ms: NDArray[np.float64]


def chunk_stats(c: Chunk, days: int) -> ChunkStats:
    nu = len(c.users)
    end = c.s_start_local_ms + c.s_len_ms
    gap = np.zeros(len(end), dtype=np.int64)
    gap[1:] = c.s_start_local_ms[1:] - end[:-1]
    same = np.zeros(len(end), dtype=bool)
    same[1:] = c.s_user[1:] == c.s_user[:-1]
    # LSApp sessions (docs/research.md §5.1): merge pickups separated by less than 5 minutes.
    starts = np.nonzero(~same | (gap >= 300_000))[0]
    merged = np.maximum.reduceat(end, starts) - c.s_start_local_ms[starts] if len(starts) else end[:0]
    day_ms = np.zeros((nu, days))
    np.add.at(day_ms, (c.s_user, c.s_day), c.s_len_ms)
    # Waking gaps (< 4 h) per user: burstiness B = (sd - mean) / (sd + mean), docs/research.md §6.
    ok = same & (gap < 4 * 3_600_000)
    g_user, g = c.s_user[ok], gap[ok] / 1000.0
    cnt = np.maximum(np.bincount(g_user, minlength=nu), 1)
    mu = np.bincount(g_user, weights=g, minlength=nu) / cnt
    sd = np.sqrt(np.maximum(np.bincount(g_user, weights=g * g, minlength=nu) / cnt - mu**2, 0.0))
    gmed = np.array([np.median(g[g_user == u]) if (g_user == u).any() else np.nan for u in range(nu)])
    return ChunkStats(
        users=c.users,
        events=len(c.ev_ts),
        sessions=len(c.s_len_ms),
        short15=int((c.s_len_ms < 15_000).sum()),
        len_hist=np.histogram(c.s_len_ms / 1000, HIST_EDGES)[0],
        merged_hist=np.histogram(merged / 1000, HIST_EDGES)[0],
        day_minutes=day_ms / 60_000,
        sessions_per_day=np.bincount(c.s_user, minlength=nu) / days,
        night_share=c.v_night_ms / np.maximum(c.v_total_ms, 1),
        events_per_day=np.bincount(c.ev_user, minlength=nu) / days,
        burstiness=(sd - mu) / np.maximum(sd + mu, 1e-9),
        gap_median_s=gmed,
        cat_ms=c.cat_ms.sum(axis=0).astype(np.float64),
    )


@dataclass
class SimStats:
    """Simulated statistics of a whole population (per-user arrays by population index)."""

    n_users: int
    days: int
    events: int = 0
    sessions: int = 0
    short15: int = 0
    len_hist: NDArray[np.int64] = field(init=False)
    merged_hist: NDArray[np.int64] = field(init=False)
    day_minutes: NDArray[np.float64] = field(init=False)
    sessions_per_day: NDArray[np.float64] = field(init=False)
    night_share: NDArray[np.float64] = field(init=False)
    events_per_day: NDArray[np.float64] = field(init=False)
    burstiness: NDArray[np.float64] = field(init=False)
    gap_median_s: NDArray[np.float64] = field(init=False)
    cat_ms: NDArray[np.float64] = field(init=False)

    def __post_init__(self) -> None:
        n, bins = self.n_users, len(HIST_EDGES) - 1
        self.len_hist = np.zeros(bins, dtype=np.int64)
        self.merged_hist = np.zeros(bins, dtype=np.int64)
        self.day_minutes = np.zeros((n, self.days))
        self.sessions_per_day = np.zeros(n)
        self.night_share = np.zeros(n)
        self.events_per_day = np.zeros(n)
        self.burstiness = np.zeros(n)
        self.gap_median_s = np.full(n, np.nan)
        self.cat_ms = np.zeros(len(CATEGORIES))

    def add(self, s: ChunkStats) -> None:
        i = s.users
        self.events += s.events
        self.sessions += s.sessions
        self.short15 += s.short15
        self.len_hist += s.len_hist
        self.merged_hist += s.merged_hist
        self.day_minutes[i] = s.day_minutes
        self.sessions_per_day[i] = s.sessions_per_day
        self.night_share[i] = s.night_share
        self.events_per_day[i] = s.events_per_day
        self.burstiness[i] = s.burstiness
        self.gap_median_s[i] = s.gap_median_s
        self.cat_ms += s.cat_ms

    @property
    def minutes_per_day(self) -> NDArray[np.float64]:
        return np.asarray(self.day_minutes.mean(axis=1), dtype=np.float64)


def hist_median(hist: NDArray[np.int64]) -> float:
    """Median of values binned on HIST_EDGES (geometric bin centre; bins are 1.2 % wide)."""
    c = np.cumsum(hist)
    if c[-1] == 0:
        return float("nan")
    i = int(np.searchsorted(c, c[-1] / 2))
    return float(math.sqrt(max(HIST_EDGES[i], 1e-3) * HIST_EDGES[i + 1]))


# ---------------------------------------------------------------------------------------------
# Whole population to a file


_WORKER_POP: Population | None = None
_WORKER_START: date = DEFAULT_START


def _init_worker(pop: Population, start: date) -> None:
    global _WORKER_POP, _WORKER_START
    _WORKER_POP = pop
    _WORKER_START = start


def chunk_users(n_users: int) -> list[NDArray[np.int64]]:
    return [np.arange(s, min(s + CHUNK_USERS, n_users), dtype=np.int64) for s in range(0, n_users, CHUNK_USERS)]


def _work(args: tuple[int, bool]) -> tuple[bytes, ChunkStats]:
    index, gz = args
    pop = _WORKER_POP
    assert pop is not None
    users = chunk_users(len(pop))[index]
    rng = np.random.default_rng(np.random.SeedSequence([pop.seed, 1, index]))
    c = generate_chunk(pop, users, _WORKER_START, rng)
    data = format_lines(pop, c)
    if gz:
        z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31: a gzip member, mtime 0
        data = z.compress(data) + z.flush()
    return data, chunk_stats(c, pop.days)


def iter_chunks(pop: Population, start: date, *, gz: bool, workers: int) -> Iterator[tuple[bytes, ChunkStats]]:
    """Generate and encode every chunk, in order; ``workers`` > 1 uses processes."""
    n = len(chunk_users(len(pop)))
    tasks = [(i, gz) for i in range(n)]
    if workers <= 1 or n == 1:
        _init_worker(pop, start)
        for t in tasks:
            yield _work(t)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(pop, start),
                             mp_context=multiprocessing.get_context("spawn")) as ex:
        yield from ex.map(_work, tasks, chunksize=1)


def write_events(pop: Population, out: str | Path, *, start: date = DEFAULT_START, workers: int = 1,
                 progress: Callable[[int], None] | None = None) -> SimStats:
    """Write the population's events to ``out`` (gzip when it ends in .gz); return statistics."""
    path = Path(out)
    gz = path.suffix == ".gz"
    stats = SimStats(len(pop), pop.days)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        for data, cs in iter_chunks(pop, start, gz=gz, workers=workers):
            f.write(data)
            stats.add(cs)
            if progress is not None:
                progress(len(cs.users))
    os.replace(tmp, path)
    return stats
