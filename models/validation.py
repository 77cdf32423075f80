"""``riskstream simulate --validate``: simulated statistics beside the docs/research.md §5 / §9 targets."""

from __future__ import annotations

from datetime import date

import numpy as np
from numpy.typing import NDArray

from models.population import AGE_BANDS, Population
from models.simulate import SimStats, hist_median
from stream.core.events import CATEGORIES


def _ratio(a: NDArray[np.float64], y: NDArray[np.int64]) -> float:
    pos, neg = a[y == 1], a[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(np.median(pos) / max(np.median(neg), 1e-9))


def validation_rows(pop: Population, st: SimStats, start: date) -> list[tuple[str, str, str]]:
    """(statistic, simulated, target) rows."""
    y = pop.label
    minutes = st.minutes_per_day
    rows: list[tuple[str, str, str]] = []
    adult = pop.age == AGE_BANDS.index("adult")
    teen = np.isin(pop.age, [AGE_BANDS.index("13-15"), AGE_BANDS.index("16-17")])
    child = pop.age == AGE_BANDS.index("u13")

    def med_sd(a: NDArray[np.float64]) -> str:
        a = a[a > 0]
        return f"median {np.median(a):.0f}, sd(log) {np.std(np.log(a)):.2f}" if len(a) else "n/a"

    rows.append(("users / days / events", f"{len(pop)} / {pop.days} / {st.events:,}", ""))
    rows.append(("events per user-day", f"{st.events / len(pop) / pop.days:.0f}", "100-400 (tractable)"))
    rows.append(("prevalence (label 1)", f"{y.mean():.3f}", f"{pop.prevalence:.3f} (requested)"))
    rows.append(("sessions (pickups) / day, adults", med_sd(st.sessions_per_day[adult]), "median 80, sd 0.7"))
    rows.append(("sessions (pickups) / day, teens", med_sd(st.sessions_per_day[teen]), "median 100"))
    rows.append(("share of sessions < 15 s", f"{st.short15 / max(st.sessions, 1):.3f}", "~0.40 (Ferreira 2014)"))
    rows.append(("session median, LSApp rule (5-min gap)", f"{hist_median(st.merged_hist):.0f} s",
                 "106 s (LSApp; needs fewer, sparser pickups)"))
    rows.append(("session median, pickups (30-s gap)", f"{hist_median(st.len_hist):.0f} s", "(no source)"))
    rows.append(("daily active minutes, adults", med_sd(minutes[adult]), "median 180, sd 0.65"))
    rows.append(("daily active minutes, teens 13-17", med_sd(minutes[teen]), "median 270, sd 0.6"))
    rows.append(("daily active minutes, u13", med_sd(minutes[child]), "median 200 [assumption]"))
    dm = st.day_minutes
    ok = (dm > 0).all(axis=1)
    day_sd = float(np.median(np.std(np.log(dm[ok]), axis=1))) if ok.any() else float("nan")
    rows.append(("day-to-day sd(log minutes), median user", f"{day_sd:.2f}", "0.3-0.4"))
    weekend = ((np.arange(pop.days) + start.weekday()) % 7) >= 5
    if weekend.any() and (~weekend).any():
        wr = dm[:, weekend].mean(axis=1) / np.maximum(dm[:, ~weekend].mean(axis=1), 1e-9)
        rows.append(("weekend / weekday minutes, median user", f"{np.median(wr):.2f}", "1.1-1.3"))
    ns = st.night_share
    rows.append(("night share 00-05, healthy adults", f"{np.median(ns[adult & (y == 0)]):.3f}", "0.02-0.04"))
    rows.append(("night share 00-05, healthy teens", f"{np.median(ns[teen & (y == 0)]):.3f}", "0.05-0.08"))
    rows.append(("night share 00-05, positives", f"{np.median(ns[y == 1]):.3f}" if (y == 1).any() else "n/a",
                 "0.10-0.20"))
    rows.append(("minutes, positive / negative medians", f"{_ratio(minutes, y):.2f}", "1.6-2.0 (Tossell ~2)"))
    rows.append(("sessions, positive / negative medians", f"{_ratio(st.sessions_per_day, y):.2f}", "1.3-2.0"))
    rows.append(("waking gap median (< 4 h), median user", f"{np.nanmedian(st.gap_median_s) / 60:.1f} min",
                 "8-10 min"))
    rows.append(("burstiness of gaps, median user", f"{np.median(st.burstiness):.2f}", "0.2-0.4"))
    share = st.cat_ms / max(st.cat_ms.sum(), 1.0)
    rows.append(("minute shares " + "/".join(CATEGORIES), "/".join(f"{v:.2f}" for v in share),
                 "0.30/0.15/0.20/0.10/0.10/0.05/0.10"))
    esc = pop.escalating
    rows.append(("escalating users: positives / negatives",
                 f"{esc[y == 1].mean():.2f} / {esc[y == 0].mean():.2f}" if (y == 1).any() else "n/a",
                 "~0.5 of positives"))
    return rows


def validation_table(pop: Population, st: SimStats, start: date) -> str:
    rows = validation_rows(pop, st, start)
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    head = f"{'statistic':{w0}}  {'simulated':{w1}}  docs/research.md §9.3 targets"
    return "\n".join([head, "-" * len(head)] + [f"{a:{w0}}  {b:{w1}}  {c}" for a, b, c in rows])
