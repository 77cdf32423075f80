"""Per-user rolling windows over event time: the store interface, the update rule, the memory store.

The update rule (sessions, buckets, ticks, late events) is one compiled kernel (``kernel.py``,
numba) over per-user state rows, held by a :class:`StateTable` (``table.py``). Every store holds
one: the memory store (``memory.py``) is nothing more, and the Redis store
(``stream/state/redis_store.py``) loads rows into it and writes them back. The contract tests in ``tests/contract`` run the same cases against all of them.
Events for one user arrive in canonical order (:func:`stream.core.ordering.canonical_key`); the
store applies them, and returns a :class:`Snapshot` of the state at the end of every evaluation tick
that becomes decidable (docs/semantics.md §5):

* a tick ``k`` with activity becomes *pending* when its first event is applied;
* it is decided just before an event of a later tick is applied, or at the end of the call when the
  partition watermark has passed its end ``(k + 1) * TICK_MS``.

A late event (flagged by the reorder buffer: older than what was already released) only adds to the
volume counters of the buckets it belongs to and to the late counter; it never touches the session
or the pending tick, so it never re-opens a decision. Items with a Kafka position pass the offset
fence first (docs/semantics.md §7): a position already applied is a duplicate and skipped.

Decided snapshots go to the user's *outbox* and stay there until :meth:`WindowStore.confirm`
stores the policy state that consumed them; every ``apply`` returns the whole outbox.
``confirm(user -> (through_ms, fields))`` stores the policy fields together with ``through_ms``;
the outbox entries with ``tick_end_ms <= through_ms`` are dropped by the user's next ``apply``,
before anything else, and are never returned again. The pair is last-writer-wins: a second confirm
before that ``apply`` replaces the first (the detector's confirms per user only move forward).
"""

from stream.core.windows.fence import MAX_FENCE_OFFSETS, Fence, fence_mark, fence_seen
from stream.core.windows.kernel import APPLIED, TOO_LATE
from stream.core.windows.memory import MemoryWindowStore
from stream.core.windows.store import (
    ColumnarStore,
    DeferredWriteStore,
    FencedColumnarStore,
    WindowStore,
)
from stream.core.windows.table import StateRows, StateTable
from stream.core.windows.types import (
    CATEGORY_CODE,
    TZ_ABSENT,
    ApplyResults,
    ColumnResult,
    EventColumns,
    FenceColumn,
    FencedPart,
    FencedResult,
    Item,
    PartResult,
    PolicyRecord,
    Snapshot,
    Snapshots,
    UserBatch,
    UserResult,
    all_snapshots,
)

__all__ = [
    "APPLIED",
    "CATEGORY_CODE",
    "MAX_FENCE_OFFSETS",
    "TOO_LATE",
    "TZ_ABSENT",
    "ApplyResults",
    "ColumnResult",
    "ColumnarStore",
    "DeferredWriteStore",
    "EventColumns",
    "Fence",
    "FenceColumn",
    "FencedColumnarStore",
    "FencedPart",
    "FencedResult",
    "Item",
    "MemoryWindowStore",
    "PartResult",
    "PolicyRecord",
    "Snapshot",
    "Snapshots",
    "StateRows",
    "StateTable",
    "UserBatch",
    "UserResult",
    "WindowStore",
    "all_snapshots",
    "fence_mark",
    "fence_seen",
]
