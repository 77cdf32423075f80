"""The feature spec: the ordered feature list, its version and hash, and the one implementation.

Window snapshots (:class:`stream.core.windows.Snapshot`) in, a float32 matrix ``[N, F]`` out, plus
the few raw quantities the rules layer needs. Training (``models/``) and the stream call the same
:func:`compute` (or :func:`compute_arrays` on the raw state arrays); nothing else in the project
computes features. Each feature is documented in ``docs/features.md`` (name, definition, window,
unit).

Conventions: all bucket arithmetic is in the user's local time (last known ``tz_offset_min``);
"7 d" windows are the 168 hour buckets or the 7 day buckets ending with the tick's (partial) local
day; "28 d" trend features use complete days before today that lie inside the user's history; per-day
means divide by the days of history inside the window (at most 7), so new users are not diluted.

Implementation: one compiled numba kernel (``@njit(cache=True, nogil=True)``, no fastmath) that
walks the rows and, inside a row, the ring slots in place. Sums over integer counters are int64
(exact); floating point work is float64, per row, cast to float32 at the end, so a row's features
never depend on which other rows share its batch. The first call compiles the kernel (seconds) and
caches it in ``__pycache__``; later processes load it from there.
"""

from stream.core.features.compute import compute, compute_arrays
from stream.core.features.spec import (
    CURFEW_FEATURE_HOURS,
    FEATURE_INDEX,
    FEATURE_NAMES,
    FEATURE_SPEC,
    FEATURE_SPEC_HASH,
    FEATURE_VERSION,
    MIN_TREND_DAYS,
    N_FEATURES,
    NIGHT_HOURS,
    SMOOTH_MIN,
    RuleArrays,
)

__all__ = [
    "CURFEW_FEATURE_HOURS",
    "FEATURE_INDEX",
    "FEATURE_NAMES",
    "FEATURE_SPEC",
    "FEATURE_SPEC_HASH",
    "FEATURE_VERSION",
    "MIN_TREND_DAYS",
    "NIGHT_HOURS",
    "N_FEATURES",
    "RuleArrays",
    "SMOOTH_MIN",
    "compute",
    "compute_arrays",
]
