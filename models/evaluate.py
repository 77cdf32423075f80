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
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from models.dataset import ROW_DAY_END, Extract, extract
from models.metrics import Scores, day_series, f1_at, reliability, rule_entries, score, smooth_days
from models.population import Labels, read_labels
from stream.core.alerts import LEVEL_ELEVATED, LEVEL_HIGH
from stream.core.features import FEATURE_INDEX
from stream.core.policy import load_policy_config
from stream.core.scoring import load_scorer
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
    subtypes: list[dict[str, Any]] = field(default_factory=list)
    decision_rules: list[dict[str, Any]] = field(default_factory=list)
    oracle: list[dict[str, Any]] = field(default_factory=list)
    recalibrated: dict[str, Any] = field(default_factory=dict)
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
        ] + ([f"ECE after prior-shift recalibration ({self.recalibrated['train_prevalence']:.3f} -> "
              f"{self.recalibrated['prevalence']:.3f}): {self.recalibrated['ece']:.3f}"]
             if self.recalibrated.get("train_prevalence") else []) + [
            f"rule {r['rule']}: {r['detected']}/{r['positives']} ({r['share_detected']:.1%}) detected at "
            f"{r['false_per_100_user_weeks']:.2f} false / 100 healthy user-weeks (threshold {r['threshold']}), "
            f"median delay {r['median_delay_days']} days" for r in self.decision_rules] + [
            f"oracle (latent c) {r['rule']}: {r['detected']}/{r['positives']} ({r['share_detected']:.1%}) at "
            f"{r['false_per_100_user_weeks']:.2f} false / 100 user-weeks" for r in self.oracle]


def _training_prevalence(meta: dict[str, str]) -> float | None:
    try:
        summary = json.loads(meta.get("training_summary", "{}"))
        return float(summary["positives"]) / float(summary["users"])
    except (ValueError, KeyError, ZeroDivisionError, TypeError):
        return None


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


# ---------------------------------------------------------------------------------------------
# Issue #11: sub-types, day-level decision rules at a false-alert budget, oracle ceiling

FALSE_ALERT_BUDGET: Final = 1.0  # per 100 healthy user-weeks


def subtype_table(ex: Extract, labels: Labels) -> list[dict[str, Any]]:
    """Per simulated sub-type: users, positives, positives alerted, healthy users alerted, false alerts."""
    if not labels.subtype:
        return []
    alerted: dict[str, int] = {}
    for a in ex.alerts:
        if a.level in (LEVEL_ELEVATED, LEVEL_HIGH):
            alerted[a.user_id] = alerted.get(a.user_id, 0) + 1
    eligible = ex.span.first_eligible_ms
    out: dict[str, dict[str, Any]] = {}
    for u in eligible:
        if u not in labels.label:
            continue
        st = labels.subtype.get(u, "?")
        r = out.setdefault(st, {"subtype": st, "users": 0, "positives": 0, "positives_alerted": 0,
                                "healthy": 0, "healthy_alerted": 0, "false_alerts": 0, "healthy_weeks": 0.0})
        r["users"] += 1
        if labels.label[u] == 1:
            r["positives"] += 1
            r["positives_alerted"] += int(u in alerted)
        else:
            r["healthy"] += 1
            r["healthy_alerted"] += int(u in alerted)
            r["false_alerts"] += alerted.get(u, 0)
            r["healthy_weeks"] += max(0, ex.span.last_tick_ms[u] - eligible[u]) / (7 * DAY_MS)
    for r in out.values():
        r["false_per_100_user_weeks"] = 100.0 * r["false_alerts"] / r["healthy_weeks"] if r["healthy_weeks"] else 0.0
    return sorted(out.values(), key=lambda r: r["subtype"])


def decision_rule_table(user: NDArray[np.str_], day: NDArray[np.int64], s: NDArray[np.float64],
                        labels: Labels, rules: tuple[str, ...] = ("day_end", "mean:3", "mean:5", "of7:5"),
                        grid: NDArray[np.float64] | None = None,
                        budget: float = FALSE_ALERT_BUDGET) -> list[dict[str, Any]]:
    """For each day-level rule: the lowest threshold (hysteresis exit 0.1 below, in score units of
    the grid's spread) keeping false alerts <= ``budget`` per 100 healthy user-weeks, and the share of
    positives it detects with the median delay (days from the first scored day)."""
    per_user = day_series(user, day, s)
    if grid is None:
        grid = np.unique(np.concatenate([np.round(np.arange(0.02, 0.99, 0.01), 2), [0.99, 0.995, 0.999]]))
    gap = 0.1 * (float(np.max(grid)) - float(np.min(grid))) / 0.94
    pos = [u for u in per_user if labels.label.get(u) == 1]
    neg = [u for u in per_user if labels.label.get(u) == 0]
    weeks = sum(len(per_user[u]) for u in neg) / 7.0
    out = []
    for rule in rules:
        sm = {u: smooth_days(v, rule) for u, v in per_user.items()}
        best: dict[str, Any] | None = None
        for t in sorted(grid.tolist()):
            false = sum(len(rule_entries(sm[u], t, t - gap)) for u in neg)
            rate = 100.0 * false / weeks if weeks else float("nan")
            if rate <= budget:
                delays = [rule_entries(sm[u], t, t - gap)[:1] for u in pos]
                found = [d[0] for d in delays if d]
                best = {"rule": rule, "threshold": round(t, 4), "false_per_100_user_weeks": round(rate, 3),
                        "detected": len(found), "positives": len(pos),
                        "share_detected": len(found) / len(pos) if pos else float("nan"),
                        "median_delay_days": float(np.median(found)) if found else None}
                break
        if best is not None:
            out.append(best)
    return out


def oracle_table(user: NDArray[np.str_], day: NDArray[np.int64], labels: Labels,
                 rules: tuple[str, ...] = ("day_end",)) -> list[dict[str, Any]]:
    """The same decision rules fed the simulator's latent compulsivity (constant per user): the
    ceiling of any model of behaviour under this label noise."""
    if not labels.compulsivity:
        return []
    c = np.array([labels.compulsivity.get(u, -9.0) for u in user.tolist()])
    grid = np.quantile(c, np.linspace(0.5, 0.999, 400))
    return decision_rule_table(user, day, c, labels, rules=rules, grid=grid)


def prior_shift(p: NDArray[np.float64], train_prevalence: float, prevalence: float) -> NDArray[np.float64]:
    """Recalibrate probabilities to another base rate (Bayes on the odds; Saerens et al. 2002)."""
    q = np.clip(p, 1e-7, 1 - 1e-7)
    logit = np.log(q / (1 - q)) + math.log(prevalence / (1 - prevalence)) - math.log(
        train_prevalence / (1 - train_prevalence))
    return np.asarray(1.0 / (1.0 + np.exp(-logit)), dtype=np.float64)


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
    scorer = load_scorer(model_path)
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
    rules = decision_rule_table(rows.user_id, rows.local_day, p, labels)
    oracle = oracle_table(rows.user_id, rows.local_day, labels, rules=tuple(r["rule"] for r in rules) or ("day_end",))
    train_prev = _training_prevalence(info.metadata)
    prevalence = sum(labels.label[u] for u in users) / max(len(users), 1)
    recal = score(y, prior_shift(p, train_prev, prevalence)) if train_prev else scores
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
        subtypes=subtype_table(ex, labels), decision_rules=rules, oracle=oracle,
        recalibrated={"train_prevalence": train_prev, "prevalence": prevalence, "ece": recal.ece,
                      "log_loss": recal.log_loss},
        timing_s={"detector": round(ex.seconds, 1), "total": round(time.perf_counter() - t0, 1)},
    )
    if report_dir is not None:
        write_report(result, y, p, vol_p, Path(report_dir), events=os.fspath(events))
        # A fixed sample of real day-end rows for the metamorphic tests (tests/unit/test_monotonicity.py).
        pick = np.random.default_rng(seed).choice(len(rows), size=min(300, len(rows)), replace=False)
        np.savez_compressed(Path(report_dir) / "rows_sample.npz", x=rows.x[np.sort(pick)], y=y[np.sort(pick)])
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
    ]
    if res.recalibrated.get("train_prevalence"):
        rc = res.recalibrated
        lines += [f"Calibration at this population's prevalence: ECE {sc.ece:.3f} as shipped; "
                  f"{rc['ece']:.3f} after the documented prior-shift recalibration (odds × "
                  f"[{rc['prevalence']:.3f}/(1−{rc['prevalence']:.3f})] / [{rc['train_prevalence']:.3f}/"
                  f"(1−{rc['train_prevalence']:.3f})], training prevalence → this one).", ""]
    if res.decision_rules:
        lines += ["## Day-level decision rules at ≤ 1 false alert per 100 healthy user-weeks (prototype)", "",
                  "Day-end scores per user; `day_end`: the day's final score; `mean:k`: mean of the last k "
                  "day-end scores; `of7:k`: above the threshold on ≥ k of the last 7 days (docs/research.md §8). "
                  "Hysteresis exit 0.1 below; the lowest threshold within the budget. The oracle is the same "
                  "rule fed the simulator's latent compulsivity c (constant per user): the ceiling under this "
                  "label noise.", "",
                  "| rule | threshold | false / 100 healthy user-weeks | positives detected | median delay (days) |",
                  "|---|---|---|---|---|"]
        for r in res.decision_rules:
            lines.append(f"| {r['rule']} | {r['threshold']:.2f} | {r['false_per_100_user_weeks']:.2f} | "
                         f"{r['detected']}/{r['positives']} ({r['share_detected']:.1%}) | {opt(r['median_delay_days'])} |")
        for r in res.oracle:
            lines.append(f"| oracle c, {r['rule']} | c ≥ {r['threshold']:.2f} | {r['false_per_100_user_weeks']:.2f} | "
                         f"{r['detected']}/{r['positives']} ({r['share_detected']:.1%}) | {opt(r['median_delay_days'])} |")
        lines.append("")
    if res.subtypes:
        lines += ["## By simulated sub-type (stream alerts)", "",
                  "| sub-type | users | positives | positives alerted | healthy alerted | false alerts / 100 healthy user-weeks |",
                  "|---|---|---|---|---|---|"]
        for r in res.subtypes:
            share = f" ({r['positives_alerted'] / r['positives']:.0%})" if r["positives"] else ""
            lines.append(f"| {r['subtype']} | {r['users']} | {r['positives']} | {r['positives_alerted']}/{r['positives']}"
                         f"{share} | {r['healthy_alerted']}/{r['healthy']} | {r['false_per_100_user_weeks']:.2f} |")
        lines.append("")
    lines += [
        "## Plots",
        "",
    ]
    for name, title in files:
        lines += [f"![{title}]({name})", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
