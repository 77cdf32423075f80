"""Scoring adapter: the ONNX model contract (docs/contracts.md §5), an ONNX Runtime scorer and an in-memory twin.

The model contract:

* one input named ``features``, ``tensor(float)``, shape ``[N, F]`` with a dynamic batch dimension;
* the positive-class probability is read from the output named ``probabilities`` (what skl2onnx
  emits with ``zipmap=False``), or else from the last ``tensor(float)`` output. That output is
  either ``[N, 2]`` class probabilities (column 1 is the positive class) or a single-column score
  ``[N]`` / ``[N, 1]``, which is taken to be the positive-class probability as is (it must lie in
  [0, 1] for the thresholds to mean anything; it is not clipped or squashed);
* ``metadata_props``: ``feature_names`` (JSON list of str), ``feature_spec_hash``,
  ``model_version``, ``trained_at`` (ISO-8601) and ``thresholds`` (JSON object of name -> number
  in [0, 1], except ``evidence_days``: a whole number of days 0..7 for the policy's day-mean
  evidence); other keys are kept in ``ModelInfo.metadata``.

Only ``onnxruntime`` is needed at run time (the ``onnx`` package is a training/dev dependency).
"""

from stream.core.scoring.contract import (
    INPUT_NAME,
    PROBABILITY_OUTPUT,
    REQUIRED_METADATA,
    ModelInfo,
    Scorer,
)
from stream.core.scoring.memory import ConstantScorer
from stream.core.scoring.onnx import OnnxScorer, load_model_info, load_scorer

__all__ = [
    "ConstantScorer",
    "INPUT_NAME",
    "ModelInfo",
    "OnnxScorer",
    "PROBABILITY_OUTPUT",
    "REQUIRED_METADATA",
    "Scorer",
    "load_model_info",
    "load_scorer",
]
