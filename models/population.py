"""Simulated population: latent traits, behaviour parameters and questionnaire-like labels.

Generative structure (docs/research.md §9): each user has a general usage level ``need`` and, separately, a
compulsivity ``c`` (both standard normal, weakly correlated). Behaviour is driven by both; the label
only by ``c``, the user's usage and noise, so heavy-but-healthy and light-but-compulsive users exist.
Every behavioural difference of problematic users (docs/research.md §5.3) is a smooth function of ``c`` with
its own per-user noise, never of the label itself, so the classes overlap.

The label is an SAS-SV-like integer score (10–60) = 10 + 50·sigmoid(raw − k) with
``raw = A_C·c + A_U·usage_z + ε``; positive at ≥ 31 (male) / ≥ 33 (female) (Kwon 2013). ``k`` is set
from the requested prevalence on a large fixed reference sample, so the cut-off is absolute
(independent of the population size and seed) and the sample prevalence is ≈ P ± binomial noise.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray

from stream.core.events import CATEGORIES
from stream.errors import ConfigError

AGE_BANDS: Final = ("u13", "13-15", "16-17", "adult")
AGE_SHARE: Final = (0.08, 0.12, 0.10, 0.70)  # [assumption] a general-audience platform
TEEN_BANDS: Final = frozenset({"13-15", "16-17"})

# docs/research.md §9: adults median 180 min σ 0.65, teens 270 min σ 0.6; children (u13) [assumption].
MINUTES_MEDIAN: Final = (200.0, 260.0, 280.0, 180.0)
MINUTES_SIGMA: Final = (0.60, 0.60, 0.60, 0.65)
# docs/research.md §9: sessions (pickups) per day median 80 σ 0.7, teens 100.
SESSIONS_MEDIAN: Final = (70.0, 100.0, 100.0, 80.0)
SESSIONS_SIGMA: Final = 0.70
# docs/research.md §9: night (00:00-05:00) share of daily time, adults 2-4 %, teens 5-8 %.
NIGHT_BASE: Final = (0.035, 0.055, 0.065, 0.025)

# Local UTC offsets (minutes) and their weights [assumption]: Americas, Europe, Asia, Oceania.
TZ_OFFSETS: Final = (-480, -420, -360, -300, -180, 0, 60, 120, 180, 330, 420, 480, 540, 600)
TZ_WEIGHTS: Final = (0.07, 0.03, 0.05, 0.12, 0.07, 0.08, 0.16, 0.06, 0.04, 0.10, 0.05, 0.08, 0.05, 0.04)

# Minute shares by category (docs/research.md §9: social 30, messaging 20, short video 15, web 10, games 10,
# other 15 — news taken out of "other").
CATEGORY_SHARE: Final = {
    "social": 0.30, "short_video": 0.15, "messaging": 0.20, "games": 0.10, "web": 0.10,
    "news": 0.05, "other": 0.10,
}

# -- how compulsivity c shapes behaviour (per unit of c; each has its own noise) ---------------
NEED_TO_MINUTES: Final = 0.52
C_TO_MINUTES: Final = 0.20
NOISE_MINUTES: Final = 0.22
NEED_TO_SESSIONS: Final = 0.42
C_TO_SESSIONS: Final = 0.15
NOISE_SESSIONS: Final = 0.50
CHECK_WEIGHT: Final = 0.37  # with short engaged sessions: ~40 % of pickups < 15 s (Ferreira 2014)
C_TO_CHECK: Final = 0.06
NOISE_CHECK: Final = 0.035
C_TO_NIGHT_LOGIT: Final = 0.75
NOISE_NIGHT_LOGIT: Final = 0.35
GAP_SIGMA: Final = 0.50  # spread of the gap multipliers: higher = burstier re-use
C_TO_GAP_SIGMA: Final = -0.20  # compulsive users re-check more regularly (Lin 2017)
NOISE_GAP_SIGMA: Final = 0.10
TAIL_PROB: Final = 0.04  # engaged sessions drawn from the Pareto tail (> 10 min)
C_TO_TAIL: Final = 0.50  # P(session > 30 min) ×2-3 for problematic users
NOISE_TAIL: Final = 0.20
C_TO_FEED: Final = 0.35  # social + short video minute shares ×~1.5 for problematic users
NOISE_CATEGORY: Final = 0.30
CLICK_RATE: Final = 0.10
ESCALATION_C: Final = 1.3  # escalate when c + N(0, 0.7) exceeds this: about half of positives
ESCALATION_NOISE: Final = 0.7
ESCALATION_RATE: Final = (0.02, 0.05)  # per week, in session length (and half of it in count)

# -- sub-types (issue #11): single-axis extremes driven by c, and healthy hard negatives -----------
# A user whose compulsivity c exceeds SUBTYPE_C0 expresses it strongly along one axis, with strength
# e = (c - SUBTYPE_C0) x LogNormal(0, 0.3): the further c is above SUBTYPE_C0, the more extreme the
# behaviour (docs/research.md §3: checking, night use, binges, escalation). The label depends on c (+ noise),
# never on the sub-type, so the sub-type is a consequence of c like every other behaviour.
# Users below SUBTYPE_C0 draw a healthy sub-type independent of c: typical, or a hard negative
# that is heavy on one incidental axis (long-form viewing, weekend gaming, messaging, news).
# [assumption] all sizes below; they are chosen to cover the face-validity battery's archetypes.
SUBTYPES: Final = ("typical", "checking", "night", "binge", "escalating", "mixed",
                   "heavy_longform", "weekend_gamer", "messaging_heavy", "news_reader")
COMPULSIVE_SUBTYPES: Final = ("checking", "night", "binge", "escalating", "mixed")
HEALTHY_SUBTYPE_SHARE: Final = {"typical": 0.64, "heavy_longform": 0.09, "weekend_gamer": 0.09,
                                "messaging_heavy": 0.09, "news_reader": 0.09}
SUBTYPE_C0: Final = 0.9
CHECK_SPREAD: Final = 0.15
DWELL_SIGMA: Final = 0.45  # per-user item pacing (views per minute, dwell): no label signal
CATEGORY_NOISE_EXTRA: Final = 0.35  # widen the category mix beyond NOISE_CATEGORY (coverage)

# -- label ---------------------------------------------------------------------------------------
A_C: Final = 1.0
A_U: Final = 0.10
LABEL_NOISE: Final = 0.70  # issue #11: was 0.90; oracle ROC-AUC of c 0.92 (model card)
CUTOFF_MALE: Final = 31
CUTOFF_FEMALE: Final = 33
_REFERENCE_N: Final = 400_000
_REFERENCE_SEED: Final = 20_250_106


@dataclass(frozen=True)
class Population:
    """One simulated population; arrays are indexed by user number."""

    seed: int
    days: int
    prevalence: float
    user_id: list[str]
    age: NDArray[np.int64]  # index into AGE_BANDS
    sex: NDArray[np.int64]  # 0 = male, 1 = female
    tz_offset_min: NDArray[np.int64]
    need: NDArray[np.float64]
    compulsivity: NDArray[np.float64]
    minutes_day: NDArray[np.float64]  # expected active minutes per day (weekly average)
    sessions_day: NDArray[np.float64]  # expected sessions per day (weekly average)
    check_weight: NDArray[np.float64]
    night_share: NDArray[np.float64]
    gap_sigma: NDArray[np.float64]
    tail_prob: NDArray[np.float64]
    category_weight: NDArray[np.float64]  # [N, len(CATEGORIES)], rows sum to 1
    click_rate: NDArray[np.float64]
    chronotype_h: NDArray[np.int64]  # shift of the daytime profile, hours
    escalating: NDArray[np.bool_]
    escalation_onset_day: NDArray[np.int64]  # -1 when not escalating
    escalation_rate_wk: NDArray[np.float64]  # 0 when not escalating
    subtype: NDArray[np.int64]  # index into SUBTYPES
    strength: NDArray[np.float64]  # expression of the compulsive sub-type (0 for healthy sub-types)
    weekend_factor: NDArray[np.float64]  # extra weekend multiplier of session length (1 = none)
    dwell_mult: NDArray[np.float64]  # per-user multiplier of the time on screen per item
    score: NDArray[np.int64]  # SAS-SV-like 10..60
    label: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.user_id)

    def age_band(self, i: int) -> str:
        return AGE_BANDS[int(self.age[i])]


@dataclass(frozen=True)
class _Latent:
    age: NDArray[np.int64]
    sex: NDArray[np.int64]
    need: NDArray[np.float64]
    c: NDArray[np.float64]
    log_minutes: NDArray[np.float64]
    raw: NDArray[np.float64]  # label latent without the offset k


def _draw_latent(rng: np.random.Generator, n: int) -> _Latent:
    age = rng.choice(len(AGE_BANDS), size=n, p=AGE_SHARE).astype(np.int64)
    sex = rng.integers(0, 2, size=n).astype(np.int64)
    need = rng.standard_normal(n)
    # Slight correlation with need, slightly higher in teens (youth PSU prevalence, docs/research.md §5.2).
    teen = np.isin(age, [1, 2])
    c = 0.15 * need + math.sqrt(1 - 0.15**2) * rng.standard_normal(n) + 0.15 * teen
    sig = np.asarray(MINUTES_SIGMA)[age]
    # Coefficients are scaled so that the total spread across users is the age group's sigma.
    scale = sig / math.sqrt(NEED_TO_MINUTES**2 + C_TO_MINUTES**2 + NOISE_MINUTES**2)
    usage_z = NEED_TO_MINUTES * need + C_TO_MINUTES * c + NOISE_MINUTES * rng.standard_normal(n)
    log_minutes = np.log(np.asarray(MINUTES_MEDIAN)[age]) + scale * usage_z
    usage_std = usage_z / math.sqrt(NEED_TO_MINUTES**2 + C_TO_MINUTES**2 + NOISE_MINUTES**2)
    raw = A_C * c + A_U * usage_std + LABEL_NOISE * rng.standard_normal(n)
    return _Latent(age, sex, need, c, log_minutes, raw)


def _cut_logit(cutoff: int) -> float:
    # Integer scores: score >= cutoff  <=>  continuous score >= cutoff - 0.5.
    p = (cutoff - 0.5 - 10.0) / 50.0
    return math.log(p / (1 - p))


@lru_cache(maxsize=32)
def label_offset(prevalence: float) -> float:
    """The offset k for which a fraction ``prevalence`` of the reference population is positive."""
    lat = _draw_latent(np.random.default_rng(_REFERENCE_SEED), _REFERENCE_N)
    cut = np.where(lat.sex == 0, _cut_logit(CUTOFF_MALE), _cut_logit(CUTOFF_FEMALE))
    return float(np.quantile(lat.raw - cut, 1.0 - prevalence))


def draw_population(n_users: int, days: int, seed: int, prevalence: float = 0.13) -> Population:
    """Draw ``n_users`` users (traits, behaviour parameters, labels), deterministic for ``seed``."""
    if n_users < 1:
        raise ValueError("n_users must be >= 1")
    if not 0.0 < prevalence < 1.0:
        raise ValueError("prevalence must be in (0, 1)")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    lat = _draw_latent(rng, n_users)
    n, c, age = lat.need, lat.c, lat.age

    k = label_offset(round(prevalence, 6))
    cont = 10.0 + 50.0 / (1.0 + np.exp(-(lat.raw - k)))
    score = np.floor(cont + 0.5).astype(np.int64)
    cutoff = np.where(lat.sex == 0, CUTOFF_MALE, CUTOFF_FEMALE)
    label = (score >= cutoff).astype(np.int64)

    minutes = np.exp(lat.log_minutes)
    ls = SESSIONS_SIGMA / math.sqrt(NEED_TO_SESSIONS**2 + C_TO_SESSIONS**2 + NOISE_SESSIONS**2)
    sessions = np.asarray(SESSIONS_MEDIAN)[age] * np.exp(
        ls * (NEED_TO_SESSIONS * n + C_TO_SESSIONS * c + NOISE_SESSIONS * rng.standard_normal(n_users)))
    sessions = np.clip(sessions, 8.0, 600.0)
    check = np.clip(CHECK_WEIGHT + C_TO_CHECK * c + NOISE_CHECK * rng.standard_normal(n_users), 0.15, 0.70)
    # Domain randomisation (issue #11): a wide per-user checking habit (0.03-0.8), label-free, so that
    # users with few brief pickups (and many) exist in every class.
    check = np.clip(check + CHECK_SPREAD * np.random.default_rng(np.random.SeedSequence([seed, 3])).standard_normal(
        n_users), 0.03, 0.80)
    base = np.asarray(NIGHT_BASE)[age]
    night_logit = np.log(base / (1 - base)) + C_TO_NIGHT_LOGIT * c + NOISE_NIGHT_LOGIT * rng.standard_normal(n_users)
    night = 1.0 / (1.0 + np.exp(-night_logit))
    gap_sigma = np.clip(GAP_SIGMA + C_TO_GAP_SIGMA * c + NOISE_GAP_SIGMA * rng.standard_normal(n_users), 0.1, 1.5)
    tail = np.clip(TAIL_PROB * np.exp(C_TO_TAIL * c + NOISE_TAIL * rng.standard_normal(n_users)), 0.005, 0.20)

    logw = np.log(np.array([CATEGORY_SHARE[k_] for k_ in CATEGORIES]))[None, :] + NOISE_CATEGORY * rng.standard_normal(
        (n_users, len(CATEGORIES)))
    feed = np.array([k_ in ("social", "short_video") for k_ in CATEGORIES])
    logw = logw + (C_TO_FEED * c)[:, None] * feed[None, :]
    teen_or_child = age < 3
    games = np.array([k_ == "games" for k_ in CATEGORIES])
    logw = logw + (0.4 * teen_or_child)[:, None] * games[None, :]  # [assumption] young users game more
    w = np.exp(logw)
    w /= w.sum(axis=1, keepdims=True)

    click = CLICK_RATE * np.exp(0.3 * rng.standard_normal(n_users))
    chrono = np.clip(np.rint(rng.normal(0.0, 1.0, n_users) + 0.8 * (age < 3)), -2, 3).astype(np.int64)
    escalating = (c + ESCALATION_NOISE * rng.standard_normal(n_users)) > ESCALATION_C
    onset = np.where(escalating, rng.integers(0, max(1, days // 2), n_users), -1).astype(np.int64)
    rate = np.where(escalating, rng.uniform(*ESCALATION_RATE, n_users), 0.0)
    tz = rng.choice(np.asarray(TZ_OFFSETS), size=n_users, p=np.asarray(TZ_WEIGHTS) / sum(TZ_WEIGHTS))

    # -- sub-types (drawn from a separate stream so the traits above keep their values) ----------
    srng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    e = np.maximum(c - SUBTYPE_C0, 0.0) * np.exp(0.3 * srng.standard_normal(n_users))
    comp = e > 0
    sub = np.zeros(n_users, dtype=np.int64)
    sub[comp] = [SUBTYPES.index(k) for k in srng.choice(COMPULSIVE_SUBTYPES, size=int(comp.sum()))]
    hs = list(HEALTHY_SUBTYPE_SHARE)
    hp = np.asarray([HEALTHY_SUBTYPE_SHARE[k] for k in hs])
    sub[~comp] = [SUBTYPES.index(k) for k in srng.choice(hs, size=int((~comp).sum()), p=hp / hp.sum())]
    e = np.where(comp, e, 0.0)
    name = np.asarray(SUBTYPES)[sub]
    cat_idx = {k_: i for i, k_ in enumerate(CATEGORIES)}
    logw = np.log(w) + CATEGORY_NOISE_EXTRA * srng.standard_normal(w.shape)
    u = srng.uniform(0.0, 1.0, n_users)  # per-user size of a healthy sub-type's deviation
    weekend_factor = np.ones(n_users)

    def bump(mask: NDArray[np.bool_], cats: tuple[str, ...], by: NDArray[np.float64] | float) -> None:
        for k_ in cats:
            logw[:, cat_idx[k_]] += np.where(mask, by, 0.0)

    k = name == "checking"  # many brief pickups of feeds/messages, more regular, some at night
    sessions = np.where(k, sessions * np.exp(0.55 * e), sessions)
    check = np.where(k, np.minimum(check + 0.10 * e, 0.80), check)
    gap_sigma = np.where(k, np.maximum(gap_sigma - 0.10 * e, 0.1), gap_sigma)
    night_logit = np.where(k, night_logit + 0.5 * e, night_logit)
    bump(k, ("social", "short_video"), 0.3 * e)
    k = name == "night"  # use moves into 00:00-05:00, longer sessions there
    night_logit = np.where(k, night_logit + 1.3 * e, night_logit)
    tail = np.where(k, np.minimum(tail * np.exp(0.4 * e), 0.3), tail)
    minutes = np.where(k, minutes * np.exp(0.2 * e), minutes)
    sessions = np.where(k, sessions * np.exp(-0.35 * e), sessions)  # single-axis: not also a checker
    check = np.where(k, np.maximum(check - 0.1 * e, 0.03), check)
    bump(k, ("short_video",), 0.4 * e)
    k = name == "binge"  # long feed sessions, late evening
    tail = np.where(k, np.minimum(tail * np.exp(1.0 * e), 0.5), tail)
    minutes = np.where(k, minutes * np.exp(0.35 * e), minutes)
    night_logit = np.where(k, night_logit + 0.4 * e, night_logit)
    chrono = np.where(k, np.minimum(chrono + 1, 3), chrono)
    sessions = np.where(k, sessions * np.exp(-0.4 * e), sessions)  # fewer, longer sessions
    check = np.where(k, np.maximum(check - 0.1 * e, 0.03), check)
    bump(k, ("social", "short_video"), 0.4 * e)
    k = name == "escalating"  # strong tolerance trend from an early onset, night use creeping in
    escalating = escalating | k
    onset = np.where(k, srng.integers(0, max(1, days // 3), n_users), onset).astype(np.int64)
    rate = np.where(k, np.minimum(0.08 + 0.25 * e, 0.6), rate)
    night_logit = np.where(k, night_logit + 0.4 * e, night_logit)
    k = name == "mixed"  # a little of everything
    sessions = np.where(k, sessions * np.exp(0.25 * e), sessions)
    check = np.where(k, np.minimum(check + 0.05 * e, 0.75), check)
    night_logit = np.where(k, night_logit + 0.7 * e, night_logit)
    tail = np.where(k, np.minimum(tail * np.exp(0.5 * e), 0.4), tail)
    minutes = np.where(k, minutes * np.exp(0.2 * e), minutes)
    # healthy hard negatives: heavy on one axis that carries no risk by itself
    k = name == "heavy_longform"  # few, long daytime sessions of web / other (long-form video)
    minutes = np.where(k, minutes * np.exp(0.3 + 0.7 * u), minutes)
    sessions = np.where(k, sessions * np.exp(-0.5 - 0.6 * u), sessions)
    tail = np.where(k, np.minimum(tail * 4.0, 0.4), tail)
    night_logit = np.where(k, night_logit - 0.5, night_logit)
    bump(k, ("web", "other"), 1.2)
    k = name == "weekend_gamer"
    weekend_factor = np.where(k, 1.8 + 1.2 * u, weekend_factor)
    bump(k, ("games",), 1.5)
    k = name == "messaging_heavy"  # many short daytime conversations
    sessions = np.where(k, sessions * np.exp(0.4 + 0.6 * u), sessions)
    check = np.where(k, np.minimum(check + 0.08, 0.7), check)
    night_logit = np.where(k, night_logit - 0.5, night_logit)
    bump(k, ("messaging",), 1.4)
    k = name == "news_reader"  # many short daytime visits of news / web
    sessions = np.where(k, sessions * np.exp(0.2 + 0.5 * u), sessions)
    minutes = np.where(k, minutes * np.exp(-0.3 * u), minutes)
    night_logit = np.where(k, night_logit - 0.5, night_logit)
    bump(k, ("news", "web"), 1.5)

    sessions = np.clip(sessions, 8.0, 800.0)
    night = 1.0 / (1.0 + np.exp(-night_logit))
    w = np.exp(logw)
    w /= w.sum(axis=1, keepdims=True)
    dwell_mult = np.exp(DWELL_SIGMA * srng.standard_normal(n_users))

    width = max(6, len(str(n_users - 1)))
    return Population(
        seed=seed, days=days, prevalence=prevalence,
        user_id=[f"u{i:0{width}d}" for i in range(n_users)],
        age=age, sex=lat.sex, tz_offset_min=tz.astype(np.int64), need=n, compulsivity=c,
        minutes_day=minutes, sessions_day=sessions, check_weight=check, night_share=night,
        gap_sigma=gap_sigma, tail_prob=tail, category_weight=w, click_rate=click,
        chronotype_h=chrono, escalating=escalating, escalation_onset_day=onset, escalation_rate_wk=rate,
        subtype=sub, strength=e, weekend_factor=weekend_factor, dwell_mult=dwell_mult,
        score=score, label=label,
    )


LABEL_COLUMNS: Final = (
    "user_id", "label", "score", "age_band", "sex", "tz_offset_min", "need", "compulsivity",
    "minutes_day", "sessions_day", "night_share", "check_weight", "escalating",
    "escalation_onset_day", "escalation_onset_ms", "escalation_rate_wk", "subtype", "strength",
)


def local_midnight_ms(start: date, day: int, tz_offset_min: int) -> int:
    """Epoch ms of local midnight ``day`` days after ``start`` for a user at ``tz_offset_min``."""
    d0 = datetime(start.year, start.month, start.day, tzinfo=timezone.utc)
    return int(d0.timestamp() * 1000) + day * 86_400_000 - tz_offset_min * 60_000


def write_labels(pop: Population, path: str | Path, start: date) -> None:
    """``labels.csv``: the label and score, plus latent traits (for analysis, never for the model).

    ``escalation_onset_ms`` is the local midnight (as epoch ms) of the day escalation begins.
    """
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(LABEL_COLUMNS)
        for i, uid in enumerate(pop.user_id):
            onset = int(pop.escalation_onset_day[i])
            onset_ms = local_midnight_ms(start, onset, int(pop.tz_offset_min[i])) if onset >= 0 else -1
            w.writerow([
                uid, int(pop.label[i]), int(pop.score[i]), pop.age_band(i), "mf"[int(pop.sex[i])],
                int(pop.tz_offset_min[i]), f"{pop.need[i]:.4f}", f"{pop.compulsivity[i]:.4f}",
                f"{pop.minutes_day[i]:.1f}", f"{pop.sessions_day[i]:.1f}", f"{pop.night_share[i]:.4f}",
                f"{pop.check_weight[i]:.4f}", int(pop.escalating[i]), onset, onset_ms,
                f"{pop.escalation_rate_wk[i]:.4f}", SUBTYPES[int(pop.subtype[i])], f"{pop.strength[i]:.4f}",
            ])


@dataclass(frozen=True)
class Labels:
    """What evaluation reads back from ``labels.csv``."""

    label: dict[str, int]
    escalation_onset_ms: dict[str, int]  # only escalating users (with a known onset)
    age_band: dict[str, str]
    subtype: dict[str, str] = field(default_factory=dict)  # when labels.csv has the column
    compulsivity: dict[str, float] = field(default_factory=dict)  # latent trait (oracle analyses only)

    def users(self) -> list[str]:
        return sorted(self.label)


def read_labels(path: str | Path) -> Labels:
    """Read ``labels.csv``; only ``user_id`` and ``label`` are required.

    Raises:
        ConfigError: a required column is missing or a label is not 0/1 (also a ValueError).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"labels file {p} does not exist")
    label: dict[str, int] = {}
    onset: dict[str, int] = {}
    band: dict[str, str] = {}
    sub: dict[str, str] = {}
    comp: dict[str, float] = {}
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or ())
        if not {"user_id", "label"} <= cols:
            raise ConfigError(f"{p}: needs columns user_id and label, has {sorted(cols)}")
        for row in reader:
            v = row["label"].strip()
            if v not in ("0", "1"):
                raise ConfigError(f"{p}: label {v!r} of user {row['user_id']!r} is not 0 or 1")
            uid = row["user_id"]
            label[uid] = int(v)
            if row.get("escalating", "0").strip() == "1" and int(row.get("escalation_onset_ms") or -1) >= 0:
                onset[uid] = int(row["escalation_onset_ms"])
            if row.get("age_band"):
                band[uid] = row["age_band"]
            if row.get("subtype"):
                sub[uid] = row["subtype"]
            if row.get("compulsivity"):
                comp[uid] = float(row["compulsivity"])
    return Labels(label, onset, band, sub, comp)
