"""The in-memory window store: a state table and nothing else (offline scoring, unit tests)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from stream.core.policy.state import PolicyState
from stream.core.windows.table import StateTable
from stream.core.windows.types import (
    ColumnResult,
    EventColumns,
    FencedPart,
    FencedResult,
    PolicyRecord,
    UserBatch,
    UserResult,
)

__all__ = ["MemoryWindowStore"]


class MemoryWindowStore:
    """The in-memory twin of the Redis window store: its :class:`StateTable` is the whole state.

    ``keep_outbox=False`` (the embedded offline mode, which decides and confirms every release
    before the next) skips keeping decided snapshots for redelivery.
    """

    def __init__(self, *, keep_outbox: bool = True) -> None:
        self.table = StateTable(keep_outbox=keep_outbox)

    def __len__(self) -> int:
        return len(self.table)

    def users(self) -> Iterable[str]:
        return self.table.users()

    def apply(
        self,
        batches: Sequence[UserBatch],
        watermark_ms: int,
        commit_floor: Mapping[str, int] | None = None,
    ) -> list[UserResult]:
        return self.table.apply(batches, watermark_ms, commit_floor)

    def apply_columns(self, cols: EventColumns, watermark_ms: int) -> ColumnResult:
        """The columnar path (offline; see :meth:`StateTable.apply_columns`)."""
        return self.table.apply_columns(cols, watermark_ms)

    @property
    def fenced_columns(self) -> bool:
        return not self.table.keep_outbox

    def apply_fenced(self, parts: Sequence[FencedPart]) -> FencedResult:
        """The live columnar path (see :meth:`StateTable.apply_fenced`)."""
        return self.table.apply_fenced(parts)

    def load_policy(self, user_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        return self.table.load_policy(user_ids)

    def load_policy_states(self, user_ids: Sequence[str]) -> dict[str, PolicyState]:
        return self.table.load_policy_states(user_ids)

    def confirm(self, done: Mapping[str, tuple[int, PolicyRecord]]) -> None:
        self.table.confirm(done)

    def state_of(self, user_id: str) -> tuple[tuple[int, ...], str | None, bytes] | None:
        return self.table.state_of(user_id)
