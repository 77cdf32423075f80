"""Process start-up: load (or compile) both kernel families before the first event."""

from __future__ import annotations

from stream.core.events import Event
from stream.core.windows.memory import MemoryWindowStore
from stream.core.windows.types import Item, UserBatch

__all__ = ["warm_up"]


def warm_up() -> float:
    """Load (or, on a fresh checkout, compile) the numba kernels now; returns the seconds it took.

    The first call of a kernel in a process loads it from numba's on-disk cache (≈ 0.5 s) or
    compiles it (≈ 10 s without a cache); a worker does this before it consumes anything.
    """
    import time

    from stream.core import features

    t = time.perf_counter()
    store = MemoryWindowStore(keep_outbox=False)
    ev = Event("warm-up", 1_735_689_600_000, "click", "warm-up", "other", 0, 0, None, None, None)
    [res] = store.apply([UserBatch("warm-up", [Item(ev)])], 2**62)
    features.compute_arrays(res.snapshots.rings, res.snapshots.scalars, res.snapshots.tick_end)
    return time.perf_counter() - t
