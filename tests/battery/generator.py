"""Face-validity battery: hand-parameterised users, independent of ``models/simulate.py``.

Every archetype is written out by hand from the issue (#11) and docs/research.md §5-§6 in plain terms
(sessions a day, their length, hour and category), not drawn from the training simulator's
population model; this module shares no code with ``models/``. A session is a run of back-to-back
view events (contract v1) of one category; sessions are at least 45 s apart so the detector's 30-s
rule sees each as one pickup.

``COMPULSIVE`` archetypes must get an ``ml_risk`` alert; ``HEALTHY`` ones mostly must not;
``INFORMATIONAL`` ones are reported but not asserted (a night-shift worker looks like a night user
to any model that reads local clock time); ``MINOR`` users must trigger the minors' rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np

from stream.core.events import Event

DAY0: Final = 1_704_067_200_000  # 2024-01-01T00:00:00Z, a Monday (local midnight for tz 0)
DAY_MS: Final = 86_400_000
MIN_GAP_S: Final = 45.0
TZ_CHOICES: Final = (0, 60, -300, 330, 540)


@dataclass(frozen=True)
class Session:
    start_s: float  # seconds since the user's local midnight of day 0 (may exceed one day)
    length_s: float
    category: str
    dwell_s: float  # mean time on screen per item


Plan = Callable[[np.random.Generator, int, int], list[Session]]  # (rng, day, days) -> sessions of the day


def _spread(rng: np.random.Generator, n: int, lo_h: float, hi_h: float) -> np.ndarray:
    return np.sort(rng.uniform(lo_h * 3600, hi_h * 3600, n))


def _short(rng: np.random.Generator, day: int, n: int, lo_h: float, hi_h: float, len_lo: float,
           len_hi: float, cats: tuple[str, ...], dwell: float) -> list[Session]:
    starts = _spread(rng, n, lo_h, hi_h)
    return [Session(day * 86400 + s, float(rng.uniform(len_lo, len_hi)), str(rng.choice(cats)), dwell)
            for s in starts]


FEED = ("social", "short_video")


# -- compulsive archetypes ----------------------------------------------------------------------

def checker(rng: np.random.Generator, d: int, days: int) -> list[Session]:
    """~150 pickups/day of 8-40 s social/short video, a third after midnight, plus three
    15-40 min sessions between 00:00 and 02:30."""
    n = int(rng.integers(135, 166))
    night = n // 3
    out = _short(rng, d, night, 0.0, 3.0, 8, 40, FEED, 15)
    out += _short(rng, d, n - night, 7.0, 23.5, 8, 40, FEED, 15)
    for k in range(3):
        out.append(Session(d * 86400 + (k * 0.8 + rng.uniform(0, 0.3)) * 3600, rng.uniform(15, 40) * 60,
                           str(rng.choice(FEED)), 60))
    return out


def night_binger(rng: np.random.Generator, d: int, days: int) -> list[Session]:
    """15-25 short daytime sessions and a 2.5-3.3 h short-video session from ~23:00 every night."""
    out = _short(rng, d, int(rng.integers(15, 26)), 8.0, 21.5, 20, 240, ("social", "messaging", "web"), 30)
    out.append(Session(d * 86400 + rng.uniform(22.9, 23.2) * 3600, rng.uniform(2.5, 3.3) * 3600,
                       "short_video", 60))
    return out


def escalator(rng: np.random.Generator, d: int, days: int) -> list[Session]:
    """10 -> 160 short sessions a day over three weeks (geometric ramp); night use in the 2nd half."""
    n = int(round(10 * 16 ** (d / max(days - 1, 1)) * rng.uniform(0.9, 1.1)))
    share_night = 0.3 if d >= days // 2 else 0.0
    night = int(n * share_night)
    out = _short(rng, d, night, 0.0, 3.5, 10, 180, FEED, 20)
    out += _short(rng, d, n - night, 7.5, 23.0, 10, 180, FEED, 20)
    return out


def mixed(rng: np.random.Generator, d: int, days: int) -> list[Session]:
    """~90 pickups (half under 15 s), two 30-60 min evening feed sessions and 40-70 min after midnight."""
    out = _short(rng, d, int(rng.integers(40, 50)), 7.0, 23.0, 4, 14, ("social", "messaging"), 6)
    out += _short(rng, d, int(rng.integers(40, 50)), 7.0, 23.0, 30, 300, FEED, 25)
    out.append(Session(d * 86400 + rng.uniform(19.0, 19.5) * 3600, rng.uniform(30, 60) * 60, "social", 60))
    out.append(Session(d * 86400 + rng.uniform(21.0, 21.5) * 3600, rng.uniform(30, 60) * 60, "short_video", 60))
    out.append(Session(d * 86400 + rng.uniform(0.2, 0.6) * 3600, rng.uniform(40, 70) * 60, "short_video", 60))
    return out


def binger(rng: np.random.Generator, d: int, days: int) -> list[Session]:
    """Binge-dominant: 4-6 feed sessions of 45-90 min from the afternoon to past midnight, few pickups."""
    out = _short(rng, d, int(rng.integers(15, 25)), 8.0, 14.0, 20, 200, ("social", "messaging"), 30)
    k = int(rng.integers(4, 7))
    t = rng.uniform(14.0, 15.0) * 3600
    for _ in range(k):
        length = rng.uniform(45, 90) * 60
        out.append(Session(d * 86400 + t, length, str(rng.choice(FEED)), 60))
        t += length + rng.uniform(10, 40) * 60
    return out


# -- healthy archetypes -------------------------------------------------------------------------

def heavy_longform(rng: np.random.Generator, d: int, days: int) -> list[Session]:
    """Four ~1 h daytime long-form sessions (web/other video, long items) and a few message checks."""
    out = _short(rng, d, int(rng.integers(6, 12)), 8.0, 21.0, 20, 90, ("messaging",), 30)
    for h in (9.0, 12.5, 16.0, 19.5):
        out.append(Session(d * 86400 + (h + rng.uniform(0, 0.5)) * 3600, rng.uniform(50, 70) * 60,
                           str(rng.choice(("web", "other"))), 420))
    return out


def weekend_gamer(rng: np.random.Generator, d: int, days: int) -> list[Session]:
    """Light on weekdays; two or three 1-2 h game sessions on Saturday and Sunday afternoons/evenings."""
    out = _short(rng, d, int(rng.integers(8, 15)), 8.0, 21.0, 20, 300, ("messaging", "social", "web"), 40)
    if d % 7 in (5, 6):
        t = rng.uniform(13.0, 14.0) * 3600
        for _ in range(int(rng.integers(2, 4))):
            length = rng.uniform(60, 120) * 60
            out.append(Session(d * 86400 + t, length, "games", 300))
            t += length + rng.uniform(30, 90) * 60
    return out


def messaging_heavy(rng: np.random.Generator, d: int, days: int) -> list[Session]:
    """80-110 messaging sessions of 20-90 s in the daytime and some social reading."""
    out = _short(rng, d, int(rng.integers(80, 111)), 8.0, 22.0, 20, 90, ("messaging",), 40)
    out += _short(rng, d, int(rng.integers(3, 7)), 12.0, 21.0, 300, 900, ("social",), 60)
    return out


def news_reader(rng: np.random.Generator, d: int, days: int) -> list[Session]:
    """40-60 short news/web visits (30 s - 3 min) spread over the waking day."""
    return _short(rng, d, int(rng.integers(40, 61)), 6.5, 22.0, 30, 180, ("news", "web"), 60)


def light(rng: np.random.Generator, d: int, days: int) -> list[Session]:
    """5-10 daytime sessions, 2-10 min each."""
    return _short(rng, d, int(rng.integers(5, 11)), 8.0, 21.0, 120, 600, ("social", "messaging", "news"), 60)


def typical(rng: np.random.Generator, d: int, days: int) -> list[Session]:
    """~70 mixed pickups (~2.5 h), mostly 07:00-23:30, rarely a little after midnight."""
    cats = ("social", "social", "short_video", "messaging", "messaging", "web", "games", "news", "other")
    out = _short(rng, d, int(rng.integers(55, 80)), 7.0, 23.5, 8, 300, cats, 45)
    if rng.random() < 0.2:
        out += _short(rng, d, 2, 0.0, 0.7, 30, 300, cats, 45)
    return out


# -- informational and minors -------------------------------------------------------------------

def night_shift(rng: np.random.Generator, d: int, days: int) -> list[Session]:
    """A healthy typical user whose waking day is shifted by ~10 h (works nights, sleeps 09-17)."""
    out = []
    for s in typical(rng, d, days):
        out.append(Session(s.start_s + 10 * 3600, s.length_s, s.category, s.dwell_s))
    return out


def teen_evening(rng: np.random.Generator, d: int, days: int) -> list[Session]:
    """A 13-15-year-old: after-school feed use and 30-60 min after 22:00 (curfew, daily cap)."""
    out = _short(rng, d, int(rng.integers(20, 30)), 15.5, 21.0, 60, 400, FEED, 30)
    out.append(Session(d * 86400 + rng.uniform(22.1, 22.5) * 3600, rng.uniform(30, 60) * 60, "short_video", 60))
    return out


COMPULSIVE: Final[dict[str, Plan]] = {
    "checker": checker, "night_binger": night_binger, "escalator": escalator, "mixed": mixed,
    "binger": binger,
}
HEALTHY: Final[dict[str, Plan]] = {
    "heavy_longform": heavy_longform, "weekend_gamer": weekend_gamer, "messaging_heavy": messaging_heavy,
    "news_reader": news_reader, "light": light, "typical": typical,
}
INFORMATIONAL: Final[dict[str, Plan]] = {"night_shift": night_shift}
MINOR: Final[dict[str, Plan]] = {"teen_evening": teen_evening}
ARCHETYPES: Final[dict[str, Plan]] = {**COMPULSIVE, **HEALTHY, **INFORMATIONAL, **MINOR}


def _layout(sessions: list[Session]) -> list[Session]:
    """Sorted, and pushed apart so that consecutive sessions are at least MIN_GAP_S apart."""
    out: list[Session] = []
    end = -1e18
    for s in sorted(sessions, key=lambda s: s.start_s):
        start = max(s.start_s, end + MIN_GAP_S)
        out.append(Session(start, s.length_s, s.category, s.dwell_s))
        end = start + s.length_s
    return out


def user_events(archetype: str, index: int, *, days: int = 21, seed: int = 0) -> Iterator[Event]:
    """The events of user ``index`` of an archetype (deterministic for the seed)."""
    plan = ARCHETYPES[archetype]
    rng = np.random.default_rng([seed, index, sum(map(ord, archetype))])
    uid = f"{archetype}-{index:02d}"
    tz = int(TZ_CHOICES[index % len(TZ_CHOICES)])
    band = "13-15" if archetype in MINOR else "adult"
    sessions: list[Session] = []
    for d in range(days):
        sessions += plan(rng, d, days)
    n = 0
    origin = DAY0 - tz * 60_000  # local midnight of day 0 in UTC ms
    for k, s in enumerate(_layout(sessions)):
        t = s.start_s
        end = s.start_s + s.length_s
        while t < end - 0.5:
            dwell = min(end - t, max(1.0, rng.exponential(s.dwell_s)))
            ts = origin + int(t * 1000)
            yield Event(user_id=uid, ts_ms=ts, type="view", event_id=f"{uid}-{n}", category=s.category,
                        dwell_ms=int(dwell * 1000), tz_offset_min=tz, age_band=band, item_id=None,
                        session_id=f"{uid}-s{k}")
            n += 1
            if rng.random() < 0.05:
                yield Event(user_id=uid, ts_ms=ts + int(dwell * 500), type="click", event_id=f"{uid}-{n}",
                            category=s.category, dwell_ms=0, tz_offset_min=tz, age_band=band, item_id=None,
                            session_id=f"{uid}-s{k}")
                n += 1
            t += dwell


def battery_events(users: int = 10, days: int = 21, seed: int = 0,
                   archetypes: tuple[str, ...] | None = None) -> list[Event]:
    out: list[Event] = []
    for a in archetypes or tuple(ARCHETYPES):
        for i in range(users):
            out.extend(user_events(a, i, days=days, seed=seed))
    return out
