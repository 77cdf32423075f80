"""The offset fence: which Kafka positions a user's state has already applied."""

from __future__ import annotations

__all__ = ["MAX_FENCE_OFFSETS", "Fence", "fence_mark", "fence_seen"]

MAX_FENCE_OFFSETS = 4096
"""The applied positions above the frontier a fence is expected to hold per (user, topic-partition)
in normal operation (docs/state-layout.md §5). Not a cut-off: a fence never declares a position it
has not seen applied (events are applied in event-time order, so lower positions may still be
waiting in the reorder buffer); what bounds it is the floor its caller passes (below)."""


# --- offset fence ------------------------------------------------------------------------------
Fence = dict[str, tuple[int, set[int]]]


def fence_seen(fence: Fence, tp: str, offset: int, floor: int | None) -> bool:
    """Whether ``offset`` of ``tp`` was applied. ``floor``: every position of ``tp`` below it is
    settled (applied, or not this user's): the commit floor, or higher, the lowest position of the
    topic-partition not yet applied (the live pipeline passes that). The frontier moves up to it and
    the applied positions at or below it are forgotten; nothing else ever moves the frontier."""
    frontier, applied = fence.get(tp, (-1, set()))
    if floor is not None and floor - 1 > frontier:
        frontier = floor - 1
        applied = {o for o in applied if o > frontier}
        fence[tp] = (frontier, applied)
    return offset <= frontier or offset in applied


def fence_mark(fence: Fence, tp: str, offset: int) -> None:
    """Record ``offset`` of ``tp`` as applied. Never folds: only a floor (``fence_seen``) does."""
    frontier, applied = fence.get(tp, (-1, set()))
    if offset > frontier:
        applied.add(offset)
    fence[tp] = (frontier, applied)
