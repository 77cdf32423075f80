"""The in-memory scorer twin for tests: constant or computed probabilities."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from stream.core.scoring.contract import ModelInfo, _as_feature_matrix

__all__ = ["ConstantScorer"]

_Scores = Callable[[NDArray[np.float32]], ArrayLike]


class ConstantScorer:
    """In-memory twin of ``OnnxScorer``: a fixed probability, or a function of the matrix."""

    def __init__(
        self,
        probability: float | _Scores,
        *,
        info: ModelInfo | None = None,
        feature_names: Sequence[str] | None = None,
        spec_hash: str = "constant",
        thresholds: Mapping[str, float] | None = None,
    ) -> None:
        """Either pass a full ``info`` or let one be made from ``feature_names``/``spec_hash``."""
        if not callable(probability):
            p = float(probability)
            if not 0.0 <= p <= 1.0 or math.isnan(p):
                raise ValueError(f"probability must be in [0, 1], got {probability!r}")
        if info is None:
            if feature_names is None:
                raise ValueError("ConstantScorer needs info= or feature_names=")
            info = ModelInfo(
                path="<memory>",
                model_version="constant",
                feature_spec_hash=spec_hash,
                feature_names=tuple(feature_names),
                trained_at="1970-01-01T00:00:00+00:00",
                thresholds=dict(thresholds or {}),
                metadata={},
                sha256="",
            )
        self._probability = probability
        self._info = info
        self.calls = 0

    @property
    def info(self) -> ModelInfo:
        return self._info

    def score(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Same input checks as ``OnnxScorer.score``; returns float32 [N]."""
        x = _as_feature_matrix(x, len(self._info.feature_names))
        self.calls += 1
        n = x.shape[0]
        if not callable(self._probability):
            return np.full(n, self._probability, dtype=np.float32)
        out = np.asarray(self._probability(x), dtype=np.float32)
        if out.shape != (n,):
            raise ValueError(f"scoring function returned shape {out.shape}, expected ({n},)")
        return out

    def maybe_reload(self, accept: Callable[[ModelInfo], object] | None = None) -> bool:
        """Nothing to reload; present so a worker can treat both scorers alike."""
        return False
