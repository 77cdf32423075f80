"""The ONNX Runtime scorer: loads, checks and hot-reloads the model file."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from stream.core.scoring.contract import (
    INPUT_NAME,
    ModelInfo,
    _as_feature_matrix,
    _check_against_expected,
    _check_input,
    _parse_metadata,
    _select_output,
)
from stream.errors import ConfigError, ModelContractError

__all__ = ["OnnxScorer", "load_model_info", "load_scorer"]

logger = logging.getLogger("riskstream.scoring")


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
    """Score a probe batch once; the actual output shape decides which column to read.

    Returns 1 for [N, 2] probabilities, 0 for an [N, 1] score, None for an [N] score. Deciding
    from a real run (not the declared shape) also covers models that declare no output shape,
    and warms the session up before it serves. The probe rows range from all zeros to far beyond
    any real feature value: a model whose probability is NaN or outside [0, 1] on any of them (a
    logit output, a broken export) is refused, since its scores would fire or silence every
    threshold.
    """
    x = np.repeat(np.asarray(_PROBE_VALUES, np.float32)[:, None], n_features, axis=1)
    n = len(x)
    try:
        out = session.run([output_name], {INPUT_NAME: x})[0]
    except Exception as exc:
        raise ModelContractError(f"model {path} fails on a test batch of {n} rows: {exc}") from exc
    columns = {(n,): None, (n, 1): 0, (n, 2): 1}
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape not in columns:
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ModelContractError(
            f"model {path}: output {output_name!r} returned {got} for {n} rows; expected float32 "
            f"[N, 2] probabilities or a single-column score [N] / [N, 1]"
        )
    column = columns[out.shape]
    p = out if column is None else out[:, column]
    bad = ~(np.isfinite(p) & (p >= 0.0) & (p <= 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ModelContractError(
            f"model {path}: probability {float(p[i])!r} for a probe row of {_PROBE_VALUES[i]:g}s is not "
            f"in [0, 1]; the output must be a calibrated probability"
        )
    return column


_PROBE_VALUES = (0.0, 1.0, 10.0, 1e3, 1e6)


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

    def maybe_reload(self, accept: Callable[[ModelInfo], object] | None = None) -> bool:
        """Swap in the model file if it changed; at most one ``stat`` per ``reload_check_s``.

        Returns True when a new model now serves. A changed file that is unreadable, breaks the
        contract, or that ``accept`` raises for (``ConfigError``, ``ModelContractError`` or
        ``ValueError``: e.g. its thresholds do not fit the policy) is logged once (warning, logger
        ``riskstream.scoring``) and the current model keeps serving. A file rewritten with
        identical bytes is not swapped.
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
            if accept is not None and new.info.sha256 != current.info.sha256:
                accept(new.info)
        except (ModelContractError, ConfigError, ValueError) as exc:
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


def load_scorer(path: str | os.PathLike[str], **kwargs: Any) -> OnnxScorer:
    """An :class:`OnnxScorer` for ``path`` checked against the running feature spec."""
    from stream.core.features import FEATURE_NAMES, FEATURE_SPEC_HASH

    return OnnxScorer(path, expected_spec_hash=FEATURE_SPEC_HASH, expected_feature_names=FEATURE_NAMES, **kwargs)
