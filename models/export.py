"""ONNX export of the classifiers (docs/contracts.md §5 model contract) through skl2onnx.

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


class ClippedGBT(CalibratedGBT):
    """A CalibratedGBT whose inputs are first clipped to ``[lo, hi]`` per feature (float32).

    ``lo``/``hi`` are the training range, so the model saturates outside it instead of
    extrapolating; a feature with ``lo == hi`` is held constant (left out of the model). The ONNX
    graph does the same with ``Max``/``Min`` before the tree ensemble.
    """

    def __init__(self, gbt: HistGradientBoostingClassifier, scale: float = 1.0, shift: float = 0.0,
                 lo: NDArray[np.float32] | None = None, hi: NDArray[np.float32] | None = None) -> None:
        super().__init__(gbt, scale, shift)
        self.lo = lo
        self.hi = hi

    def clip(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        x32 = np.asarray(x, dtype=np.float32)
        if self.lo is None or self.hi is None:
            return x32
        return np.minimum(np.maximum(x32, self.lo), self.hi)

    def decision_function(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        return super().decision_function(self.clip(x))


# The markers-of-harm layer (issue #11): a transparent, monotone rule on single-axis extremes with
# literature anchors, combined with the learned model by a noisy-OR. Ramp r = clip((v - start) /
# (full - start), 0, 1) per marker, p_marker = MARKER_CAP x max(r); v is the (clipped) feature, times
# the feed share (social + short video) for feed_weighted markers. Every ramp rises with a +1 feature
# of stream.core.features.directions, so the layer can only add risk where the literature says so.
MARKERS: tuple[tuple[str, str, bool, float, float, str], ...] = (
    ("night", "night_share_7d", False, 0.12, 0.30,
     "problematic 10-20 % of time at 00-05 vs 2-8 % typical (docs/research.md §9; Choi 2017, Common Sense 2023)"),
    ("feed_binge", "long_sess_30m_day_7d", True, 1.0, 2.5,
     "30+ min feed sessions, 1-2.5 a day (Terzimehić 2023 rabbit holes; 60-min prompts, docs/research.md §6 #6)"),
)
# Not markers (checked on the training population, model card): late sessions and curfew minutes
# also reach their literature levels for many healthy heavy users; the escalation ratios are mostly
# week-to-week noise there (positive rate ~0.12 above 1.8). The learned model weighs those.
MARKER_CAP = 0.95
FEED_FEATURES = ("cat_share_social_7d", "cat_share_short_video_7d")


class MarkedGBT(ClippedGBT):
    """ClippedGBT ⊕ markers of harm: p = 1 − (1 − p_model)(1 − p_marker)."""

    def __init__(self, gbt: HistGradientBoostingClassifier, scale: float = 1.0, shift: float = 0.0,
                 lo: NDArray[np.float32] | None = None, hi: NDArray[np.float32] | None = None,
                 feature_names: tuple[str, ...] = ()) -> None:
        super().__init__(gbt, scale, shift, lo, hi)
        self.feature_names = feature_names

    def _marker_arrays(self) -> tuple[list[int], NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], list[int]]:
        idx = [self.feature_names.index(m[1]) for m in MARKERS]
        feed = np.array([1.0 if m[2] else 0.0 for m in MARKERS], dtype=np.float32)
        start = np.array([m[3] for m in MARKERS], dtype=np.float32)
        width = np.array([m[4] - m[3] for m in MARKERS], dtype=np.float32)
        return idx, feed, start, width, [self.feature_names.index(f) for f in FEED_FEATURES]

    def marker_ramps(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Per-marker ramps [N, M] in [0, 1] (float32, as in the ONNX graph)."""
        xc = self.clip(x)
        idx, feed, start, width, fidx = self._marker_arrays()
        fs = xc[:, fidx].sum(axis=1, keepdims=True, dtype=np.float32)
        v = xc[:, idx] * (feed * fs + (np.float32(1) - feed))
        out: NDArray[np.float32] = np.clip((v - start) / width, np.float32(0), np.float32(1)).astype(np.float32)
        return out

    def marker_probability(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        return np.asarray(np.float32(MARKER_CAP) * self.marker_ramps(x).max(axis=1), dtype=np.float64)

    def predict_proba(self, x: NDArray[np.float32]) -> NDArray[np.float64]:
        p_ml = super().predict_proba(x)[:, 1]
        q = (1.0 - p_ml) * (1.0 - self.marker_probability(x))
        return np.column_stack([q, 1.0 - q])


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
    model = operator.raw_operator
    attrs = tree_attributes(model)
    x = operator.inputs[0].full_name
    if isinstance(model, ClippedGBT) and model.lo is not None and model.hi is not None:
        from onnx import TensorProto

        n = len(model.lo)
        names = {k: scope.get_unique_variable_name(k) for k in ("clip_lo", "clip_hi", "above_lo", "clipped")}
        container.add_initializer(names["clip_lo"], TensorProto.FLOAT, [1, n], [float(v) for v in model.lo])
        container.add_initializer(names["clip_hi"], TensorProto.FLOAT, [1, n], [float(v) for v in model.hi])
        container.add_node("Max", [x, names["clip_lo"]], names["above_lo"], name=scope.get_unique_operator_name("Max"))
        container.add_node("Min", [names["above_lo"], names["clip_hi"]], names["clipped"],
                           name=scope.get_unique_operator_name("Min"))
        x = names["clipped"]
    marked = isinstance(model, MarkedGBT)
    if marked:
        tree_out = [scope.get_unique_variable_name("tree_label"), scope.get_unique_variable_name("tree_proba")]
    else:
        tree_out = [operator.outputs[0].full_name, operator.outputs[1].full_name]
    container.add_node(
        "TreeEnsembleClassifier",
        x,
        tree_out,
        op_domain="ai.onnx.ml",
        op_version=1,
        name=scope.get_unique_operator_name("TreeEnsembleClassifier"),
        **attrs,
    )
    if marked:
        _marker_nodes(scope, container, model, x, tree_out[1], operator.outputs[0].full_name,
                      operator.outputs[1].full_name)


def _marker_nodes(scope: Any, container: Any, model: MarkedGBT, x: str, tree_proba: str, label_out: str,
                  proba_out: str) -> None:
    """p = 1 − (1 − p_tree)(1 − cap·max_m ramp_m(x)) and the label argmax, as ONNX nodes."""
    from onnx import TensorProto

    idx, feed, start, width, fidx = model._marker_arrays()
    m = len(idx)
    v = {k: scope.get_unique_variable_name(k) for k in (
        "mk_idx", "mk_fidx", "mk_feedw", "mk_notfeed", "mk_start", "mk_width", "mk_zero", "mk_one", "mk_cap",
        "mk_base", "mk_fcols", "mk_fsum", "mk_fw", "mk_mult", "mk_val", "mk_sub", "mk_div", "mk_ramp",
        "mk_max", "mk_pm", "mk_s0", "mk_s1", "mk_ax", "mk_pml", "mk_a", "mk_b", "mk_q", "mk_p", "one_s")}
    op = scope.get_unique_operator_name
    container.add_initializer(v["mk_idx"], TensorProto.INT64, [m], idx)
    container.add_initializer(v["mk_fidx"], TensorProto.INT64, [len(fidx)], fidx)
    container.add_initializer(v["mk_feedw"], TensorProto.FLOAT, [1, m], feed.tolist())
    container.add_initializer(v["mk_notfeed"], TensorProto.FLOAT, [1, m], (1.0 - feed).tolist())
    container.add_initializer(v["mk_start"], TensorProto.FLOAT, [1, m], start.tolist())
    container.add_initializer(v["mk_width"], TensorProto.FLOAT, [1, m], width.tolist())
    container.add_initializer(v["mk_zero"], TensorProto.FLOAT, [], [0.0])
    container.add_initializer(v["mk_one"], TensorProto.FLOAT, [], [1.0])
    container.add_initializer(v["mk_cap"], TensorProto.FLOAT, [], [MARKER_CAP])
    container.add_initializer(v["mk_s0"], TensorProto.INT64, [1], [1])
    container.add_initializer(v["mk_s1"], TensorProto.INT64, [1], [2])
    container.add_initializer(v["mk_ax"], TensorProto.INT64, [1], [1])
    container.add_node("Gather", [x, v["mk_idx"]], v["mk_base"], axis=1, name=op("Gather"))
    container.add_node("Gather", [x, v["mk_fidx"]], v["mk_fcols"], axis=1, name=op("Gather"))
    container.add_node("ReduceSum", [v["mk_fcols"], v["mk_ax"]], v["mk_fsum"], keepdims=1, name=op("ReduceSum"))
    container.add_node("Mul", [v["mk_feedw"], v["mk_fsum"]], v["mk_fw"], name=op("Mul"))
    container.add_node("Add", [v["mk_fw"], v["mk_notfeed"]], v["mk_mult"], name=op("Add"))
    container.add_node("Mul", [v["mk_base"], v["mk_mult"]], v["mk_val"], name=op("Mul"))
    container.add_node("Sub", [v["mk_val"], v["mk_start"]], v["mk_sub"], name=op("Sub"))
    container.add_node("Div", [v["mk_sub"], v["mk_width"]], v["mk_div"], name=op("Div"))
    container.add_node("Clip", [v["mk_div"], v["mk_zero"], v["mk_one"]], v["mk_ramp"], name=op("Clip"))
    container.add_node("ReduceMax", [v["mk_ramp"]], v["mk_max"], axes=[1], keepdims=1, name=op("ReduceMax"))
    container.add_node("Mul", [v["mk_max"], v["mk_cap"]], v["mk_pm"], name=op("Mul"))
    container.add_node("Slice", [tree_proba, v["mk_s0"], v["mk_s1"], v["mk_ax"]], v["mk_pml"], name=op("Slice"))
    container.add_node("Sub", [v["mk_one"], v["mk_pml"]], v["mk_a"], name=op("Sub"))
    container.add_node("Sub", [v["mk_one"], v["mk_pm"]], v["mk_b"], name=op("Sub"))
    container.add_node("Mul", [v["mk_a"], v["mk_b"]], v["mk_q"], name=op("Mul"))
    container.add_node("Sub", [v["mk_one"], v["mk_q"]], v["mk_p"], name=op("Sub"))
    container.add_node("Concat", [v["mk_q"], v["mk_p"]], proba_out, axis=1, name=op("Concat"))
    container.add_node("ArgMax", [proba_out], label_out, axis=1, keepdims=0, name=op("ArgMax"))


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
    update_registered_converter(
        ClippedGBT, "RiskstreamClippedGBT", _shape_calculator, _converter,
        options={"zipmap": [True, False, "columns"], "nocl": [True, False]},
    )
    update_registered_converter(
        MarkedGBT, "RiskstreamMarkedGBT", _shape_calculator, _converter,
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
