"""The model contract: what a scorer is, and the checks every ONNX model must pass."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

import numpy as np
import onnxruntime as ort
from numpy.typing import ArrayLike, NDArray

from stream.core.layout import EVIDENCE_DAYS_KEY, MAX_EVIDENCE_DAYS
from stream.errors import ModelContractError

__all__ = ["INPUT_NAME", "PROBABILITY_OUTPUT", "REQUIRED_METADATA", "ModelInfo", "Scorer"]

INPUT_NAME = "features"
PROBABILITY_OUTPUT = "probabilities"
REQUIRED_METADATA = ("feature_names", "feature_spec_hash", "model_version", "trained_at", "thresholds")
# Hysteresis pairs: when both keys are present, exit must not exceed enter.
_THRESHOLD_PAIRS = (("elevated_enter", "elevated_exit"), ("high_enter", "high_exit"))
_FIX = "retrain (riskstream train) or use a matching model"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a loaded model declares about itself; ``sha256`` is of the file bytes."""

    path: str
    model_version: str
    feature_spec_hash: str
    feature_names: tuple[str, ...]
    trained_at: str
    thresholds: dict[str, float]
    metadata: dict[str, str]
    sha256: str


class Scorer(Protocol):
    """Turns a float32 feature matrix [N, F] into positive-class probabilities [N]."""

    @property
    def info(self) -> ModelInfo: ...

    def score(self, x: NDArray[np.float32]) -> NDArray[np.float32]: ...

    def maybe_reload(self, accept: Callable[[ModelInfo], object] | None = None) -> bool:
        """Serve a changed model if there is one and ``accept`` (when given) does not raise for
        it; True when a new model now serves."""
        ...


# --------------------------------------------------------------------------- validation helpers


def _as_feature_matrix(x: ArrayLike, n_features: int) -> NDArray[np.float32]:
    """Return ``x`` as a C-contiguous float32 [N, n_features] matrix (no copy when it already is)."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"feature matrix must be 2-D [N, {n_features}], got shape {arr.shape}")
    if arr.shape[1] != n_features:
        raise ValueError(
            f"feature matrix has {arr.shape[1]} columns but the model takes {n_features} features"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def _parse_metadata(path: str, meta: Mapping[str, str], sha256: str) -> ModelInfo:
    missing = [k for k in REQUIRED_METADATA if not meta.get(k)]
    if "feature_spec_hash" in missing:
        raise ModelContractError(
            f"model {path} has no feature_spec_hash in its metadata, so it cannot be matched to "
            f"this riskstream's feature spec; {_FIX}"
        )
    if missing:
        raise ModelContractError(
            f"model {path} lacks required metadata {missing} (needs {list(REQUIRED_METADATA)}); "
            f"re-export it with riskstream train"
        )
    try:
        names = json.loads(meta["feature_names"])
    except ValueError as exc:
        raise ModelContractError(f"model {path}: metadata feature_names is not valid JSON: {exc}") from exc
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ModelContractError(f"model {path}: metadata feature_names must be a non-empty JSON list of strings")
    if len(set(names)) != len(names):
        raise ModelContractError(f"model {path}: metadata feature_names has duplicates")
    try:
        datetime.fromisoformat(meta["trained_at"])
    except ValueError as exc:
        raise ModelContractError(
            f"model {path}: metadata trained_at {meta['trained_at']!r} is not an ISO-8601 timestamp"
        ) from exc
    thresholds = _parse_thresholds(path, meta["thresholds"])
    return ModelInfo(
        path=path,
        model_version=meta["model_version"],
        feature_spec_hash=meta["feature_spec_hash"],
        feature_names=tuple(names),
        trained_at=meta["trained_at"],
        thresholds=thresholds,
        metadata=dict(meta),
        sha256=sha256,
    )


def _parse_thresholds(path: str, raw: str) -> dict[str, float]:
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise ModelContractError(f"model {path}: metadata thresholds is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ModelContractError(f"model {path}: metadata thresholds must be a JSON object")
    out: dict[str, float] = {}
    for key, value in obj.items():
        if key == EVIDENCE_DAYS_KEY:  # not a probability: the days its thresholds are averaged over
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EVIDENCE_DAYS:
                raise ModelContractError(f"model {path}: thresholds {key}={value!r} must be a whole number "
                                         f"of days in 0..{MAX_EVIDENCE_DAYS}")
            out[key] = float(value)
            continue
        # bool is an int subclass; "true" is not a threshold.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ModelContractError(f"model {path}: threshold {key}={value!r} must be a number in [0, 1]")
        out[key] = float(value)
    for enter, exit_ in _THRESHOLD_PAIRS:
        if enter in out and exit_ in out and out[exit_] > out[enter]:
            raise ModelContractError(
                f"model {path}: threshold {exit_}={out[exit_]} exceeds {enter}={out[enter]}; "
                f"an exit threshold must not be above its enter threshold"
            )
    return out


def _check_against_expected(
    info: ModelInfo, expected_spec_hash: str | None, expected_feature_names: Sequence[str] | None
) -> None:
    if expected_spec_hash is not None and info.feature_spec_hash != expected_spec_hash:
        raise ModelContractError(
            f"model {info.path} was trained for feature spec {info.feature_spec_hash} but this "
            f"riskstream computes {expected_spec_hash}; {_FIX}"
        )
    if expected_feature_names is None:
        return
    expected = tuple(expected_feature_names)
    if info.feature_names == expected:
        return
    if len(info.feature_names) != len(expected):
        only_model = [n for n in info.feature_names if n not in expected]
        only_ours = [n for n in expected if n not in info.feature_names]
        raise ModelContractError(
            f"model {info.path} takes {len(info.feature_names)} features but this riskstream computes "
            f"{len(expected)} (only in model: {only_model[:5]}, only in riskstream: {only_ours[:5]}); {_FIX}"
        )
    diffs = [
        f"#{i}: model {m!r} vs riskstream {e!r}"
        for i, (m, e) in enumerate(zip(info.feature_names, expected))
        if m != e
    ]
    shown = "; ".join(diffs[:5]) + (f"; … {len(diffs) - 5} more" if len(diffs) > 5 else "")
    raise ModelContractError(f"model {info.path} feature names differ from this riskstream's: {shown}; {_FIX}")


def _select_output(path: str, session: ort.InferenceSession) -> str:
    """Name the output that carries the positive-class probability."""
    outputs = session.get_outputs()
    chosen = next((o for o in outputs if o.name == PROBABILITY_OUTPUT), None)
    if chosen is None:
        floats = [o for o in outputs if o.type == "tensor(float)"]
        if not floats:
            described = [(o.name, o.type) for o in outputs]
            raise ModelContractError(
                f"model {path} has no float32 tensor output (outputs: {described}); export it "
                f"with a '{PROBABILITY_OUTPUT}' output (skl2onnx: options={{'zipmap': False}})"
            )
        chosen = floats[-1]
    if chosen.type != "tensor(float)":
        raise ModelContractError(
            f"model {path}: output {chosen.name!r} is {chosen.type}, expected tensor(float) "
            f"(skl2onnx: convert with options={{'zipmap': False}})"
        )
    return str(chosen.name)


def _check_input(path: str, session: ort.InferenceSession, n_features: int) -> None:
    inputs = session.get_inputs()
    described = [(i.name, i.type, i.shape) for i in inputs]
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        raise ModelContractError(
            f"model {path} must have exactly one input named '{INPUT_NAME}', has {described}; "
            f"export it with initial_types=[('{INPUT_NAME}', FloatTensorType([None, {n_features}]))]"
        )
    inp = inputs[0]
    if inp.type != "tensor(float)":
        raise ModelContractError(f"model {path}: input '{INPUT_NAME}' is {inp.type}, expected tensor(float)")
    shape = inp.shape
    if len(shape) != 2:
        raise ModelContractError(f"model {path}: input '{INPUT_NAME}' has shape {shape}, expected [N, {n_features}]")
    if isinstance(shape[0], int):
        raise ModelContractError(
            f"model {path}: input '{INPUT_NAME}' has a fixed batch size {shape[0]}; export it with "
            f"a dynamic first dimension (None)"
        )
    if isinstance(shape[1], int) and shape[1] != n_features:
        raise ModelContractError(
            f"model {path}: input '{INPUT_NAME}' takes {shape[1]} features but {n_features} are "
            f"expected; {_FIX}"
        )
