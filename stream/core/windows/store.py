"""The window store Protocol every backend (memory, Redis) implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from stream.core.policy.state import PolicyState
from stream.core.windows.types import (
    ColumnResult,
    EventColumns,
    FencedPart,
    FencedResult,
    PolicyRecord,
    UserBatch,
    UserResult,
)

__all__ = ["ColumnarStore", "DeferredWriteStore", "FencedColumnarStore", "WindowStore"]


class WindowStore(Protocol):
    """Where window state lives: memory (offline, tests) or Redis (live)."""

    def apply(
        self,
        batches: Sequence[UserBatch],
        watermark_ms: int,
        commit_floor: Mapping[str, int] | None = None,
    ) -> list[UserResult]:
        """Apply each user's items atomically; return the snapshots in each user's outbox."""
        ...

    def load_policy(self, user_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """The policy-state fields of each user ({} for a user without any); names start "pol:"."""
        ...

    def load_policy_states(self, user_ids: Sequence[str]) -> dict[str, PolicyState]:
        """Each user's policy state as an object the caller owns: a fresh state for a user without
        any; changing one changes nothing in the store until it is confirmed. ``ValueError`` when a
        user's stored fields are corrupt."""
        ...

    def confirm(self, done: Mapping[str, tuple[int, PolicyRecord]]) -> None:
        """Per user, atomically: store the policy state and the tick end it covers.

        The state is fields (merged into the user's) or a :class:`PolicyState` from
        :meth:`load_policy_states`, which the store keeps from then on (the caller must not change
        it any more); :meth:`load_policy` gives its fields.

        Outbox snapshots up to that tick end are never returned again: the user's next ``apply``
        drops them first. A later confirm before that ``apply`` replaces this one (its tick end, and
        the policy fields it names).
        """
        ...

    def state_of(self, user_id: str) -> tuple[tuple[int, ...], str | None, bytes] | None:
        """The raw state (scalars, age band, ring bytes) of one user, or None; for tests and tools."""
        ...


@runtime_checkable
class ColumnarStore(WindowStore, Protocol):
    """A store with the embedded offline fast path (the memory store)."""

    def apply_columns(self, cols: EventColumns, watermark_ms: int) -> ColumnResult:
        """Apply canonical-order event columns of any users and decide what the watermark passed."""
        ...


@runtime_checkable
class FencedColumnarStore(WindowStore, Protocol):
    """A store with the live columnar path: columns with Kafka positions (offset fence), no outbox.

    ``fenced_columns`` says whether this instance can take it (a store that keeps an outbox for
    redelivery cannot: the per-user :meth:`WindowStore.apply` serves it)."""

    @property
    def fenced_columns(self) -> bool:
        ...

    def apply_fenced(self, parts: Sequence[FencedPart]) -> FencedResult:
        """Apply each part's canonical-order event columns (per user) through each user's offset
        fence, and decide its ``due`` users' pending ticks its watermark passed; the parts in one
        call, with the result of applying them one after another (see :meth:`StateTable.apply_fenced`)."""
        ...


class DeferredWriteStore(WindowStore, Protocol):
    """A store that persists asynchronously and caches users, as a live worker's store does."""

    def finish_write(self) -> None:
        """Settle the write in flight, if any (raises what the write would have raised)."""
        ...

    def confirm(self, done: Mapping[str, tuple[int, PolicyRecord]], *, write: bool = True) -> None:
        """``WindowStore.confirm``; ``write=False``: confirm only, the changes wait for :meth:`checkpoint`."""
        ...

    def checkpoint(self) -> None:
        """Send a write of every changed, fully confirmed user (settled by :meth:`finish_write`)."""
        ...

    @property
    def unwritten_users(self) -> int:
        """Users changed since the last write was sent."""
        ...

    def invalidate(self) -> None:
        """Drop the cached users at the next point where all changes are written (a rebalance)."""
        ...

    def set_generation(self, generation: int) -> None:
        """The ownership epoch (consumer group generation) that fences the writes of users loaded
        from now on (docs/state-layout.md §2)."""
        ...

    def prefetch(self, user_ids: Sequence[str]) -> None:
        """Load the users not cached yet (the I/O of an ``apply``), changing nothing else; safe to retry."""
        ...
