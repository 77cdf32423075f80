"""Evaluation: stream figures from alerts, the volume baseline, and the shipped model on a held-out seed."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from models.dataset import Extract, Rows, UserSpan
from models.evaluate import DAY_MS, stream_figures, volume_baseline_auc
from models.population import Labels, draw_population, write_labels
from models.simulate import DEFAULT_START, write_events
from stream.cli import main
from stream.core.alerts import Alert
from stream.core.features import FEATURE_INDEX, N_FEATURES

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "riskstream.onnx"
HELD_OUT_SEED = 4242  # the shipped model is trained on seed 20250106 (models/build.py)


def _alert(user: str, t_ms: int, level: str) -> Alert:
    return Alert(alert_id=f"{user}-{t_ms}-{level}", user_id=user, kind="ml_risk", level=level, score=0.9,
                 model_version="m", event_time_ms=t_ms, emitted_at_ms=None, reasons=(), features=None, details={})


def _empty_rows() -> Rows:
    return Rows(np.zeros(0, dtype=str), *(np.zeros(0, dtype=np.int64) for _ in range(4)),
                np.zeros((0, N_FEATURES), dtype=np.float32))


def test_stream_figures_delays_and_false_alert_rate() -> None:
    t0 = 1_736_121_600_000
    span = UserSpan(
        first_eligible_ms={"p1": t0, "p2": t0, "p3": t0, "h1": t0, "h2": t0},
        last_tick_ms={u: t0 + 14 * DAY_MS for u in ("p1", "p2", "p3", "h1", "h2")},
        first_tick_ms={},
    )
    alerts = [
        _alert("p1", t0 + 2 * DAY_MS, "elevated"),
        _alert("p1", t0 + 3 * DAY_MS, "high"),  # not the first: ignored for the delay
        _alert("p2", t0 + 4 * DAY_MS, "high"),
        _alert("p2", t0 + 5 * DAY_MS, "cleared"),  # cleared is not an alarm
        _alert("h1", t0 + 1 * DAY_MS, "elevated"),
        _alert("h1", t0 + 6 * DAY_MS, "elevated"),
    ]
    labels = Labels({"p1": 1, "p2": 1, "p3": 1, "h1": 0, "h2": 0}, {"p2": t0 + 3 * DAY_MS}, {})
    ex = Extract(_empty_rows(), span, alerts, Counter(), 0, 0, 0.0)
    s = stream_figures(ex, labels)
    assert (s.positives, s.detected) == (3, 2)
    assert s.share_detected == pytest.approx(2 / 3)
    assert s.median_delay_days == pytest.approx(3.0)  # delays 2 and 4 days
    assert (s.escalating_positives, s.escalating_detected) == (1, 1)
    assert s.escalating_median_delay_days == pytest.approx(1.0)  # from onset (day 3) to day 4
    assert s.false_alerts == 2 and s.healthy_users_alerted == 1
    assert s.healthy_user_weeks == pytest.approx(4.0)  # 2 healthy users x 14 days
    assert s.false_per_100_user_weeks == pytest.approx(50.0)
    assert s.alerted_positive_share == pytest.approx(2 / 3)
    assert s.alerts_by_level == {"cleared": 1, "elevated": 3, "high": 2}


def test_volume_baseline_separates_when_volume_is_informative() -> None:
    rng = np.random.default_rng(3)
    n_users, per_user = 300, 5
    y_user = (rng.random(n_users) < 0.3).astype(np.int64)
    x = np.zeros((n_users * per_user, N_FEATURES), dtype=np.float32)
    y = np.repeat(y_user, per_user)
    users = np.repeat(np.array([f"u{i}" for i in range(n_users)]), per_user)
    x[:, FEATURE_INDEX["active_min_day_7d"]] = np.exp(5 + 1.5 * y + rng.normal(0, 0.5, len(y)))
    x[:, FEATURE_INDEX["sessions_day_7d"]] = np.exp(4 + rng.normal(0, 0.5, len(y)))
    auc, oof = volume_baseline_auc(x, y, users)
    assert auc > 0.9
    x[:, FEATURE_INDEX["active_min_day_7d"]] = np.exp(5 + rng.normal(0, 0.5, len(y)))
    auc, _ = volume_baseline_auc(x, y, users)
    assert 0.35 < auc < 0.65


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("held_out")
    pop = draw_population(120, 12, HELD_OUT_SEED, 0.2)
    write_events(pop, d / "ev.jsonl.gz", workers=2)
    write_labels(pop, d / "labels.csv", DEFAULT_START)
    return d / "ev.jsonl.gz", d / "labels.csv"


def test_shipped_model_is_far_from_chance_on_a_held_out_population(held_out: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    events, labels = held_out
    report = tmp_path / "report"
    res = CliRunner().invoke(main, ["evaluate", "--events", str(events), "--labels", str(labels),
                                    "--report-dir", str(report), "--workers", "2"])
    assert res.exit_code == 0, res.output
    m = re.search(r"^ROC-AUC: (\d\.\d{3})$", res.stdout, re.MULTILINE)
    assert m, res.stdout
    assert float(m.group(1)) >= 0.75, res.stdout  # a model degrading towards chance fails here
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["scores"]["roc_auc"] == pytest.approx(float(m.group(1)), abs=5e-4)
    assert metrics["model"]["file"] == SHIPPED.name  # the shipped model is the default
    assert metrics["model"]["sha256"] == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert metrics["scores"]["ece"] < 0.2
    assert metrics["volume_roc_auc"] < metrics["scores"]["roc_auc"]
    assert metrics["stream"]["positives"] > 10
    for name in ("report.md", "roc.png", "pr.png", "calibration.png", "scores.png"):
        data = (report / name).read_bytes()
        assert data, name
        if name.endswith(".png"):
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ROC-AUC" in (report / "report.md").read_text()


def test_evaluate_rejects_a_missing_model(held_out: tuple[Path, Path], tmp_path: Path) -> None:
    events, labels = held_out
    res = CliRunner().invoke(main, ["evaluate", "--events", str(events), "--labels", str(labels),
                                    "--model", str(tmp_path / "nope.onnx")])
    assert res.exit_code == 2
    assert "does not exist" in res.output
