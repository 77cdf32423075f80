"""The offset fence (docs/semantics.md §7): a position is reported applied iff it was applied, at and past
``MAX_FENCE_OFFSETS`` remembered positions, whatever the order of application (issue #12, item 3)."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core.events import Event
from stream.core.windows import MAX_FENCE_OFFSETS, Fence, Item, MemoryWindowStore, UserBatch, fence_mark, fence_seen

T = 1_767_225_600_000  # 2026-01-01
TP = "events.views:0"


def _ev(user: str, ts: int, i: int) -> Event:
    return Event(user, ts, "view", f"e{i}", "other", 0, None, None, None, None)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(MAX_FENCE_OFFSETS - 8, 2 * MAX_FENCE_OFFSETS + 500), seed=st.integers(0, 2**32),
       chunks=st.integers(1, 12), lag=st.integers(0, 2 * MAX_FENCE_OFFSETS), window=st.integers(MAX_FENCE_OFFSETS // 4, 3 * MAX_FENCE_OFFSETS))
def test_a_position_is_reported_applied_iff_it_was_applied(n, seed, chunks, lag, window):
    rng = random.Random(seed)
    # releases out of offset order: positions in a random order, but each within ``window`` of its
    # place (how far an event-time release strays from offset order), cut into calls
    order = sorted(range(n), key=lambda p: p + rng.randrange(window))
    fence: Fence = {}
    applied: set[int] = set()
    cuts = sorted({0, n, *(rng.randrange(n + 1) for _ in range(chunks))})
    for a, b in zip(cuts, cuts[1:]):
        # the caller's floor: the commit floor, lagging behind the lowest position not yet applied
        lowest_unapplied = min(set(range(n)) - applied, default=n)
        floor = max(0, lowest_unapplied - lag) if rng.random() < 0.8 else None
        for p in order[a:b]:
            assert not fence_seen(fence, TP, p, floor), f"position {p} never applied, reported seen"
            fence_mark(fence, TP, p)
            applied.add(p)
        assert all(fence_seen(fence, TP, p, None) for p in applied)
        assert not any(fence_seen(fence, TP, p, None) for p in range(n) if p not in applied)
    frontier, kept = fence[TP]
    assert all(o > frontier for o in kept)


def test_the_floor_bounds_what_the_fence_remembers():
    fence: Fence = {}
    for p in range(10_000):
        fence_seen(fence, TP, p, p)  # the caller knows everything below p is applied
        fence_mark(fence, TP, p)
    frontier, kept = fence[TP]
    assert frontier == 9_998 and kept == {9_999}


def test_more_than_max_fence_offsets_released_out_of_offset_order_are_all_applied():
    """The audit's D5 reproduction: one envelope of newer events at offset 10, then five of older
    ones (100 s of disorder, inside L); released in canonical order, nothing is a duplicate."""
    st_ = MemoryWindowStore(keep_outbox=False)
    items = [(_ev("v", T + 100_000 + i, 90_000 + i), 10 * 1024 + i) for i in range(1000)]
    for k in range(1, 6):
        items += [(_ev("v", T + i * 5 + k, k * 1000 + i), (10 + k) * 1024 + i) for i in range(1000)]
    items.sort(key=lambda p: (p[0].ts_ms, p[0].type, p[0].event_id))
    r = st_.apply([UserBatch("v", [Item(ev, False, TP, pos) for ev, pos in items])], 0)
    assert r[0].duplicates == 0
    again = st_.apply([UserBatch("v", [Item(ev, False, TP, pos) for ev, pos in items])], 0)
    assert again[0].duplicates == 6000  # and every one of them is now a duplicate
