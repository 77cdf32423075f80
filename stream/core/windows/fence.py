"""The offset fence: which Kafka positions a user's state has already applied."""

from __future__ import annotations

__all__ = ["MAX_FENCE_OFFSETS", "Fence", "fence_mark", "fence_seen"]

MAX_FENCE_OFFSETS = 4096
"""Applied-but-uncommitted offsets remembered per (user, topic-partition) above the commit floor."""


# --- offset fence ------------------------------------------------------------------------------
Fence = dict[str, tuple[int, set[int]]]


def fence_seen(fence: Fence, tp: str, offset: int, floor: int | None) -> bool:
    frontier, applied = fence.get(tp, (-1, set()))
    if floor is not None and floor - 1 > frontier:
        frontier = floor - 1
        applied = {o for o in applied if o > frontier}
        fence[tp] = (frontier, applied)
    return offset <= frontier or offset in applied


def fence_mark(fence: Fence, tp: str, offset: int) -> None:
    frontier, applied = fence.get(tp, (-1, set()))
    applied.add(offset)
    if len(applied) > MAX_FENCE_OFFSETS:
        # Keep the newest offsets; anything older is treated as applied (conservative: skip).
        keep = sorted(applied)[-MAX_FENCE_OFFSETS:]
        frontier = max(frontier, keep[0] - 1)
        applied = set(keep)
    fence[tp] = (frontier, applied)
