"""Canonical order and the reorder buffer (docs/semantics.md §3, §4): the per-user order, the cap that
holds when no input runs ahead, and a watermark that never runs ahead of the wall clock (plus a slack)."""

from __future__ import annotations

from stream.core.events import Event
from stream.core.ordering import ReorderBuffer, canonical_key

T = 1_767_225_600_000  # 2026-01-01
L_MS = 120_000


def e(u: str, ts: int, i: int, t: str = "click") -> Event:
    return Event(u, ts, t, f"e{i:07d}", "other", 0, None, None, None, None)


def test_canonical_key_is_time_type_event_id() -> None:
    a = Event("u", T, "view", "b", "other", 0, None, None, None, None)
    b = Event("u", T, "click", "z", "other", 0, None, None, None, None)
    c = Event("u", T + 1, "click", "a", "other", 0, None, None, None, None)
    assert canonical_key(a) == (T, "view", "b")
    assert sorted([c, a, b], key=canonical_key) == [b, a, c]


# -- item 4: the cap ---------------------------------------------------------------------------------
def test_with_one_input_idle_the_cap_holds_by_forcing_the_oldest_events_out():
    """The audit's D6 reproduction (scaled down): views idle, a burst of clicks inside one lateness
    window; nothing runs ahead, so nothing can be paused."""
    rb: ReorderBuffer[None] = ReorderBuffer(("click", "view"), lateness_ms=L_MS, max_events=1000)
    rb.set_idle("view", True)
    evs = [e(f"u{i % 50}", T + (i * 7919) % 3000, i) for i in range(3000)]
    for x in evs:
        assert rb.push("click", x, None)
    out, wm = rb.release()
    assert len(rb) <= 1000 and rb.forced == len(out) >= 2000
    released = [x for x, _ in out]
    assert released == sorted(released, key=canonical_key)  # the oldest, in canonical order
    assert max(x.ts_ms for x in released) < wm <= min(k[0] for k in rb._heap)
    assert sorted(released + [k[4] for k in rb._heap], key=canonical_key) == sorted(evs, key=canonical_key)
    assert not rb.push("click", e("late", wm - 1, 10**6), None)  # behind the forced watermark: late


def test_with_both_inputs_at_the_same_time_the_cap_holds():
    rb: ReorderBuffer[None] = ReorderBuffer(("click", "view"), lateness_ms=L_MS, max_events=1000)
    for i in range(1500):
        rb.push("click", e("a", T + i % 100, i), None)
        rb.push("view", e("b", T + i % 100, i, "view"), None)
    assert rb.behind() == ["click", "view"]  # nothing runs ahead
    out, _ = rb.release()
    assert len(rb) <= 1000 and rb.forced == len(out) >= 2000


def test_an_input_running_ahead_is_paused_not_forced_until_twice_the_cap():
    rb: ReorderBuffer[None] = ReorderBuffer(("click", "view"), lateness_ms=L_MS, max_events=1000)
    rb.push("view", e("v", T, 0, "view"), None)
    for i in range(1500):
        rb.push("click", e("c", T + 10 * i, i), None)  # clicks run ahead: pausing them lets views catch up
    assert rb.behind() == ["view"]
    out, _ = rb.release()
    assert out == [] and rb.forced == 0 and len(rb) == 1501  # over the cap: the worker pauses clicks
    for i in range(1500, 2500):
        rb.push("click", e("c", T + 10 * i, i), None)
    out, _ = rb.release()
    assert len(rb) == 1000 and rb.forced == len(out) == 1501  # the pause did not hold it


# -- item 5: producer clocks ahead of the wall clock --------------------------------------------------
def test_an_event_ahead_of_the_wall_clock_does_not_make_other_users_late():
    """The audit's G3 probe: one producer 4 min ahead (valid input). Live, the watermark counts an
    input's newest event time only up to the wall clock plus FUTURE_SLACK_MS (5 s)."""
    now = T
    rb: ReorderBuffer[None] = ReorderBuffer(("click", "view"), lateness_ms=L_MS)
    rb.now_ms = now
    rb.push("view", e("normal", now - 1000, 0, "view"), None)
    rb.push("click", e("skewed", now + 4 * 60_000, 1), None)
    rb.push("view", e("skewed", now + 4 * 60_000, 2, "view"), None)
    _, wm = rb.release()
    assert wm <= now + 5_000
    late = 0
    for i in range(60):  # the next minute of other users' on-time events, as the clock moves
        rb.now_ms = now + i * 1000
        late += not rb.push("click", e(f"user{i}", now + i * 1000, 10 + i), None)
        rb.push("view", e(f"user{i}", now + i * 1000, 100 + i, "view"), None)
        rb.release()
    assert late == 0


def test_a_future_event_is_applied_when_the_watermark_reaches_it():
    now = T
    rb: ReorderBuffer[None] = ReorderBuffer(("click", "view"), lateness_ms=L_MS)
    rb.now_ms = now
    future = e("skewed", now + 4 * 60_000, 1)
    rb.push("click", future, None)
    rb.set_idle("view")
    out, _ = rb.release()
    assert out == [] and len(rb) == 1  # not dropped, not released: it waits
    rb.set_idle("click")  # both idle: the watermark goes to the wall clock (+ slack), no further
    rb.now_ms = now + 60_000
    out, wm = rb.release()
    assert out == [] and wm <= now + 65_000
    rb.now_ms = now + 4 * 60_000
    out, wm = rb.release()
    assert [x for x, _ in out] == [future] and wm > future.ts_ms


def test_a_replay_of_history_is_unaffected_by_the_wall_clock():
    import random

    rng = random.Random(5)
    evs = [(rng.choice(("click", "view")), e(f"u{i % 13}", T + rng.randrange(600_000), i)) for i in range(2000)]
    runs = []
    for now in (None, T + 86_400_000 * 365):
        rb: ReorderBuffer[None] = ReorderBuffer(("click", "view"), lateness_ms=L_MS, max_events=10**6)
        rb.now_ms = now
        seen = []
        for k in range(0, len(evs), 100):
            late = [x for name, x in evs[k:k + 100] if not rb.push(name, x, None)]
            out, wm = rb.release()
            seen.append(([x for x, _ in out], late, wm))
        seen.append(rb.drain())
        runs.append(seen)
    assert runs[0] == runs[1]


def test_push_many_is_push_event_by_event():
    """A message's events pushed at once (the pipeline's path) buffer, refuse as late and release
    exactly as the same events pushed one by one."""
    import random

    rng = random.Random(7)
    one, many = (ReorderBuffer(["click", "view"], lateness_ms=5_000, max_events=50) for _ in range(2))
    t = 1_000_000
    lates = 0
    for k in range(300):
        kind = rng.choice(("click", "view"))
        evs = [Event(f"u{rng.randrange(3)}", t + rng.randrange(-20_000, 20_000), kind, f"e{k}-{i}",
                     "other", 0, None, None, None, None) for i in range(rng.randrange(0, 12))]
        metas = [(k, i) for i in range(len(evs))]
        late_one = [i for i, (e, m) in enumerate(zip(evs, metas)) if not one.push(kind, e, m)]
        assert many.push_many(kind, evs, metas) == late_one
        lates += len(late_one)
        t += rng.randrange(0, 3_000)
        if k % 7 == 0:
            assert one.release() == many.release()
            assert (one.released_to, one.forced, len(one)) == (many.released_to, many.forced, len(many))
    assert one.drain() == many.drain()
    assert lates  # the late path was exercised
