"""ONNX export of the classifiers (DESIGN §5 model contract) through skl2onnx.

* input ``features`` float32 ``[None, F]``; outputs ``label`` and ``probabilities`` ``[N, 2]``
  (``zipmap=False``);
* ``metadata_props``: feature_names, feature_spec_hash, model_version, trained_at, thresholds,
  feature_baseline (+ a few descriptive keys), sorted by key so equal inputs give equal bytes.

Two small custom pieces are registered with skl2onnx (``update_registered_converter``): the
``SignedLog1p`` feature transform of the logistic model, and the gradient-boosted trees. The trees are a scikit-learn ``HistGradientBoostingClassifier`` wrapped in
:class:`CalibratedGBT`, which also carries a Platt calibration ``sigmoid(a·f + b)`` of the raw
score ``f``. Its skl2onnx converter is registered here (``update_registered_converter``) because:

* the calibration folds into the tree ensemble exactly (leaf weights × a, base value a·f0 + b),
  so the calibrated model is one ``TreeEnsembleClassifier`` node and no bigger than the raw one;
* skl2onnx 1.20's own HistGradientBoosting converter fails with onnx 1.23 (it passes a Python
  ``False`` into the integer attribute ``nodes_missing_value_tracks_true`` for leaves);
* split thresholds are written as the largest float32 not above scikit-learn's float64 threshold,
  so for float32 inputs every split decides exactly as in scikit-learn (nearest rounding can move
  a threshold onto a data value and flip rows).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.ensemble import HistGradientBoostingClassifier

INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"


class CalibratedGBT(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A fitted HistGradientBoostingClassifier with a Platt calibration of its raw score."""

    def __init__(self, gbt: HistGradientBoostingClassifier, scale: float = 1.0, shift: float = 0.0) -> None:
        self.gbt = gbt
        self.scale = scale
        self.shift = shift

    @property
    def classes_(self) -> NDArray[np.int64]:
        return np.asarray(self.gbt.classes_)

    def fit(self, x: Any, y: Any) -> CalibratedGBT:  # pragma: no cover - built from a fitted gbt
        raise NotImplementedError("CalibratedGBT wraps an already fitted model")

    def decision_function(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        raw = np.asarray(self.gbt.decision_function(x), dtype=np.float64)
        return self.scale * raw + self.shift

    def predict_proba(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        p = 1.0 / (1.0 + np.exp(-self.decision_function(x)))
        return np.column_stack([1.0 - p, p])

    def predict(self, x: NDArray[np.float32]) -> NDArray[np.int64]:
        return (self.predict_proba(x)[:, 1] >= 0.5).astype(np.int64)

    def n_trees(self) -> int:
        return len(self.gbt._predictors)


class SignedLog1p(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """``sign(x)·log(1 + |x|)`` in float32: tames the heavy tails of counts, minutes and ratios."""

    def fit(self, x: Any, y: Any = None) -> SignedLog1p:
        self.n_features_in_ = np.asarray(x).shape[1]
        return self

    def transform(self, x: Any) -> NDArray[np.float32]:
        x32 = np.asarray(x, dtype=np.float32)
        # The same float32 operations as the ONNX graph (Abs, Add, Log, Sign, Mul).
        return np.asarray(np.sign(x32) * np.log(np.float32(1.0) + np.abs(x32)), dtype=np.float32)


def _float32_floor(t: float) -> float:
    """Largest float32 <= t: for float32 x, ``x <= t`` iff ``x <= result``."""
    f = np.float32(t)
    if float(f) > t:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def tree_attributes(model: CalibratedGBT) -> dict[str, Any]:
    """TreeEnsembleClassifier attributes for a binary HistGradientBoostingClassifier."""
    gbt = model.gbt
    if len(gbt.classes_) != 2:
        raise ValueError("only binary classifiers are supported")
    a, b = float(model.scale), float(model.shift)
    base = float(np.ravel(gbt._baseline_prediction)[0])
    attrs: dict[str, list[Any]] = {k: [] for k in (
        "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes", "nodes_values",
        "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true",
        "class_treeids", "class_nodeids", "class_ids", "class_weights")}
    for tree_id, per_class in enumerate(gbt._predictors):
        (predictor,) = per_class
        for node_id, node in enumerate(predictor.nodes):
            attrs["nodes_treeids"].append(tree_id)
            attrs["nodes_nodeids"].append(node_id)
            if node["is_leaf"]:
                attrs["nodes_featureids"].append(0)
                attrs["nodes_modes"].append("LEAF")
                attrs["nodes_values"].append(0.0)
                attrs["nodes_truenodeids"].append(0)
                attrs["nodes_falsenodeids"].append(0)
                attrs["nodes_missing_value_tracks_true"].append(0)
                attrs["class_treeids"].append(tree_id)
                attrs["class_nodeids"].append(node_id)
                attrs["class_ids"].append(0)
                attrs["class_weights"].append(a * float(node["value"]))
            else:
                if node["is_categorical"]:
                    raise ValueError("categorical splits are not supported")
                attrs["nodes_featureids"].append(int(node["feature_idx"]))
                attrs["nodes_modes"].append("BRANCH_LEQ")
                attrs["nodes_values"].append(_float32_floor(float(node["num_threshold"])))
                attrs["nodes_truenodeids"].append(int(node["left"]))
                attrs["nodes_falsenodeids"].append(int(node["right"]))
                attrs["nodes_missing_value_tracks_true"].append(int(node["missing_go_to_left"]))
    out: dict[str, Any] = dict(attrs)
    out["post_transform"] = "LOGISTIC"
    out["base_values"] = [a * base + b]
    out["classlabels_int64s"] = [int(c) for c in gbt.classes_]
    return out


def _shape_calculator(operator: Any) -> None:
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes

    calculate_linear_classifier_output_shapes(operator)


def _converter(scope: Any, operator: Any, container: Any) -> None:
    attrs = tree_attributes(operator.raw_operator)
    container.add_node(
        "TreeEnsembleClassifier",
        operator.inputs[0].full_name,
        [operator.outputs[0].full_name, operator.outputs[1].full_name],
        op_domain="ai.onnx.ml",
        op_version=1,
        name=scope.get_unique_operator_name("TreeEnsembleClassifier"),
        **attrs,
    )


def _log_shape_calculator(operator: Any) -> None:
    from skl2onnx.common.data_types import FloatTensorType

    n = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = FloatTensorType([n, operator.raw_operator.n_features_in_])


def _log_converter(scope: Any, operator: Any, container: Any) -> None:
    from onnx import TensorProto

    x = operator.inputs[0].full_name
    names = {k: scope.get_unique_variable_name(k) for k in ("abs", "one", "plus", "log", "sign")}
    container.add_initializer(names["one"], TensorProto.FLOAT, [], [1.0])
    container.add_node("Abs", x, names["abs"], name=scope.get_unique_operator_name("Abs"))
    container.add_node("Add", [names["abs"], names["one"]], names["plus"], name=scope.get_unique_operator_name("Add"))
    container.add_node("Log", names["plus"], names["log"], name=scope.get_unique_operator_name("Log"))
    container.add_node("Sign", x, names["sign"], name=scope.get_unique_operator_name("Sign"))
    container.add_node("Mul", [names["sign"], names["log"]], operator.outputs[0].full_name,
                       name=scope.get_unique_operator_name("Mul"))


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter

    update_registered_converter(
        CalibratedGBT, "RiskstreamCalibratedGBT", _shape_calculator, _converter,
        options={"zipmap": [True, False, "columns"], "nocl": [True, False]},
    )
    update_registered_converter(SignedLog1p, "RiskstreamSignedLog1p", _log_shape_calculator, _log_converter)
    _registered = True


def to_onnx(model: Any, n_features: int, *, graph_name: str) -> onnx.ModelProto:
    """Convert a fitted classifier (CalibratedGBT or a scikit-learn pipeline) with skl2onnx."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    _register()
    onx: onnx.ModelProto = convert_sklearn(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    onx.graph.name = graph_name  # skl2onnx names the graph with a random uuid
    onx.producer_name = "riskstream-train"
    onx.producer_version = ""
    onx.doc_string = ""
    return onx


def set_metadata(model: onnx.ModelProto, metadata: Mapping[str, str]) -> None:
    """Replace ``metadata_props`` (keys sorted, for stable bytes)."""
    del model.metadata_props[:]
    for key in sorted(metadata):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, metadata[key]


def onnx_probabilities(model: onnx.ModelProto, x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Positive-class probabilities from ONNX Runtime (one thread), for the parity check."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
    out = sess.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]
    return np.asarray(out[:, 1], dtype=np.float32)


def json_dumps(obj: Any) -> str:
    """Compact, key-sorted JSON with finite floats (metadata values)."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return 0.0
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), sort_keys=True, separators=(",", ":"))
