"""Builds small ONNX models that follow the model contract (docs/contracts.md §5), for tests and benchmarks.

Until the real shipped model exists, tests train one here: a scikit-learn classifier on synthetic
data, converted with skl2onnx (``zipmap=False``, input ``features``), with contract metadata.
The same arguments give the same file bytes (``trained_at`` is fixed unless passed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.base import ClassifierMixin
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

DEFAULT_THRESHOLDS = {"elevated_enter": 0.4, "elevated_exit": 0.3, "high_enter": 0.7, "high_exit": 0.6}
DEFAULT_TRAINED_AT = "2024-01-01T00:00:00+00:00"

Kind = Literal["gbt", "logreg"]


def default_feature_names(n_features: int) -> list[str]:
    return [f"f{i:02d}" for i in range(n_features)]


def synthetic_data(n_rows: int, n_features: int, seed: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Gaussian features; label = x0 + 0.5*x1 + noise > 0.2, so both classes are well represented."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_rows, n_features)).astype(np.float32)
    signal = x[:, 0] + (0.5 * x[:, 1] if n_features > 1 else 0.0)
    y = (signal + rng.normal(scale=0.5, size=n_rows) > 0.2).astype(np.int64)
    return x, y


def train_classifier(
    *, n_features: int, seed: int = 0, kind: Kind = "gbt", n_estimators: int = 30, max_depth: int = 3,
    n_rows: int = 2000,
) -> ClassifierMixin:
    """The fitted scikit-learn model that ``build_model`` converts (same args, same model)."""
    x, y = synthetic_data(n_rows, n_features, seed)
    clf: ClassifierMixin
    if kind == "gbt":
        clf = GradientBoostingClassifier(n_estimators=n_estimators, max_depth=max_depth, random_state=seed)
    elif kind == "logreg":
        clf = LogisticRegression(max_iter=1000)
    else:
        raise ValueError(f"unknown kind {kind!r}; use 'gbt' or 'logreg'")
    clf.fit(x, y)
    return clf


def contract_metadata(
    *, feature_names: Sequence[str], spec_hash: str, model_version: str,
    thresholds: Mapping[str, float] | None = None, trained_at: str = DEFAULT_TRAINED_AT,
) -> dict[str, str]:
    return {
        "feature_names": json.dumps(list(feature_names)),
        "feature_spec_hash": spec_hash,
        "model_version": model_version,
        "trained_at": trained_at,
        "thresholds": json.dumps(dict(DEFAULT_THRESHOLDS if thresholds is None else thresholds)),
    }


def set_metadata(model: onnx.ModelProto, metadata: Mapping[str, str]) -> None:
    """Replace ``model.metadata_props`` with ``metadata`` (keys sorted, for stable bytes)."""
    del model.metadata_props[:]
    for key in sorted(metadata):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, metadata[key]


def build_model(
    path: str | os.PathLike[str],
    *,
    n_features: int,
    feature_names: Sequence[str] | None = None,
    spec_hash: str,
    model_version: str = "test-1",
    seed: int = 0,
    kind: Kind = "gbt",
    thresholds: Mapping[str, float] | None = None,
    n_estimators: int = 30,
    max_depth: int = 3,
    trained_at: str = DEFAULT_TRAINED_AT,
) -> str:
    """Train, convert and save a contract-conforming model; return its path."""
    names = list(feature_names) if feature_names is not None else default_feature_names(n_features)
    if len(names) != n_features:
        raise ValueError(f"{len(names)} feature names for {n_features} features")
    clf = train_classifier(n_features=n_features, seed=seed, kind=kind, n_estimators=n_estimators,
                           max_depth=max_depth)
    model = convert_sklearn(
        clf,
        initial_types=[("features", FloatTensorType([None, n_features]))],
        options={"zipmap": False},
    )
    model.graph.name = f"riskstream_{kind}"  # skl2onnx names the graph with a random uuid
    set_metadata(model, contract_metadata(feature_names=names, spec_hash=spec_hash, model_version=model_version,
                                          thresholds=thresholds, trained_at=trained_at))
    out = os.fspath(path)
    onnx.save_model(model, out)
    return out


def edit_metadata(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
    set_: Mapping[str, str] | None = None, drop: Sequence[str] = (),
) -> str:
    """Copy a model with some metadata keys changed or removed (to break the contract on purpose)."""
    model = onnx.load_model(os.fspath(src))
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update(set_ or {})
    for key in drop:
        meta.pop(key, None)
    set_metadata(model, meta)
    onnx.save_model(model, os.fspath(dst))
    return os.fspath(dst)


def build_raw_model(
    path: str | os.PathLike[str], *, metadata: Mapping[str, str], n_features: int,
    input_name: str = "features", input_type: int = TensorProto.FLOAT,
    input_shape: Sequence[int | str | None] | None = None,
    output: Literal["probabilities", "score_1d", "score_col", "three_col", "int_only", "logit_col",
                    "nan_col"] = "probabilities",
) -> str:
    """A hand-made graph for odd I/O layouts; the positive-class value of a row is sigmoid(x0).

    ``probabilities`` -> [N, 2] (1 - s, s); ``score_1d`` -> [N]; ``score_col`` -> [N, 1];
    ``three_col`` -> [N, 3]; ``int_only`` -> a single int64 output; ``logit_col`` -> [N, 1] of x0
    itself (not a probability); ``nan_col`` -> [N, 1] of NaN.
    """
    shape: list[int | str | None] = list(input_shape) if input_shape is not None else ["N", n_features]
    nodes = []
    if input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [input_name], ["xf"], to=TensorProto.FLOAT))
        x = "xf"
    else:
        x = input_name
    inits = [
        helper.make_tensor("start", TensorProto.INT64, [1], [0]),
        helper.make_tensor("end", TensorProto.INT64, [1], [1]),
        helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("axis0", TensorProto.INT64, [1], [1]),
    ]
    nodes += [
        helper.make_node("Slice", [x, "start", "end", "axis"], ["x0"]),  # [N, 1]
        helper.make_node("Sigmoid", ["x0"], ["s"]),
    ]
    if output == "probabilities":
        nodes += [helper.make_node("Sub", ["one", "s"], ["neg"]),
                  helper.make_node("Concat", ["neg", "s"], ["probabilities"], axis=1)]
        outs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])]
    elif output == "score_1d":
        nodes.append(helper.make_node("Squeeze", ["s", "axis0"], ["score"]))
        outs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])]
    elif output == "score_col":
        nodes.append(helper.make_node("Identity", ["s"], ["score"]))
        outs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])]
    elif output == "logit_col":
        nodes.append(helper.make_node("Identity", ["x0"], ["score"]))
        outs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])]
    elif output == "nan_col":
        nodes += [helper.make_node("Sub", ["x0", "x0"], ["z"]), helper.make_node("Div", ["z", "z"], ["score"])]
        outs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])]
    elif output == "three_col":
        nodes.append(helper.make_node("Concat", ["s", "s", "s"], ["scores"], axis=1))
        outs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])]
    elif output == "int_only":
        nodes.append(helper.make_node("Cast", ["s"], ["label"], to=TensorProto.INT64))
        outs = [helper.make_tensor_value_info("label", TensorProto.INT64, ["N", 1])]
    else:
        raise ValueError(f"unknown output layout {output!r}")
    graph = helper.make_graph(
        nodes, "raw", [helper.make_tensor_value_info(input_name, input_type, shape)], outs, initializer=inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    set_metadata(model, metadata)
    onnx.checker.check_model(model)
    onnx.save_model(model, os.fspath(path))
    return os.fspath(path)
