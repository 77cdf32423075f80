"""Classification metrics shared by training and evaluation (numpy + scikit-learn)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

ECE_BINS = 10


def expected_calibration_error(y: NDArray[np.int64], p: NDArray[np.floating], bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width probability bins: Σ_b (n_b / N)·|mean(p)_b − mean(y)_b|."""
    if len(y) == 0:
        return float("nan")
    idx = np.minimum((np.asarray(p, dtype=np.float64) * bins).astype(np.int64), bins - 1)
    n = np.bincount(idx, minlength=bins).astype(np.float64)
    sp = np.bincount(idx, weights=p, minlength=bins)
    sy = np.bincount(idx, weights=y, minlength=bins)
    ok = n > 0
    return float(np.sum(np.abs(sp[ok] - sy[ok])) / len(y))


def reliability(y: NDArray[np.int64], p: NDArray[np.floating], bins: int = ECE_BINS) -> tuple[
        NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Per bin: mean predicted probability, observed positive rate, count (empty bins are NaN)."""
    idx = np.minimum((np.asarray(p, dtype=np.float64) * bins).astype(np.int64), bins - 1)
    n = np.bincount(idx, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mp = np.bincount(idx, weights=p, minlength=bins) / n
        my = np.bincount(idx, weights=y, minlength=bins) / n
    return mp, my, n


def f1_at(y: NDArray[np.int64], p: NDArray[np.floating], threshold: float) -> tuple[float, float, float]:
    """(precision, recall, F1) of ``p >= threshold``."""
    pred = p >= threshold
    tp = float(np.sum(pred & (y == 1)))
    fp = float(np.sum(pred & (y == 0)))
    fn = float(np.sum(~pred & (y == 1)))
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return prec, rec, f1


@dataclass(frozen=True)
class Scores:
    """Threshold-free quality of probabilities ``p`` for labels ``y``."""

    n: int
    positives: int
    roc_auc: float
    pr_auc: float
    log_loss: float
    brier: float
    ece: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def score(y: NDArray[np.int64], p: NDArray[np.floating]) -> Scores:
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    p64 = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    both = 0 < int(y.sum()) < len(y)
    return Scores(
        n=len(y),
        positives=int(y.sum()),
        roc_auc=float(roc_auc_score(y, p64)) if both else float("nan"),
        pr_auc=float(average_precision_score(y, p64)) if both else float("nan"),
        log_loss=float(log_loss(y, p64, labels=[0, 1])),
        brier=float(brier_score_loss(y, p64)),
        ece=expected_calibration_error(y, p64),
    )


# ---------------------------------------------------------------------------------------------
# Day-level decision rules over day-end scores (training's thresholds and evaluation's tables)


def day_series(user: NDArray[np.str_], day: NDArray[np.int64], s: NDArray[np.floating]) -> dict[str, NDArray[np.float64]]:
    """Each user's scores in day order (one value per day that has one)."""
    order = np.lexsort((day, user))
    u, v = user[order], np.asarray(s, dtype=np.float64)[order]
    cuts = np.nonzero(u[1:] != u[:-1])[0] + 1
    return {str(us[0]): vs for us, vs in zip(np.split(u, cuts), np.split(v, cuts)) if len(us)}


def smooth_days(v: NDArray[np.float64], rule: str) -> NDArray[np.float64]:
    """The day-level evidence a rule thresholds: ``day_end`` (the day-end score itself),
    ``mean:k`` (the mean of the last k day-end scores; NaN until k are known, as the stream's
    ``evidence = "day_mean"`` policy decides nothing before), or ``of7:k`` (the k-th largest of the
    last 7: a score above t on >= k of 7 days <=> that value >= t)."""
    if rule == "day_end":
        return v
    kind, k = rule.split(":")
    n = int(k)
    out = np.full(len(v), np.nan)
    for i in range(len(v)):
        if kind == "mean":
            if i >= n - 1:
                out[i] = float(np.mean(v[i - n + 1: i + 1]))
        else:
            w = v[max(0, i - 6): i + 1]
            out[i] = np.sort(w)[::-1][n - 1] if len(w) >= n else 0.0
    return out


def rule_entries(series: NDArray[np.float64], enter: float, exit_: float) -> list[int]:
    """Day indices at which a series enters (from below ``exit_`` to >= ``enter``); NaN = no
    evidence (neither enters nor leaves)."""
    on, days = False, []
    for i, x in enumerate(series.tolist()):
        if not on and x >= enter:
            on = True
            days.append(i)
        elif on and x < exit_:
            on = False
    return days
