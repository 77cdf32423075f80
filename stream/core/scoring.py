"""Scoring adapter: the ONNX model contract (DESIGN §5), an ONNX Runtime scorer and an in-memory twin.

The model contract:

* one input named ``features``, ``tensor(float)``, shape ``[N, F]`` with a dynamic batch dimension;
* the positive-class probability is read from the output named ``probabilities`` (what skl2onnx
  emits with ``zipmap=False``), or else from the last ``tensor(float)`` output. That output is
  either ``[N, 2]`` class probabilities (column 1 is the positive class) or a single-column score
  ``[N]`` / ``[N, 1]``, which is taken to be the positive-class probability as is (it must lie in
  [0, 1] for the thresholds to mean anything; it is not clipped or squashed);
* ``metadata_props``: ``feature_names`` (JSON list of str), ``feature_spec_hash``,
  ``model_version``, ``trained_at`` (ISO-8601) and ``thresholds`` (JSON object of name -> number
  in [0, 1]); other keys are kept in ``ModelInfo.metadata``.

Only ``onnxruntime`` is needed at run time (the ``onnx`` package is a training/dev dependency).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

import numpy as np
import onnxruntime as ort
from numpy.typing import ArrayLike, NDArray

from stream.errors import ModelContractError

__all__ = [
    "ConstantScorer",
    "ModelInfo",
    "OnnxScorer",
    "Scorer",
    "load_model_info",
]

logger = logging.getLogger("riskstream.scoring")

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


def _session_options() -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn CPU after each run; we share 2 cores with an event loop.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


# --------------------------------------------------------------------------- loading


_FileSig = tuple[int, int, int]  # (mtime_ns, size, inode)


@dataclasses.dataclass(frozen=True)
class _Loaded:
    """One validated model: swapped as a whole so a reader never sees half of two models."""

    session: ort.InferenceSession
    info: ModelInfo
    output_name: str
    column: int | None
    n_features: int
    sig: _FileSig


def _read_model_file(path: str) -> tuple[bytes, _FileSig]:
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read()
    except OSError as exc:
        raise ModelContractError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    return data, (st.st_mtime_ns, st.st_size, st.st_ino)


def _load(
    path: str,
    *,
    expected_spec_hash: str | None,
    expected_feature_names: Sequence[str] | None,
    options: ort.SessionOptions,
) -> _Loaded:
    data, sig = _read_model_file(path)
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        # Loading from the bytes we hashed: sha256 and session describe the same file version.
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises several pybind error types for corrupt files.
        raise ModelContractError(
            f"model file {path} is not a loadable ONNX model ({type(exc).__name__}: {exc}); "
            f"replace it with a file exported by riskstream train"
        ) from exc
    info = _parse_metadata(path, session.get_modelmeta().custom_metadata_map, sha256)
    _check_against_expected(info, expected_spec_hash, expected_feature_names)
    n_features = len(info.feature_names)
    _check_input(path, session, n_features)
    output_name = _select_output(path, session)
    column = _probe(path, session, output_name, n_features)
    return _Loaded(session, info, output_name, column, n_features, sig)


def _probe(path: str, session: ort.InferenceSession, output_name: str, n_features: int) -> int | None:
    """Run two zero rows once; the actual output shape decides which column to read.

    Returns 1 for [N, 2] probabilities, 0 for an [N, 1] score, None for an [N] score. Deciding
    from a real run (not the declared shape) also covers models that declare no output shape,
    and warms the session up before it serves.
    """
    x = np.zeros((2, n_features), dtype=np.float32)
    try:
        out = session.run([output_name], {INPUT_NAME: x})[0]
    except Exception as exc:
        raise ModelContractError(f"model {path} fails on a test batch of 2 rows: {exc}") from exc
    columns = {(2,): None, (2, 1): 0, (2, 2): 1}
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape not in columns:
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ModelContractError(
            f"model {path}: output {output_name!r} returned {got} for 2 rows; expected float32 "
            f"[N, 2] probabilities or a single-column score [N] / [N, 1]"
        )
    return columns[out.shape]


def load_model_info(
    path: str | os.PathLike[str],
    *,
    expected_spec_hash: str | None = None,
    expected_feature_names: Sequence[str] | None = None,
) -> ModelInfo:
    """Read and validate a model file's metadata and I/O contract without keeping it loaded.

    Args:
        path: the ONNX file.
        expected_spec_hash: when given, the model's ``feature_spec_hash`` must equal it.
        expected_feature_names: when given, the model's feature names must equal them, in order.

    Returns:
        The model's ``ModelInfo``.

    Raises:
        ModelContractError: the file is missing, corrupt or breaks the contract.
    """
    so = _session_options()
    # Nothing will be scored with this session; skip the optimisation work.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    loaded = _load(
        os.fspath(path),
        expected_spec_hash=expected_spec_hash,
        expected_feature_names=expected_feature_names,
        options=so,
    )
    return loaded.info


# --------------------------------------------------------------------------- scorers


class OnnxScorer:
    """Scores with an ONNX Runtime session; swaps to a new model file without a restart."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        expected_spec_hash: str,
        expected_feature_names: Sequence[str] | None = None,
        reload_check_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Load and validate the model; raise ``ModelContractError`` when it breaks the contract."""
        self._path = os.fspath(path)
        self._expected_spec_hash = expected_spec_hash
        self._expected_feature_names = (
            tuple(expected_feature_names) if expected_feature_names is not None else None
        )
        self._reload_check_s = reload_check_s
        self._clock = clock
        self._options = _session_options()
        self._loaded = self._load()
        self._last_check = clock()
        # Signature of the last file we rejected, so a bad file is validated and logged once.
        self._rejected_sig: _FileSig | None = None
        self._missing_logged = False

    def _load(self) -> _Loaded:
        return _load(
            self._path,
            expected_spec_hash=self._expected_spec_hash,
            expected_feature_names=self._expected_feature_names,
            options=self._options,
        )

    @property
    def info(self) -> ModelInfo:
        return self._loaded.info

    @property
    def path(self) -> str:
        return self._path

    def score(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Positive-class probabilities [N] for a float32 matrix [N, F]; one ``session.run`` per call.

        Raises:
            ValueError: ``x`` is not 2-D or has the wrong number of columns.
        """
        loaded = self._loaded  # one read: a concurrent swap cannot mix two models in one call
        x = _as_feature_matrix(x, loaded.n_features)
        if x.shape[0] == 0:
            return np.empty(0, dtype=np.float32)
        out = loaded.session.run([loaded.output_name], {INPUT_NAME: x})[0]
        if loaded.column is not None:
            out = out[:, loaded.column]
        return np.ascontiguousarray(out, dtype=np.float32)

    def maybe_reload(self) -> bool:
        """Swap in the model file if it changed; at most one ``stat`` per ``reload_check_s``.

        Returns True when a new model now serves. A changed file that is unreadable or breaks
        the contract is logged once (warning, logger ``riskstream.scoring``) and the current
        model keeps serving. A file rewritten with identical bytes is not swapped.
        """
        now = self._clock()
        if now - self._last_check < self._reload_check_s:
            return False
        self._last_check = now
        try:
            st = os.stat(self._path)
        except OSError as exc:
            if not self._missing_logged:
                logger.warning(
                    "model file %s cannot be read (%s); still serving model %s",
                    self._path, exc.strerror or exc, self._loaded.info.model_version,
                )
                self._missing_logged = True
            return False
        self._missing_logged = False
        sig: _FileSig = (st.st_mtime_ns, st.st_size, st.st_ino)
        current = self._loaded
        if sig == current.sig or sig == self._rejected_sig:
            return False
        try:
            new = self._load()
        except ModelContractError as exc:
            self._rejected_sig = sig
            logger.warning(
                "not reloading %s: %s; still serving model %s",
                self._path, exc, current.info.model_version,
            )
            return False
        self._rejected_sig = None
        if new.info.sha256 == current.info.sha256:
            # Same bytes under a new stat (touch, copy): keep the warm session, remember the stat.
            self._loaded = dataclasses.replace(current, sig=new.sig)
            return False
        self._loaded = new
        logger.info(
            "reloaded model %s: version %s -> %s (sha256 %s)",
            self._path, current.info.model_version, new.info.model_version, new.info.sha256[:12],
        )
        return True


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

    def maybe_reload(self) -> bool:
        """Nothing to reload; present so a worker can treat both scorers alike."""
        return False
