"""The detector as a whole: hot model reload keeps the model and the policy coherent."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from stream.core.detector import Detector
from stream.core.features import FEATURE_NAMES, FEATURE_SPEC_HASH
from stream.core.policy import AlertPolicy, PolicyConfig, load_policy_config
from stream.core.scoring import OnnxScorer
from stream.core.windows import MemoryWindowStore
from tests.model_factory import build_model, edit_metadata

THRESHOLDS_A = {"elevated_enter": 0.6, "elevated_exit": 0.5, "high_enter": 0.8, "high_exit": 0.7}
THRESHOLDS_B = {"elevated_enter": 0.3, "elevated_exit": 0.2, "high_enter": 0.5, "high_exit": 0.4}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("det-models")
    base = build_model(d / "base.onnx", n_features=len(FEATURE_NAMES), feature_names=list(FEATURE_NAMES),
                       spec_hash=FEATURE_SPEC_HASH, model_version="a", seed=0)
    out = {}
    for name, th in (("a", THRESHOLDS_A), ("b", THRESHOLDS_B)):
        out[name] = Path(edit_metadata(base, d / f"{name}.onnx",
                                       set_={"thresholds": json.dumps(th), "model_version": name}))
    # thresholds valid on their own, but below a policy file's explicit high_exit of 0.7
    out["c"] = Path(edit_metadata(base, d / "c.onnx", set_={"thresholds": json.dumps(
        {"high_enter": 0.65}), "model_version": "c"}))
    return out


def _detector(path: Path, clock: Clock, config: PolicyConfig) -> Detector:
    scorer = OnnxScorer(path, expected_spec_hash=FEATURE_SPEC_HASH, expected_feature_names=FEATURE_NAMES,
                        clock=clock)
    return Detector(MemoryWindowStore(), AlertPolicy(config, model_thresholds=scorer.info.thresholds), scorer)


def _deploy(src: Path, live: Path) -> None:
    staging = live.with_suffix(".tmp")
    shutil.copyfile(src, staging)
    os.replace(staging, live)


def _ml(det: Detector) -> dict[str, float]:
    ml = det.policy.config.ml
    return {k: getattr(ml, k) for k in THRESHOLDS_A}


def test_a_reloaded_model_brings_its_thresholds(model_files: dict[str, Path], tmp_path: Path) -> None:
    live, clock = tmp_path / "model.onnx", Clock()
    shutil.copyfile(model_files["a"], live)
    det = _detector(live, clock, load_policy_config(None))
    assert _ml(det) == THRESHOLDS_A
    _deploy(model_files["b"], live)
    clock.now += 5
    assert det.refresh_model() is True
    assert det.scorer is not None and det.scorer.info.model_version == "b"
    assert _ml(det) == THRESHOLDS_B
    clock.now += 5
    assert det.refresh_model() is False  # nothing changed
    assert _ml(det) == THRESHOLDS_B


def test_thresholds_set_in_the_policy_file_win_over_the_model(model_files: dict[str, Path],
                                                              tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("[ml]\nhigh_enter = 0.9\nhigh_exit = 0.7\n", encoding="utf-8")
    live, clock = tmp_path / "model.onnx", Clock()
    shutil.copyfile(model_files["a"], live)
    det = _detector(live, clock, load_policy_config(policy))
    assert _ml(det) == {**THRESHOLDS_A, "high_enter": 0.9, "high_exit": 0.7}
    _deploy(model_files["b"], live)
    clock.now += 5
    assert det.refresh_model() is True
    assert _ml(det) == {**THRESHOLDS_B, "high_enter": 0.9, "high_exit": 0.7}


def test_a_model_whose_thresholds_do_not_fit_the_policy_is_refused(model_files: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("[ml]\nhigh_exit = 0.7\n", encoding="utf-8")
    live, clock = tmp_path / "model.onnx", Clock()
    shutil.copyfile(model_files["a"], live)
    det = _detector(live, clock, load_policy_config(policy))
    before = _ml(det)
    _deploy(model_files["c"], live)  # high_enter 0.65 < the file's high_exit 0.7
    clock.now += 5
    assert det.refresh_model() is False
    assert det.scorer is not None and det.scorer.info.model_version == "a"
    assert _ml(det) == before


def test_the_packaged_policy_leaves_the_thresholds_to_the_model() -> None:
    cfg = load_policy_config(None)
    assert not {"elevated_enter", "elevated_exit", "high_enter", "high_exit"} & cfg.ml.model_fields_set
