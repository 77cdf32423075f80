"""Metamorphic tests of the shipped ONNX model (issue #11, item 5).

Rows come from a real evaluation (``models/report/rows_sample.npz``: day-end rows of the held-out
population, written by ``riskstream evaluate``). For every feature with a literature direction
(``stream.core.features.directions``) raising it, all else equal, never lowers the score (lowering
for -1 features); far outside the training range the score saturates instead of extrapolating.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from stream.core.features.directions import DIRECTIONS
from stream.core.features import FEATURE_INDEX, FEATURE_NAMES, FEATURE_SPEC_HASH
from stream.core.scoring import OnnxScorer

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "riskstream.onnx"
SAMPLE = ROOT / "models" / "report" / "rows_sample.npz"
TOL = 1e-6
DIRECTED = [n for n in FEATURE_NAMES if DIRECTIONS[n].sign != 0]


@pytest.fixture(scope="module")
def scorer() -> OnnxScorer:
    return OnnxScorer(SHIPPED, expected_spec_hash=FEATURE_SPEC_HASH, expected_feature_names=FEATURE_NAMES)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    x = np.load(SAMPLE)["x"].astype(np.float32)
    assert x.shape[1] == len(FEATURE_NAMES) and len(x) >= 100
    return x


@pytest.fixture(scope="module")
def train_max(scorer: OnnxScorer, rows: np.ndarray) -> np.ndarray:
    """The training maximum per feature, as the model declares it (``feature_range`` metadata)."""
    meta = onnx.load(str(SHIPPED)).metadata_props
    rng = json.loads({p.key: p.value for p in meta}["feature_range"])
    return np.asarray(rng["hi"], dtype=np.float32)


@pytest.mark.parametrize("name", DIRECTED)
def test_raising_a_directed_marker_never_moves_the_score_against_its_direction(
        scorer: OnnxScorer, rows: np.ndarray, train_max: np.ndarray, name: str) -> None:
    j = FEATURE_INDEX[name]
    sign = DIRECTIONS[name].sign
    base = scorer.score(rows)
    col = rows[:, j]
    spread = float(np.percentile(col, 90) - np.percentile(col, 10)) or 1.0
    for new in (col + 0.1 * spread, col + spread, col * 2 + 1, np.full_like(col, train_max[j]),
                np.full_like(col, 10 * abs(train_max[j]) + 1)):
        x = rows.copy()
        x[:, j] = np.maximum(new, col)  # never lower: "raising, all else equal"
        got = scorer.score(x)
        if sign > 0:
            assert np.all(got >= base - TOL), (name, float(np.min(got - base)))
        else:
            assert np.all(got <= base + TOL), (name, float(np.max(got - base)))


def test_raising_all_positive_markers_together_never_lowers_the_score(scorer: OnnxScorer, rows: np.ndarray) -> None:
    x = rows.copy()
    for name in DIRECTED:
        if DIRECTIONS[name].sign > 0:
            j = FEATURE_INDEX[name]
            x[:, j] = x[:, j] * 1.5 + 0.1
    assert np.all(scorer.score(x) >= scorer.score(rows) - TOL)


@pytest.mark.parametrize("name", [n for n in DIRECTED if DIRECTIONS[n].sign > 0])
def test_ten_times_the_training_maximum_scores_at_least_the_training_maximum(
        scorer: OnnxScorer, rows: np.ndarray, train_max: np.ndarray, name: str) -> None:
    j = FEATURE_INDEX[name]
    at_max, beyond = rows.copy(), rows.copy()
    at_max[:, j] = train_max[j]
    beyond[:, j] = 10 * abs(train_max[j]) + 1
    assert np.all(scorer.score(beyond) >= scorer.score(at_max) - TOL)


def test_every_feature_saturates_outside_the_training_range(scorer: OnnxScorer, rows: np.ndarray,
                                                            train_max: np.ndarray) -> None:
    far = rows.copy()
    far[:, :] = 1000 * np.abs(train_max) + 1000
    near = np.broadcast_to(train_max, rows.shape).copy()
    assert np.allclose(scorer.score(far), scorer.score(near), atol=TOL)
