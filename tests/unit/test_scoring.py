"""Model contract checks, ONNX/sklearn parity, batch sizes, hot reload and the in-memory twin."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from stream.core.scoring import ConstantScorer, ModelInfo, OnnxScorer, Scorer, load_model_info
from stream.errors import ModelContractError
from tests.model_factory import (
    DEFAULT_THRESHOLDS,
    build_model,
    build_raw_model,
    contract_metadata,
    default_feature_names,
    edit_metadata,
    train_classifier,
)

F = 6
HASH = "a1b2c3d4" * 8
OTHER_HASH = "c3d4e5f6" * 8
NAMES = default_feature_names(F)


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("models")
    return {
        "gbt": build_model(d / "gbt.onnx", n_features=F, spec_hash=HASH, model_version="gbt-1", seed=0),
        "gbt_b": build_model(d / "gbt_b.onnx", n_features=F, spec_hash=HASH, model_version="gbt-2", seed=1,
                             n_estimators=10, max_depth=2),
        "logreg": build_model(d / "logreg.onnx", n_features=F, spec_hash=HASH, model_version="lr-1",
                              kind="logreg"),
        "other_hash": build_model(d / "other.onnx", n_features=F, spec_hash=OTHER_HASH, model_version="o-1"),
    }


def rows(n: int, seed: int = 42, scale: float = 1.5) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=scale, size=(n, F)).astype(np.float32)


def sklearn_proba(kind: str, x: np.ndarray, **kw: Any) -> np.ndarray:
    clf = train_classifier(n_features=F, kind=kind, **kw)  # type: ignore[arg-type]
    return clf.predict_proba(x)[:, 1]  # type: ignore[no-any-return]


@pytest.fixture
def run_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts InferenceSession.run calls (records the batch size of each)."""
    calls: list[int] = []
    original = ort.InferenceSession.run

    def counting(self: ort.InferenceSession, output_names: Any, input_feed: Any, *a: Any, **kw: Any) -> Any:
        calls.append(len(next(iter(input_feed.values()))))
        return original(self, output_names, input_feed, *a, **kw)

    monkeypatch.setattr(ort.InferenceSession, "run", counting)
    return calls


# --------------------------------------------------------------------------- contract at load


def test_valid_model_loads_with_its_metadata(models: dict[str, str]) -> None:
    scorer = OnnxScorer(models["gbt"], expected_spec_hash=HASH, expected_feature_names=NAMES)
    info = scorer.info
    assert info.path == models["gbt"]
    assert info.model_version == "gbt-1"
    assert info.feature_spec_hash == HASH
    assert info.feature_names == tuple(NAMES)
    assert info.trained_at == "2024-01-01T00:00:00+00:00"
    assert info.thresholds == DEFAULT_THRESHOLDS
    assert info.sha256 == hashlib.sha256(Path(models["gbt"]).read_bytes()).hexdigest()
    assert info.metadata["model_version"] == "gbt-1"


def test_spec_hash_mismatch_names_both_hashes(models: dict[str, str]) -> None:
    with pytest.raises(ModelContractError) as exc:
        OnnxScorer(models["other_hash"], expected_spec_hash=HASH)
    msg = str(exc.value)
    assert OTHER_HASH in msg and HASH in msg
    assert models["other_hash"] in msg
    assert "retrain" in msg


def test_missing_spec_hash_is_refused(models: dict[str, str], tmp_path: Path) -> None:
    bad = edit_metadata(models["gbt"], tmp_path / "nohash.onnx", drop=["feature_spec_hash"])
    with pytest.raises(ModelContractError, match="no feature_spec_hash"):
        OnnxScorer(bad, expected_spec_hash=HASH)


@pytest.mark.parametrize("key", ["feature_names", "model_version", "trained_at", "thresholds"])
def test_missing_required_metadata_is_refused(models: dict[str, str], tmp_path: Path, key: str) -> None:
    bad = edit_metadata(models["gbt"], tmp_path / "bad.onnx", drop=[key])
    with pytest.raises(ModelContractError, match=key):
        OnnxScorer(bad, expected_spec_hash=HASH)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("thresholds", "{not json", "thresholds is not valid JSON"),
        ("thresholds", '{"high_enter": 1.5}', "high_enter=1.5 must be a number in"),
        ("thresholds", '{"high_enter": true}', "high_enter=True must be a number"),
        ("thresholds", '{"high_enter": 0.5, "high_exit": 0.6}', "high_exit=0.6 exceeds high_enter=0.5"),
        ("thresholds", "[0.4]", "must be a JSON object"),
        ("feature_names", '"f00"', "non-empty JSON list of strings"),
        ("feature_names", '["f00", "f00", "f02", "f03", "f04", "f05"]', "duplicates"),
        ("trained_at", "last tuesday", "not an ISO-8601 timestamp"),
    ],
)
def test_malformed_metadata_is_refused(
    models: dict[str, str], tmp_path: Path, key: str, value: str, match: str
) -> None:
    bad = edit_metadata(models["gbt"], tmp_path / "bad.onnx", set_={key: value})
    with pytest.raises(ModelContractError, match=match):
        OnnxScorer(bad, expected_spec_hash=HASH)


def test_wrong_feature_count_is_refused(models: dict[str, str]) -> None:
    expected = [*NAMES, "extra_feature"]
    with pytest.raises(ModelContractError) as exc:
        OnnxScorer(models["gbt"], expected_spec_hash=HASH, expected_feature_names=expected)
    assert "takes 6 features" in str(exc.value) and "computes 7" in str(exc.value)
    assert "extra_feature" in str(exc.value)


def test_input_width_must_match_metadata_names(models: dict[str, str], tmp_path: Path) -> None:
    # Metadata claims 5 features, the graph takes 6: without expected names, metadata decides F.
    bad = edit_metadata(models["gbt"], tmp_path / "w.onnx", set_={"feature_names": '["a","b","c","d","e"]'})
    with pytest.raises(ModelContractError, match="takes 6 features but 5 are expected"):
        OnnxScorer(bad, expected_spec_hash=HASH)


def test_wrong_feature_names_say_which_differ(models: dict[str, str]) -> None:
    expected = list(NAMES)
    expected[2] = "sessions_1h"
    with pytest.raises(ModelContractError) as exc:
        OnnxScorer(models["gbt"], expected_spec_hash=HASH, expected_feature_names=expected)
    msg = str(exc.value)
    assert "#2: model 'f02' vs riskstream 'sessions_1h'" in msg
    assert "f01" not in msg  # only the differing position is named


def test_corrupt_file_is_refused_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(os.urandom(2048))
    with pytest.raises(ModelContractError, match="not a loadable ONNX model") as exc:
        OnnxScorer(bad, expected_spec_hash=HASH)
    assert str(bad) in str(exc.value)


def test_truncated_model_is_refused(models: dict[str, str], tmp_path: Path) -> None:
    data = Path(models["gbt"]).read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelContractError, match=str(bad)):
        OnnxScorer(bad, expected_spec_hash=HASH)


def test_missing_file_is_refused_with_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelContractError, match="cannot read model file") as exc:
        OnnxScorer(missing, expected_spec_hash=HASH)
    assert str(missing) in str(exc.value)


def meta() -> dict[str, str]:
    return contract_metadata(feature_names=NAMES, spec_hash=HASH, model_version="raw-1")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_name": "input"}, "exactly one input named 'features'"),
        ({"input_type": TensorProto.DOUBLE}, r"is tensor\(double\), expected tensor\(float\)"),
        ({"input_shape": [1, F]}, "fixed batch size 1"),
        ({"input_shape": ["N", F, 1]}, "expected \\[N, 6\\]"),
        ({"output": "three_col"}, r"returned float32 \(5, 3\)"),
        ({"output": "logit_col"}, r"probability 10\.0 for a probe row of 10s is not in \[0, 1\]"),
        ({"output": "nan_col"}, r"probability nan for a probe row of 0s is not in \[0, 1\]"),
        ({"output": "int_only"}, "no float32 tensor output"),
    ],
)
def test_unusable_io_is_refused(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    path = build_raw_model(tmp_path / "raw.onnx", metadata=meta(), n_features=F, **kwargs)
    with pytest.raises(ModelContractError, match=match):
        OnnxScorer(path, expected_spec_hash=HASH)


@pytest.mark.parametrize("output", ["probabilities", "score_1d", "score_col"])
def test_accepted_output_layouts_give_positive_class(tmp_path: Path, output: str) -> None:
    path = build_raw_model(tmp_path / "raw.onnx", metadata=meta(), n_features=F, output=output)  # type: ignore[arg-type]
    scorer = OnnxScorer(path, expected_spec_hash=HASH)
    x = rows(50)
    expected = 1.0 / (1.0 + np.exp(-x[:, 0].astype(np.float64)))
    got = scorer.score(x)
    assert got.shape == (50,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_load_model_info_reads_and_validates(models: dict[str, str]) -> None:
    info = load_model_info(models["gbt"])
    assert isinstance(info, ModelInfo)
    assert info == OnnxScorer(models["gbt"], expected_spec_hash=HASH).info
    assert load_model_info(models["gbt"], expected_spec_hash=HASH, expected_feature_names=NAMES) == info
    with pytest.raises(ModelContractError, match=OTHER_HASH):
        load_model_info(models["gbt"], expected_spec_hash=OTHER_HASH)


def test_build_model_is_deterministic(tmp_path: Path) -> None:
    a = build_model(tmp_path / "a.onnx", n_features=F, spec_hash=HASH, seed=3)
    b = build_model(tmp_path / "b.onnx", n_features=F, spec_hash=HASH, seed=3)
    c = build_model(tmp_path / "c.onnx", n_features=F, spec_hash=HASH, seed=4)
    assert Path(a).read_bytes() == Path(b).read_bytes()
    assert Path(a).read_bytes() != Path(c).read_bytes()


# --------------------------------------------------------------------------- scoring


@pytest.mark.parametrize(("name", "kind"), [("gbt", "gbt"), ("logreg", "logreg")])
def test_onnx_matches_sklearn_predict_proba(models: dict[str, str], name: str, kind: str) -> None:
    scorer = OnnxScorer(models[name], expected_spec_hash=HASH)
    x = rows(2000, seed=7)
    x[:5] = 0.0  # exact zeros and ties with split thresholds
    got = scorer.score(x)
    want = sklearn_proba(kind, x)
    assert got.dtype == np.float32 and got.shape == (2000,)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert 0.05 < float((got > 0.5).mean()) < 0.95  # the model is not a constant


@pytest.mark.parametrize("n", [1, 1000])
def test_one_run_per_call(models: dict[str, str], run_calls: list[int], n: int) -> None:
    scorer = OnnxScorer(models["gbt"], expected_spec_hash=HASH)
    run_calls.clear()  # the load-time probe ran once
    x = rows(n)
    got = scorer.score(x)
    assert run_calls == [n]
    assert got.shape == (n,) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, sklearn_proba("gbt", x), atol=1e-5)


def test_empty_batch_skips_onnx_runtime(models: dict[str, str], run_calls: list[int]) -> None:
    scorer = OnnxScorer(models["gbt"], expected_spec_hash=HASH)
    run_calls.clear()
    got = scorer.score(np.empty((0, F), dtype=np.float32))
    assert got.shape == (0,) and got.dtype == np.float32
    assert run_calls == []


def test_non_contiguous_and_float64_inputs_are_converted(models: dict[str, str]) -> None:
    scorer = OnnxScorer(models["gbt"], expected_spec_hash=HASH)
    x = rows(64)
    want = scorer.score(x)
    wide = np.repeat(x, 2, axis=1)[:, ::2]  # a strided view
    assert not wide.flags.c_contiguous
    np.testing.assert_array_equal(scorer.score(wide), want)
    np.testing.assert_array_equal(scorer.score(np.asfortranarray(x)), want)
    np.testing.assert_array_equal(scorer.score(x.astype(np.float64)), want)


# --------------------------------------------------------------------------- both twins


def make_onnx(models: dict[str, str]) -> Scorer:
    return OnnxScorer(models["gbt"], expected_spec_hash=HASH)


def make_constant(models: dict[str, str]) -> Scorer:
    return ConstantScorer(0.25, feature_names=NAMES, spec_hash=HASH)


@pytest.mark.parametrize("make", [make_onnx, make_constant], ids=["onnx", "constant"])
class TestScorerContract:
    def test_shapes_and_dtype(self, models: dict[str, str], make: Callable[[dict[str, str]], Scorer]) -> None:
        scorer = make(models)
        for n in (0, 1, 17):
            got = scorer.score(rows(n))
            assert got.shape == (n,) and got.dtype == np.float32
            assert np.all((got >= 0.0) & (got <= 1.0))

    @pytest.mark.parametrize("shape", [(4, F - 1), (4, F + 1), (0, F + 1)])
    def test_wrong_width_raises(
        self, models: dict[str, str], make: Callable[[dict[str, str]], Scorer], shape: tuple[int, int]
    ) -> None:
        with pytest.raises(ValueError, match=f"{shape[1]} columns but the model takes {F}"):
            make(models).score(np.zeros(shape, dtype=np.float32))

    def test_one_dimensional_input_raises(
        self, models: dict[str, str], make: Callable[[dict[str, str]], Scorer]
    ) -> None:
        with pytest.raises(ValueError, match="must be 2-D"):
            make(models).score(np.zeros(F, dtype=np.float32))

    def test_info_describes_the_spec(self, models: dict[str, str], make: Callable[[dict[str, str]], Scorer]) -> None:
        info = make(models).info
        assert info.feature_spec_hash == HASH and info.feature_names == tuple(NAMES)


# --------------------------------------------------------------------------- hot reload


@pytest.fixture
def live(models: dict[str, str], tmp_path: Path) -> tuple[Path, ManualClock]:
    path = tmp_path / "live" / "model.onnx"
    path.parent.mkdir()
    shutil.copyfile(models["gbt"], path)
    return path, ManualClock()


def swap_in(src: str | Path, live_path: Path) -> None:
    """Deploy the way operators should: write next to the target, then rename over it."""
    staging = live_path.with_suffix(".tmp")
    shutil.copyfile(src, staging)
    os.replace(staging, live_path)


def test_hot_reload_swaps_to_the_new_model(models: dict[str, str], live: tuple[Path, ManualClock]) -> None:
    path, clock = live
    scorer = OnnxScorer(path, expected_spec_hash=HASH, clock=clock)
    x = rows(300)
    want_a = sklearn_proba("gbt", x)
    want_b = sklearn_proba("gbt", x, seed=1, n_estimators=10, max_depth=2)
    assert np.abs(want_a - want_b).max() > 0.05  # A and B are distinguishable
    np.testing.assert_allclose(scorer.score(x), want_a, atol=1e-5)

    swap_in(models["gbt_b"], path)
    clock.advance(2.0)
    assert scorer.maybe_reload() is True
    assert scorer.info.model_version == "gbt-2"
    assert scorer.info.sha256 == hashlib.sha256(Path(models["gbt_b"]).read_bytes()).hexdigest()
    np.testing.assert_allclose(scorer.score(x), want_b, atol=1e-5)
    clock.advance(2.0)
    assert scorer.maybe_reload() is False  # nothing changed since


def test_no_reload_before_the_check_interval(models: dict[str, str], live: tuple[Path, ManualClock]) -> None:
    path, clock = live
    scorer = OnnxScorer(path, expected_spec_hash=HASH, clock=clock, reload_check_s=5.0)
    swap_in(models["gbt_b"], path)
    clock.advance(4.9)
    assert scorer.maybe_reload() is False
    assert scorer.info.model_version == "gbt-1"
    clock.advance(0.1)
    assert scorer.maybe_reload() is True
    assert scorer.info.model_version == "gbt-2"


def test_invalid_replacement_keeps_serving_and_warns_once(
    models: dict[str, str], live: tuple[Path, ManualClock], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, clock = live
    scorer = OnnxScorer(path, expected_spec_hash=HASH, clock=clock)
    x = rows(200)
    swap_in(models["gbt_b"], path)
    clock.advance(2.0)
    assert scorer.maybe_reload() is True
    want_b = scorer.score(x)

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 100)
    caplog.set_level(logging.WARNING, logger="riskstream.scoring")
    swap_in(corrupt, path)
    clock.advance(2.0)
    assert scorer.maybe_reload() is False
    assert scorer.info.model_version == "gbt-2"
    np.testing.assert_array_equal(scorer.score(x), want_b)
    warnings = [r for r in caplog.records if r.name == "riskstream.scoring" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
    assert "still serving model gbt-2" in warnings[0].getMessage()

    clock.advance(2.0)
    assert scorer.maybe_reload() is False  # same bad file: not re-validated, not re-logged
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1

    swap_in(models["other_hash"], path)
    clock.advance(2.0)
    assert scorer.maybe_reload() is False
    np.testing.assert_array_equal(scorer.score(x), want_b)
    last = caplog.records[-1].getMessage()
    assert OTHER_HASH in last and HASH in last

    swap_in(models["gbt"], path)  # a good file again is picked up
    clock.advance(2.0)
    assert scorer.maybe_reload() is True
    assert scorer.info.model_version == "gbt-1"


def test_a_replacement_that_is_not_a_probability_is_refused(
    models: dict[str, str], live: tuple[Path, ManualClock], tmp_path: Path
) -> None:
    path, clock = live
    scorer = OnnxScorer(path, expected_spec_hash=HASH, clock=clock)
    x = rows(50)
    before = scorer.score(x)
    for output in ("logit_col", "nan_col"):
        bad = build_raw_model(tmp_path / f"{output}.onnx", metadata=meta(), n_features=F, output=output)  # type: ignore[arg-type]
        swap_in(bad, path)
        clock.advance(2.0)
        assert scorer.maybe_reload() is False
        assert scorer.info.model_version == "gbt-1"
        np.testing.assert_array_equal(scorer.score(x), before)


def test_missing_file_during_reload_keeps_serving(
    live: tuple[Path, ManualClock], caplog: pytest.LogCaptureFixture
) -> None:
    path, clock = live
    scorer = OnnxScorer(path, expected_spec_hash=HASH, clock=clock)
    path.unlink()
    caplog.set_level(logging.WARNING, logger="riskstream.scoring")
    clock.advance(2.0)
    assert scorer.maybe_reload() is False
    assert scorer.score(rows(3)).shape == (3,)
    assert any("cannot be read" in r.getMessage() for r in caplog.records)


def test_identical_bytes_are_not_swapped(models: dict[str, str], live: tuple[Path, ManualClock]) -> None:
    path, clock = live
    scorer = OnnxScorer(path, expected_spec_hash=HASH, clock=clock)
    before = scorer.info
    swap_in(models["gbt"], path)  # new inode, same content
    clock.advance(2.0)
    assert scorer.maybe_reload() is False
    assert scorer.info is before


def test_reload_keeps_expected_feature_names(models: dict[str, str], live: tuple[Path, ManualClock],
                                             tmp_path: Path) -> None:
    path, clock = live
    scorer = OnnxScorer(path, expected_spec_hash=HASH, expected_feature_names=NAMES, clock=clock)
    renamed = [*NAMES[:-1], "renamed"]
    other = build_model(tmp_path / "renamed.onnx", n_features=F, feature_names=renamed, spec_hash=HASH,
                        model_version="renamed-1")
    swap_in(other, path)
    clock.advance(2.0)
    assert scorer.maybe_reload() is False
    assert scorer.info.model_version == "gbt-1"


# --------------------------------------------------------------------------- ConstantScorer


def test_constant_scorer_returns_its_value() -> None:
    scorer = ConstantScorer(0.8, feature_names=["a", "b"])
    got = scorer.score(np.zeros((3, 2), dtype=np.float32))
    np.testing.assert_array_equal(got, np.full(3, 0.8, dtype=np.float32))
    assert scorer.calls == 1 and scorer.maybe_reload() is False


def test_constant_scorer_with_a_function_and_info(models: dict[str, str]) -> None:
    info = load_model_info(models["gbt"])
    scorer = ConstantScorer(lambda x: 1.0 / (1.0 + np.exp(-x[:, 0])), info=info)
    assert scorer.info is info
    x = rows(10)
    np.testing.assert_allclose(scorer.score(x), 1.0 / (1.0 + np.exp(-x[:, 0])), rtol=1e-6)
    assert scorer.score(x).dtype == np.float32


def test_constant_scorer_rejects_bad_setups() -> None:
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        ConstantScorer(1.2, feature_names=["a"])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        ConstantScorer(math.nan, feature_names=["a"])
    with pytest.raises(ValueError, match="needs info= or feature_names="):
        ConstantScorer(0.5)
    bad_fn = ConstantScorer(lambda x: np.zeros((len(x), 2)), feature_names=["a"])
    with pytest.raises(ValueError, match="returned shape \\(4, 2\\)"):
        bad_fn.score(np.zeros((4, 1), dtype=np.float32))
