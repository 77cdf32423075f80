"""Evaluation of a model on a labelled population: row metrics, a volume baseline, stream figures.

One run of the offline detector (``stream.offline``: memory windows, the packaged policy with the
model's thresholds, the ONNX scorer) over the log gives both

* the **rows**: per user and local day the day-end evaluation, for users with at least
  ``min_history_days`` of history (what the ML layer scores); every row-level metric is over these
  rows against the user's label: ROC-AUC, PR-AUC (average precision), precision/recall/F1 at the
  enter thresholds, expected calibration error (10 equal-width bins);
* the **alerts**, exactly as ``riskstream score`` would publish them: detection delay of positive
  users (days from the first tick the ML layer scored them — or from escalation onset, if later —
  to their first ``ml_risk`` elevated/high alert) and false ``ml_risk`` alerts (elevated/high, to
  healthy users) per 100 healthy user-weeks of scored time.

The volume-only baseline is a logistic regression on log active minutes and log sessions per day
(7-day window), cross-validated by user (5 folds) on the same rows: it shows how far volume alone
separates the classes in this population.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from models.dataset import ROW_DAY_END, Extract, extract
from models.metrics import Scores, f1_at, reliability, score
from models.population import Labels, read_labels
from stream.core.alerts import LEVEL_ELEVATED, LEVEL_HIGH
from stream.core.features import FEATURE_INDEX, FEATURE_NAMES, FEATURE_SPEC_HASH
from stream.core.policy import load_policy_config
from stream.core.scoring import OnnxScorer
from stream.errors import RiskstreamError

DAY_MS: Final = 86_400_000


class EvaluationError(RiskstreamError):
    """The log and labels give nothing to evaluate."""

VOLUME_FEATURES: Final = ("active_min_day_7d", "sessions_day_7d")


@dataclass
class StreamFigures:
    positives: int  # positive users the ML layer scored
    detected: int
    share_detected: float
    median_delay_days: float | None
    delays_days: list[float]
    escalating_positives: int
    escalating_detected: int
    escalating_median_delay_days: float | None
    healthy_users: int
    healthy_user_weeks: float
    false_alerts: int
    false_per_100_user_weeks: float
    healthy_users_alerted: int
    alerted_users: int
    alerted_positive_share: float
    alerts_by_level: dict[str, int]
    rule_alerts: dict[str, int]


@dataclass
class EvalResult:
    model: dict[str, Any]
    users: int
    positives: int
    events: int
    rows: int
    scores: Scores
    at_elevated: tuple[float, float, float]  # precision, recall, F1
    at_high: tuple[float, float, float]
    volume_roc_auc: float
    stream: StreamFigures
    timing_s: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        th = self.model["thresholds"]
        s = self.stream
        pe, re_, fe = self.at_elevated
        ph, rh, fh = self.at_high
        delay = f"{s.median_delay_days:.1f}" if s.median_delay_days is not None else "n/a"
        esc = f"{s.escalating_median_delay_days:.1f}" if s.escalating_median_delay_days is not None else "n/a"
        return [
            f"ROC-AUC: {self.scores.roc_auc:.3f}",
            f"PR-AUC: {self.scores.pr_auc:.3f}  (prevalence {self.positives / max(self.users, 1):.3f})",
            f"F1 at elevated_enter {th['elevated_enter']:.2f}: {fe:.3f}  (precision {pe:.3f}, recall {re_:.3f})",
            f"F1 at high_enter {th['high_enter']:.2f}: {fh:.3f}  (precision {ph:.3f}, recall {rh:.3f})",
            f"ECE: {self.scores.ece:.3f}",
            f"Volume-only baseline ROC-AUC: {self.volume_roc_auc:.3f}",
            f"Detected positives: {s.detected}/{s.positives} ({s.share_detected:.1%}), "
            f"median delay {delay} days from eligibility",
            f"Escalating positives: {s.escalating_detected}/{s.escalating_positives} detected, "
            f"median delay {esc} days from onset (or eligibility, if later)",
            f"False ml_risk alerts: {s.false_alerts} in {s.healthy_user_weeks:.0f} healthy user-weeks = "
            f"{s.false_per_100_user_weeks:.2f} per 100 user-weeks ({s.healthy_users_alerted}/{s.healthy_users} "
            f"healthy users alerted)",
            f"users: {self.users} ({self.positives} positive), day-end rows: {self.rows}, events: {self.events}",
        ]


def volume_baseline_auc(x: NDArray[np.float32], y: NDArray[np.int64], users: NDArray[np.str_]) -> tuple[
        float, NDArray[np.float64]]:
    """Out-of-fold ROC-AUC of a logistic regression on log volume (grouped by user)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    cols = [FEATURE_INDEX[n] for n in VOLUME_FEATURES]
    v = np.log1p(np.maximum(x[:, cols].astype(np.float64), 0.0))
    oof = np.zeros(len(y))
    folds = min(5, len(set(users.tolist())))
    if folds < 2 or y.min() == y.max():
        return float("nan"), oof
    for tr, te in GroupKFold(n_splits=folds).split(v, y, users):
        if y[tr].min() == y[tr].max():
            oof[te] = y[tr].mean()
            continue
        oof[te] = LogisticRegression(max_iter=1000).fit(v[tr], y[tr]).predict_proba(v[te])[:, 1]
    return float(roc_auc_score(y, oof)), oof


def stream_figures(ex: Extract, labels: Labels) -> StreamFigures:
    first_alert: dict[str, int] = {}
    by_level: dict[str, int] = {}
    false_alerts = 0
    healthy_alerted: set[str] = set()
    for a in ex.alerts:
        by_level[a.level] = by_level.get(a.level, 0) + 1
        if a.level not in (LEVEL_ELEVATED, LEVEL_HIGH):
            continue
        lab = labels.label.get(a.user_id)
        if lab is None:
            continue
        if a.user_id not in first_alert or a.event_time_ms < first_alert[a.user_id]:
            first_alert[a.user_id] = a.event_time_ms
        if lab == 0:
            false_alerts += 1
            healthy_alerted.add(a.user_id)
    eligible = ex.span.first_eligible_ms
    pos = [u for u in eligible if labels.label.get(u) == 1]
    neg = [u for u in eligible if labels.label.get(u) == 0]
    delays = sorted((first_alert[u] - eligible[u]) / DAY_MS for u in pos if u in first_alert)
    esc = [u for u in pos if u in labels.escalation_onset_ms]
    esc_delays = sorted(max(0.0, (first_alert[u] - max(eligible[u], labels.escalation_onset_ms[u])) / DAY_MS)
                        for u in esc if u in first_alert)
    weeks = sum(max(0, ex.span.last_tick_ms[u] - eligible[u]) for u in neg) / (7 * DAY_MS)
    alerted = [u for u in first_alert if u in labels.label]
    return StreamFigures(
        positives=len(pos), detected=len(delays),
        share_detected=len(delays) / len(pos) if pos else float("nan"),
        median_delay_days=float(np.median(delays)) if delays else None,
        delays_days=[round(d, 3) for d in delays],
        escalating_positives=len(esc), escalating_detected=len(esc_delays),
        escalating_median_delay_days=float(np.median(esc_delays)) if esc_delays else None,
        healthy_users=len(neg), healthy_user_weeks=weeks, false_alerts=false_alerts,
        false_per_100_user_weeks=100.0 * false_alerts / weeks if weeks else float("nan"),
        healthy_users_alerted=len(healthy_alerted), alerted_users=len(alerted),
        alerted_positive_share=(sum(labels.label[u] for u in alerted) / len(alerted)) if alerted else float("nan"),
        alerts_by_level=dict(sorted(by_level.items())), rule_alerts=dict(sorted(ex.rule_alerts.items())),
    )


def evaluate(events: str | Path, labels_path: str | Path, model_path: str | Path, *,
             report_dir: str | Path | None = None, workers: int | None = None, seed: int = 0,
             log: Callable[[str], None] = lambda _: None) -> EvalResult:
    """Evaluate ``model_path`` on a labelled log; write a report when ``report_dir`` is given.

    Raises:
        ModelContractError: the model does not match the running feature spec.
        FileNotFoundError: the events, labels or model file is missing.
        EvaluationError: no labelled user has enough history to be scored.
    """
    t0 = time.perf_counter()
    labels = read_labels(labels_path)
    scorer = OnnxScorer(model_path, expected_spec_hash=FEATURE_SPEC_HASH, expected_feature_names=FEATURE_NAMES)
    info = scorer.info
    policy = load_policy_config(None).with_model_thresholds(info.thresholds)
    log(f"running the offline detector with {info.model_version} …")
    ex = extract(events, seed=seed, policy=policy, model_path=model_path, workers=workers)
    rows = ex.rows
    keep = ((rows.kind == ROW_DAY_END) & (rows.history_days >= policy.ml.min_history_days)
            & np.array([u in labels.label for u in rows.user_id], dtype=bool))
    rows = rows.select(keep)
    if len(rows) == 0:
        raise EvaluationError(f"no labelled user of {events} has {policy.ml.min_history_days} days of history; "
                         "check --labels and the length of the log")
    y = np.array([labels.label[u] for u in rows.user_id], dtype=np.int64)
    p = scorer.score(rows.x).astype(np.float64)
    scores = score(y, p)
    th = policy.ml
    vol_auc, vol_p = volume_baseline_auc(rows.x, y, rows.user_id)
    users = sorted(set(rows.user_id.tolist()))
    result = EvalResult(
        model={"file": Path(model_path).name, "model_version": info.model_version,
               "trained_at": info.trained_at, "kind": info.metadata.get("model_kind", "?"),
               "thresholds": {"elevated_enter": th.elevated_enter, "elevated_exit": th.elevated_exit,
                              "high_enter": th.high_enter, "high_exit": th.high_exit},
               "persistence_s": th.persistence_s, "cooldown_s": th.cooldown_s,
               "min_history_days": th.min_history_days, "sha256": info.sha256,
               "size_bytes": Path(model_path).stat().st_size},
        users=len(users), positives=sum(labels.label[u] for u in users), events=ex.events, rows=len(rows),
        scores=scores, at_elevated=f1_at(y, p, th.elevated_enter), at_high=f1_at(y, p, th.high_enter),
        volume_roc_auc=vol_auc, stream=stream_figures(ex, labels),
        timing_s={"detector": round(ex.seconds, 1), "total": round(time.perf_counter() - t0, 1)},
    )
    if report_dir is not None:
        write_report(result, y, p, vol_p, Path(report_dir), events=os.fspath(events))
    return result


# ---------------------------------------------------------------------------------------------
# Report


def _plots(res: EvalResult, y: NDArray[np.int64], p: NDArray[np.float64], vol_p: NDArray[np.float64],
           out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt.rcParams.update({"figure.figsize": (4.6, 3.6), "figure.dpi": 80, "font.size": 9,
                         "svg.hashsalt": "riskstream"})
    files: list[tuple[str, str]] = []

    def save(fig: Any, name: str, title: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, metadata={"Software": None})
        plt.close(fig)
        files.append((name, title))

    fig, ax = plt.subplots()
    fpr, tpr, _ = roc_curve(y, p)
    ax.plot(fpr, tpr, label=f"model (AUC {res.scores.roc_auc:.3f})")
    fpr, tpr, _ = roc_curve(y, vol_p)
    ax.plot(fpr, tpr, "--", label=f"volume only (AUC {res.volume_roc_auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (day-end rows)")
    ax.legend(loc="lower right")
    save(fig, "roc.png", "ROC curve")

    fig, ax = plt.subplots()
    prec, rec, _ = precision_recall_curve(y, p)
    ax.plot(rec, prec, label=f"model (AP {res.scores.pr_auc:.3f})")
    ax.axhline(y.mean(), ls=":", color="grey", label=f"prevalence {y.mean():.3f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (day-end rows)", ylim=(0, 1.02))
    ax.legend(loc="upper right")
    save(fig, "pr.png", "Precision-recall curve")

    fig, ax = plt.subplots()
    mp, my, n = reliability(y, p)
    ok = n > 0
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.plot(mp[ok], my[ok], "o-", label=f"model (ECE {res.scores.ece:.3f})")
    for xv, yv, c in zip(mp[ok], my[ok], n[ok]):
        ax.annotate(f"{int(c)}", (xv, yv), textcoords="offset points", xytext=(3, -9), fontsize=7)
    ax.set(xlabel="mean predicted probability", ylabel="observed positive rate", title="Calibration (10 bins)",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    save(fig, "calibration.png", "Reliability diagram")

    fig, ax = plt.subplots()
    ax.hist(p[y == 0], bins=40, range=(0.0, 1.0), density=True, alpha=0.6, label="healthy (label 0)")
    ax.hist(p[y == 1], bins=40, range=(0.0, 1.0), density=True, alpha=0.6, label="problematic (label 1)")
    th = res.model["thresholds"]
    ax.axvline(th["elevated_enter"], color="orange", ls="--", label="elevated_enter")
    ax.axvline(th["high_enter"], color="red", ls="--", label="high_enter")
    ax.set(xlabel="predicted probability", ylabel="density", title="Scores by class (day-end rows)")
    ax.legend(loc="upper right")
    save(fig, "scores.png", "Score distribution by class")

    s = res.stream
    if s.positives:
        fig, ax = plt.subplots()
        d = np.array(s.delays_days)
        xs = np.linspace(0, max(21.0, float(d.max()) if len(d) else 21.0), 200)
        ax.plot(xs, [(d <= v).sum() / s.positives for v in xs])
        ax.set(xlabel="days since first scored", ylabel="share of positive users alerted",
               title="Detection (first ml_risk alert)", ylim=(0, 1))
        save(fig, "detection.png", "Cumulative detection of positive users")
    return files


def write_report(res: EvalResult, y: NDArray[np.int64], p: NDArray[np.float64], vol_p: NDArray[np.float64],
                 out: Path, *, events: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = _plots(res, y, p, vol_p, out)
    metrics = asdict(res)
    metrics["stream"].pop("delays_days", None)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    s, sc, th = res.stream, res.scores, res.model["thresholds"]
    pe, re_, fe = res.at_elevated
    ph, rh, fh = res.at_high

    def opt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f}"

    lines = [
        "# riskstream model evaluation",
        "",
        f"Model `{res.model['model_version']}` ({res.model['kind']}, {res.model['size_bytes'] / 1024:.0f} KiB, "
        f"trained {res.model['trained_at']}) on `{Path(events).name}`: {res.users} users "
        f"({res.positives} positive, prevalence {res.positives / max(res.users, 1):.3f}), {res.events:,} events.",
        "",
        "## Row level",
        "",
        f"Rows: the day-end evaluation of every user-day with at least {res.model['min_history_days']} days of "
        f"history ({res.rows} rows), against the user's label.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| ROC-AUC | {sc.roc_auc:.3f} |",
        f"| PR-AUC (average precision) | {sc.pr_auc:.3f} |",
        f"| F1 at elevated_enter = {th['elevated_enter']:.2f} | {fe:.3f} (precision {pe:.3f}, recall {re_:.3f}) |",
        f"| F1 at high_enter = {th['high_enter']:.2f} | {fh:.3f} (precision {ph:.3f}, recall {rh:.3f}) |",
        f"| expected calibration error (10 bins) | {sc.ece:.3f} |",
        f"| log loss / Brier | {sc.log_loss:.4f} / {sc.brier:.4f} |",
        f"| volume-only baseline ROC-AUC (log minutes + log sessions, 5-fold by user) | {res.volume_roc_auc:.3f} |",
        "",
        "## Stream level (offline detector, packaged policy, the model's thresholds)",
        "",
        f"Thresholds elevated {th['elevated_enter']:.2f}/{th['elevated_exit']:.2f}, high "
        f"{th['high_enter']:.2f}/{th['high_exit']:.2f} (enter/exit); persistence {res.model['persistence_s']} s, "
        f"cool-down {res.model['cooldown_s']} s.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| positive users detected (first elevated/high ml_risk alert) | {s.detected}/{s.positives} "
        f"({s.share_detected:.1%}) |",
        f"| median detection delay from first scored day (detected users) | {opt(s.median_delay_days)} days |",
        f"| escalating positives detected | {s.escalating_detected}/{s.escalating_positives} |",
        f"| median delay from escalation onset (or first scored day, if later) | "
        f"{opt(s.escalating_median_delay_days)} days |",
        f"| false ml_risk alerts (elevated/high to healthy users) | {s.false_alerts} in "
        f"{s.healthy_user_weeks:.0f} healthy user-weeks = **{s.false_per_100_user_weeks:.2f} per 100 user-weeks** |",
        f"| healthy users with at least one ml_risk alert | {s.healthy_users_alerted}/{s.healthy_users} |",
        f"| alerted users who are positive | {s.alerted_positive_share:.1%} of {s.alerted_users} |",
        f"| ml_risk alerts by level | {', '.join(f'{k} {v}' for k, v in s.alerts_by_level.items()) or 'none'} |",
        "",
        "## Plots",
        "",
    ]
    for name, title in files:
        lines += [f"![{title}]({name})", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
