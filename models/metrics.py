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
