"""Features for window snapshots: the one implementation training and the stream call."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np
from numpy.typing import NDArray

from stream.core import layout as L
from stream.core.features.kernel import GUARD, feature_kernel
from stream.core.features.spec import N_FEATURES, RuleArrays
from stream.core.windows import Snapshot

__all__ = ["compute", "compute_arrays"]


def compute_arrays(rings: NDArray[np.uint32], scalars: NDArray[np.int64],
                   tick_end: NDArray[np.int64]) -> tuple[NDArray[np.float32], RuleArrays]:
    """Features ``[N, F]`` (float32, FEATURE_NAMES order) and rule inputs for window state arrays.

    ``rings``: ``uint32 [N, RING_WORDS]`` in native byte order; ``scalars``: ``int64 [N, S]`` in
    ``layout.SCALARS`` order; ``tick_end``: ``int64 [N]``, each row's tick end (event time, ms).
    """
    n = len(tick_end)
    if rings.shape != (n, L.RING_WORDS) or scalars.shape != (n, len(L.SCALARS)):
        raise ValueError(f"expected rings [{n}, {L.RING_WORDS}] and scalars [{n}, {len(L.SCALARS)}], "
                         f"got {rings.shape} and {scalars.shape}")
    # Always the same argument types, so the kernel has one compiled (and cached) signature.
    rings = np.ascontiguousarray(rings, dtype=np.uint32)
    scalars = np.ascontiguousarray(scalars, dtype=np.int64)
    tick_end = np.ascontiguousarray(tick_end, dtype=np.int64)
    out = np.empty((n, N_FEATURES), dtype=np.float32)
    rules = RuleArrays(np.empty(n, dtype=np.float64), np.empty(n, dtype=np.float64),
                       np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64))
    args = (rings, scalars, tick_end, out, rules.today_active_min, rules.session_min,
            rules.local_minute, rules.local_day, rules.history_days)
    GUARD.ensure()
    feature_kernel(*args)
    return out, rules


def compute(snaps: Sequence[Snapshot]) -> tuple[NDArray[np.float32], RuleArrays]:
    """Features ``[N, F]`` (float32, FEATURE_NAMES order) and rule inputs for window snapshots."""
    n = len(snaps)
    # One writable copy of the big-endian words, put in native order in place (a second copy of
    # tens of MB costs more than the kernel on large batches).
    rings = np.frombuffer(bytearray().join(s.rings for s in snaps), dtype=L.RING_DTYPE)
    if not rings.dtype.isnative:
        rings = rings.byteswap(inplace=True).view(rings.dtype.newbyteorder())
    rings = rings.reshape(n, L.RING_WORDS)
    scalars = np.fromiter(chain.from_iterable(s.scalars for s in snaps), dtype=np.int64,
                          count=n * len(L.SCALARS)).reshape(n, len(L.SCALARS))
    tick_end = np.fromiter((s.tick_end_ms for s in snaps), dtype=np.int64, count=n)
    return compute_arrays(rings, scalars, tick_end)
