"""Training: detector rows, user split, thresholds, ONNX export parity and the shipped model's contract."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import models.train as T
from models.dataset import ROW_DAY_END, ROW_RANDOM, Extract, extract
from models.export import onnx_probabilities, to_onnx
from models.metrics import expected_calibration_error
from models.population import draw_population, read_labels, write_labels
from models.simulate import DEFAULT_START, write_events
from stream.cli import main
from stream.core.features import FEATURE_NAMES, FEATURE_SPEC_HASH, N_FEATURES
from stream.core.policy import MlPolicy, PolicyConfig, load_policy_config
from stream.core.scoring import OnnxScorer

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "riskstream.onnx"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Extract]:
    d = tmp_path_factory.mktemp("tiny")
    pop = draw_population(60, 10, 31, 0.3)
    write_events(pop, d / "ev.jsonl.gz", workers=2)
    write_labels(pop, d / "labels.csv", DEFAULT_START)
    ex = extract(d / "ev.jsonl.gz", seed=0, policy=load_policy_config(None), workers=2)
    return d / "ev.jsonl.gz", d / "labels.csv", ex


def test_rows_are_day_end_and_one_random_tick_per_user_day(tiny: tuple[Path, Path, Extract]) -> None:
    _, _, ex = tiny
    rows = ex.rows
    assert rows.x.shape == (len(rows), N_FEATURES) and rows.x.dtype == np.float32
    keys = list(zip(rows.user_id.tolist(), rows.local_day.tolist(), rows.kind.tolist()))
    assert len(keys) == len(set(keys))  # at most one row of each kind per user-day
    day_end = {(u, d): t for u, d, k, t in zip(rows.user_id, rows.local_day, rows.kind, rows.tick_end_ms)
               if k == ROW_DAY_END}
    for u, d, k, t in zip(rows.user_id, rows.local_day, rows.kind, rows.tick_end_ms):
        if k == ROW_RANDOM:
            assert t <= day_end[(u, d)]  # the drawn tick is one of the day's ticks
    assert len(set(rows.user_id.tolist())) == 60
    assert rows.history_days.max() >= 10 and rows.history_days.min() >= 1


def test_rows_do_not_depend_on_the_number_of_workers(tiny: tuple[Path, Path, Extract]) -> None:
    events, _, ex = tiny
    one = extract(events, seed=0, policy=load_policy_config(None), workers=1).rows
    assert np.array_equal(one.user_id, ex.rows.user_id)
    assert np.array_equal(one.tick_end_ms, ex.rows.tick_end_ms)
    assert np.array_equal(one.x, ex.rows.x)


def test_split_is_by_user_and_stratified() -> None:
    users = np.array([f"u{i:03d}" for i in range(200)])
    y = (np.arange(200) % 5 == 0).astype(np.int64)
    val = T.split_users(users, y, 0.3, seed=1)
    assert len(val) == 60
    assert sum(int(u[1:]) % 5 == 0 for u in val) == 12  # 30 % of the 40 positives
    assert val == T.split_users(users, y, 0.3, seed=1)
    assert val != T.split_users(users, y, 0.3, seed=2)


def test_every_candidate_exports_with_probability_parity(tiny: tuple[Path, Path, Extract]) -> None:
    _, labels_path, ex = tiny
    labels = read_labels(labels_path)
    ds = T.build_dataset(ex, labels, load_policy_config(None), T.TrainSettings())
    assert ds.rows.history_days.min() >= 7
    assert not set(ds.rows.user_id[ds.val].tolist()) & set(ds.rows.user_id[~ds.val].tolist())
    tr = ~ds.val
    cands = T.fit_candidates(ds.rows.x[tr], ds.y[tr], ds.rows.user_id[tr], T.TrainSettings(gbt_min_leaf=20))
    assert [c.name for c in cands] == ["logreg", "logreg_log", "gbt", "gbt_platt", "gbt_mono", "gbt_mono_d3", "gbt_mono_d2", "gbt_mono_d1", "gbt_mono_d1_markers", "gbt_mono_d3_markers"]
    x = ds.rows.x
    for c in cands:
        onx = to_onnx(c.model, N_FEATURES, graph_name="t")
        diff = np.abs(onnx_probabilities(onx, x).astype(np.float64) - T.proba(c.model, x))
        assert diff.max() <= T.PARITY_TOLERANCE, c.name


def test_train_command_writes_a_contract_model(tiny: tuple[Path, Path, Extract], tmp_path: Path) -> None:
    events, labels, _ = tiny
    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(main, ["train", "--events", str(events), "--labels", str(labels), "--out", str(out),
                                    "--seed", "3", "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "ONNX parity" in res.stdout
    scorer = OnnxScorer(out, expected_spec_hash=FEATURE_SPEC_HASH, expected_feature_names=FEATURE_NAMES)
    meta = scorer.info.metadata
    assert json.loads(meta["feature_names"]) == list(FEATURE_NAMES)
    assert set(json.loads(meta["feature_baseline"])) == set(FEATURE_NAMES)
    th = scorer.info.thresholds
    ml = PolicyConfig().with_model_thresholds(th).ml  # exit < enter and elevated < high, as the policy requires
    assert (ml.evidence, ml.evidence_days) == ("day_mean", 3)  # the thresholds are for the day-mean rule
    assert ml.elevated_enter == th["elevated_enter"]
    summary = json.loads(out.with_suffix(".train.json").read_text())
    assert summary["parity_max_abs"] <= 1e-5
    assert summary["kind"] in set(T.SELECTABLE)  # only monotone, clipped candidates ship (issue #11)
    rng = json.loads(meta["feature_range"])
    assert len(rng["lo"]) == len(rng["hi"]) == N_FEATURES
    p = scorer.score(np.zeros((3, N_FEATURES), dtype=np.float32))
    assert p.shape == (3,) and np.all((p >= 0) & (p <= 1))


def test_parity_failure_fails_and_writes_nothing(tiny: tuple[Path, Path, Extract], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _, labels_path, ex = tiny
    real = T.onnx_probabilities
    monkeypatch.setattr(T, "onnx_probabilities", lambda m, x: real(m, x) + np.float32(1e-3))
    out = tmp_path / "m.onnx"
    with pytest.raises(T.TrainError, match="differ"):
        T.train_extracted(ex, read_labels(labels_path), out, T.TrainSettings(), policy=load_policy_config(None))
    assert not out.exists()


def test_monotone_candidate_clips_to_the_training_range_and_respects_directions(
        tiny: tuple[Path, Path, Extract]) -> None:
    from stream.core.features.directions import DIRECTIONS

    _, labels_path, ex = tiny
    ds = T.build_dataset(ex, read_labels(labels_path), load_policy_config(None), T.TrainSettings())
    x, y = ds.rows.x, ds.y
    m = T._fit_gbt_mono(x, y, ds.rows.user_id, T.TrainSettings(gbt_min_leaf=20))
    kept = np.array([n not in T.MODEL_EXCLUDED for n in FEATURE_NAMES])
    assert np.array_equal(m.lo[kept], x.min(axis=0)[kept]) and np.array_equal(m.hi[kept], x.max(axis=0)[kept])
    assert np.array_equal(m.lo[~kept], m.hi[~kept])  # excluded features are held constant
    onx = to_onnx(m, N_FEATURES, graph_name="t")
    far = np.full((2, N_FEATURES), 1e9, dtype=np.float32)
    assert np.allclose(onnx_probabilities(onx, far), onnx_probabilities(onx, np.broadcast_to(m.hi, (2, N_FEATURES)).copy()))
    base = T.proba(m, x)
    for j, name in enumerate(FEATURE_NAMES):
        sign = DIRECTIONS[name].sign
        if sign == 0:
            continue
        up = x.copy()
        up[:, j] = up[:, j] + np.abs(up[:, j]) + 1  # strictly higher, also for negative values
        got = T.proba(m, up)
        assert np.all(sign * (got - base) >= -1e-9), name


def test_too_few_users_of_a_class_is_a_clear_error(tiny: tuple[Path, Path, Extract], tmp_path: Path) -> None:
    _, labels_path, ex = tiny
    labels = read_labels(labels_path)
    all_negative = type(labels)({u: 0 for u in labels.label}, {}, {})
    with pytest.raises(T.TrainError, match="at least 4 users of each class"):
        T.train_extracted(ex, all_negative, tmp_path / "m.onnx", T.TrainSettings(), policy=load_policy_config(None))


def test_hysteresis_entries_counts_episodes_per_user() -> None:
    user = np.array(["a"] * 6 + ["b"] * 3)
    day = np.array([0, 1, 2, 3, 4, 5, 0, 1, 2])
    p = np.array([0.1, 0.8, 0.75, 0.65, 0.9, 0.2, 0.8, 0.1, 0.1])
    # a: enters on day 1, stays (0.75 >= exit 0.7), leaves on day 3 (< 0.7), re-enters day 4; b: once.
    assert T.hysteresis_entries(user, day, p, 0.8, 0.7) == 3
    assert T.hysteresis_entries(user[::-1], day[::-1], p[::-1], 0.8, 0.7) == 3  # order-independent


def test_thresholds_are_ordered_and_meet_the_precision_target() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(4000) < 0.15).astype(np.int64)
    p = np.clip(0.15 + 0.5 * (y - 0.15) + rng.normal(0, 0.15, 4000), 0, 1)
    user = np.array([f"u{i % 400}" for i in range(4000)])
    day = np.arange(4000) // 400
    _, table = T.choose_thresholds(y, p, user, day, T.TrainSettings(false_alert_budget=100.0))
    th = table["tick_thresholds"]
    MlPolicy(**th)
    assert th["elevated_exit"] == pytest.approx(th["elevated_enter"] - 0.1)
    row = next(r for r in table["grid"] if r["threshold"] == th["elevated_enter"])
    assert row["precision"] >= 0.6


def test_thresholds_stay_valid_when_no_threshold_reaches_the_targets() -> None:
    rng = np.random.default_rng(2)
    y = (rng.random(2000) < 0.15).astype(np.int64)
    p = rng.random(2000)  # no signal: precision never reaches 0.6
    th, _ = T.choose_thresholds(y, p, np.array([f"u{i % 100}" for i in range(2000)]), np.arange(2000) // 100,
                                T.TrainSettings())
    PolicyConfig().with_model_thresholds(th)
    assert th["elevated_enter"] <= T.ELEVATED_MAX and th["elevated_enter"] < th["high_enter"] <= 0.99


def test_day_mean_thresholds_keep_the_budget_on_the_rule_the_stream_applies() -> None:
    # 200 healthy users whose day-end scores are noisy around 0.3 with single-day spikes, 20
    # positives steadily around 0.8: a single spike must not place the threshold, the mean must.
    rng = np.random.default_rng(5)
    users, days, ys, ps = [], [], [], []
    for u in range(220):
        pos = u < 20
        for d in range(21):
            users.append(f"u{u}"), days.append(d), ys.append(int(pos))
            base = 0.8 if pos else 0.3
            spike = (not pos) and rng.random() < 0.05
            ps.append(float(np.clip((0.95 if spike else base) + rng.normal(0, 0.05), 0, 1)))
    y, p = np.array(ys), np.array(ps)
    user, day = np.array(users), np.array(days)
    th, table = T.day_mean_thresholds(y, p, user, day, T.TrainSettings())
    assert th["evidence_days"] == T.DAY_MEAN_DAYS
    weeks = (y == 0).sum() / 7

    def false_rate(tier: str) -> float:
        return 100 * T.hysteresis_entries(user[y == 0], day[y == 0], p[y == 0], th[f"{tier}_enter"],
                                          th[f"{tier}_exit"], rule=f"mean:{T.DAY_MEAN_DAYS}") / weeks
    assert false_rate("elevated") + false_rate("high") <= T.TrainSettings().day_mean_budget
    assert th["high_enter"] >= th["elevated_enter"] + 0.05 - 1e-9
    # spikes of 0.95 on 5 % of days would need a day-end threshold above 0.95; the mean sits lower
    assert 0.45 <= th["elevated_enter"] <= 0.8
    assert next(r for r in table if r["threshold"] == th["elevated_enter"])["positives_detected"] == 1.0
    ml = PolicyConfig().with_model_thresholds(th).ml
    assert ml.evidence == "day_mean" and ml.elevated_enter < ml.high_enter


def test_ece_is_zero_when_calibrated_and_large_when_not() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(200_000)
    y = (rng.random(200_000) < p).astype(np.int64)
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error(np.zeros(100, dtype=np.int64), np.full(100, 0.9)) == pytest.approx(0.9)


# -- the shipped model -----------------------------------------------------------------------------


def test_shipped_model_matches_the_feature_spec_and_loads() -> None:
    assert SHIPPED.exists(), "models/riskstream.onnx is missing: run python -m models.build"
    scorer = OnnxScorer(SHIPPED, expected_spec_hash=FEATURE_SPEC_HASH, expected_feature_names=FEATURE_NAMES)
    info = scorer.info
    assert info.feature_spec_hash == FEATURE_SPEC_HASH
    assert SHIPPED.stat().st_size < 1_000_000
    datetime.fromisoformat(info.trained_at)
    cfg = load_policy_config(None).with_model_thresholds(info.thresholds)
    assert cfg.ml.elevated_enter == info.thresholds["elevated_enter"]
    baseline = json.loads(info.metadata["feature_baseline"])
    assert set(baseline) == set(FEATURE_NAMES) and all(np.isfinite(list(baseline.values())))
    model = onnx.load(str(SHIPPED))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["features"]
