"""Window-store contract: the same cases run against every WindowStore implementation.

The ``store`` fixture (tests/contract/conftest.py) yields the in-memory twin and, in the
integration run, the Redis store (standalone and cluster), so the Lua script and the Python twin
are held to one behaviour, byte for byte.
"""

from __future__ import annotations

import numpy as np

from stream.core import layout as L
from stream.core.events import Reason
from stream.core.features import FEATURE_INDEX, compute
from stream.core.policy import PolicyState
from stream.core.windows import Item, UserBatch
from tests.eventgen import at, ev

FAR = 2**62


def rings(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype=L.RING_DTYPE).astype(np.int64)


def apply(store, user, items, wm=FAR, floor=None):
    items = [i if isinstance(i, Item) else Item(i) for i in items]
    return store.apply([UserBatch(user, items)], wm, floor)[0]


def test_pending_tick_is_decided_only_when_the_watermark_passes_it(store, uid):
    t = at(0, 10, 0, 5)
    r = apply(store, uid, [ev(uid, t)], wm=t)
    assert r.snapshots == [] and r.pending_tick == t // L.TICK_MS
    r = apply(store, uid, [], wm=at(0, 10, 1))  # exactly the tick end: decidable
    assert [s.tick_end_ms for s in r.snapshots] == [at(0, 10, 1)]
    assert r.pending_tick is None
    store.confirm({uid: (at(0, 10, 1), {})})
    r = apply(store, uid, [], wm=FAR)
    assert r.snapshots == []


def test_outbox_returns_unconfirmed_snapshots_until_the_policy_state_is_confirmed(store, uid):
    items = [Item(ev(uid, at(0, 7, m)), False, "t:3", 40 + m) for m in range(3)]
    first = apply(store, uid, items, wm=at(0, 7, 5))
    assert [s.tick_end_ms for s in first.snapshots] == [at(0, 7, 1), at(0, 7, 2), at(0, 7, 3)]
    # a crash before the alerts were delivered: the same events are redelivered
    again = apply(store, uid, items, wm=at(0, 7, 5))
    assert again.duplicates == 3
    assert again.snapshots == first.snapshots
    store.confirm({uid: (at(0, 7, 2), {"pol:tick": str(at(0, 7, 2)), "pol:ml": "none"})})
    assert [s.tick_end_ms for s in apply(store, uid, [], wm=at(0, 7, 5)).snapshots] == [at(0, 7, 3)]
    store.confirm({uid: (at(0, 7, 3), {"pol:tick": str(at(0, 7, 3))})})
    assert apply(store, uid, [], wm=FAR).snapshots == []
    assert store.load_policy([uid, uid + "-nobody"]) == {
        uid: {"pol:tick": str(at(0, 7, 3)), "pol:ml": "none"}, uid + "-nobody": {}}


def test_a_later_tick_decides_the_earlier_one_before_it_is_applied(store, uid):
    r = apply(store, uid, [ev(uid, at(0, 10, 0, 1)), ev(uid, at(0, 10, 0, 30)),
                           ev(uid, at(0, 10, 3, 0))], wm=at(0, 10, 3, 30))
    assert [s.tick_end_ms for s in r.snapshots] == [at(0, 10, 1)]
    snap = r.snapshots[0]
    assert snap.user_id == uid
    x, _ = compute([snap])
    # the 10:03 view is not in the 10:01 snapshot: 2 views only
    assert rings(snap.rings)[L.x_index(snap.scalars[L.S_DH], L.X_VIEWS)] == 2
    assert r.pending_tick == at(0, 10, 3) // L.TICK_MS
    assert x[0, FEATURE_INDEX["sessions_1h"]] == 1


def test_sessions_split_on_gaps_and_views_extend_them(store, uid):
    items = [
        ev(uid, at(0, 9, 0, 0), "view", dwell_ms=60_000),   # 09:00:00-09:01:00
        ev(uid, at(0, 9, 0, 30), "click"),                  # inside the view: no extra time
        ev(uid, at(0, 9, 1, 20), "click"),                  # 20 s after the view ends: same session
        ev(uid, at(0, 9, 5, 0), "view", dwell_ms=5_000),    # > 30 s gap: new session
        ev(uid, at(0, 9, 30, 0), "click"),                  # new session (closes the 5-s one)
    ]
    apply(store, uid, items)
    sc, _, raw = store.state_of(uid)
    w = rings(raw)
    d = sc[L.S_DH]
    h = sc[L.S_HH]
    assert w[L.h_index(h, L.H_SESSIONS)] == 3
    assert w[L.h_index(h, L.H_ACTIVE)] == 80_000 + 5_000 + 0
    assert w[L.x_index(d, L.X_CLOSED)] == 2
    assert w[L.x_index(d, L.X_SHORT15)] == 1  # the 5-s session
    assert w[L.x_index(d, L.X_LEN_S)] == 80 + 5
    assert w[L.x_index(d, L.X_GAP_N)] == 2
    assert w[L.x_index(d, L.X_GAP_S)] == (at(0, 9, 5) - at(0, 9, 1, 20)) // 1000 + (at(0, 9, 30) - at(0, 9, 5, 5)) // 1000
    assert w[L.x_index(d, L.X_RMSSD_N)] == 1
    assert w[L.x_index(d, L.X_CLICKS)] == 3 and w[L.x_index(d, L.X_VIEWS)] == 2
    assert w[L.x_index(d, L.X_CAT0 + L.CATEGORY_INDEX["social"])] == 85_000
    assert sc[L.S_SS] == at(0, 9, 30) and sc[L.S_SE] == at(0, 9, 30)


def test_late_event_counts_volume_only_and_never_reopens_a_tick(store, uid):
    apply(store, uid, [ev(uid, at(0, 12)), ev(uid, at(0, 12, 10))], wm=at(0, 12, 5))
    store.confirm({uid: (at(0, 12, 1), {})})
    before, _, raw_before = store.state_of(uid)
    r = apply(store, uid, [Item(ev(uid, at(0, 11, 0), "view", dwell_ms=7_000), late=True)], wm=at(0, 12, 5))
    assert r.snapshots == [] and r.rejected == []
    after, _, raw = store.state_of(uid)
    assert after[L.S_LT] == before[L.S_LT] + 1
    assert after[L.S_PT] == before[L.S_PT] and after[L.S_SS] == before[L.S_SS]
    w0, w1 = rings(raw_before), rings(raw)
    assert w1[L.h_index(at(0, 11) // L.HOUR_MS, L.H_ACTIVE)] == 7_000
    assert w1[L.h_index(at(0, 11) // L.HOUR_MS, L.H_SESSIONS)] == 0
    assert (w1 - w0).sum() == 7_000 + 7_000 + 7_000 + 1 + 7  # H, D, X-category active; X views; X dwell s


def test_event_older_than_the_longest_window_is_too_late(store, uid):
    apply(store, uid, [ev(uid, at(40, 12))])
    _, _, raw = store.state_of(uid)
    r = apply(store, uid, [Item(ev(uid, at(11, 12)), late=True)])
    assert r.rejected == [(0, Reason.TOO_LATE)]
    assert store.state_of(uid)[2] == raw


def test_offset_fence_makes_redelivery_a_no_op(store, uid):
    items = [Item(ev(uid, at(0, 8, 0, s)), False, "t:0", 100 + s) for s in range(0, 50, 5)]
    r1 = apply(store, uid, items, wm=at(0, 8, 0, 30))
    state1 = store.state_of(uid)
    r2 = apply(store, uid, items, wm=at(0, 8, 0, 30))
    assert r2.duplicates == len(items) and r2.snapshots == []
    assert store.state_of(uid) == state1
    assert r1.duplicates == 0
    # out-of-offset-order application: a higher offset first, then a lower one, both applied once
    a = Item(ev(uid, at(0, 9)), False, "t:1", 7)
    b = Item(ev(uid, at(0, 9, 0, 1)), False, "t:1", 5)
    apply(store, uid, [a, b])
    r3 = apply(store, uid, [a, b])
    assert r3.duplicates == 2
    # once the partition's commit floor passes them they stay skipped
    r4 = apply(store, uid, [a, b], floor={"t:1": 8})
    assert r4.duplicates == 2


def test_rings_roll_over_and_forget_old_buckets(store, uid):
    apply(store, uid, [ev(uid, at(0, 10))])
    apply(store, uid, [ev(uid, at(9, 10))])  # 9 days later: hour and detail rings wrapped
    sc, _, raw = store.state_of(uid)
    w = rings(raw)
    hr = w[L.H_BASE:L.D_BASE].reshape(L.HOUR_SLOTS, len(L.H_FIELDS))
    assert hr[:, L.H_SESSIONS].sum() == 1
    dr = w[L.D_BASE:L.X_BASE].reshape(L.DAY_SLOTS, len(L.D_FIELDS))
    assert dr[:, L.D_SESSIONS].sum() == 2  # the 28-day ring still has day 0
    assert sc[L.S_FD] == at(0) // L.DAY_MS


def test_local_time_and_last_known_profile(store, uid):
    apply(store, uid, [ev(uid, at(0, 22, 30), tz=120, age_band="13-15"),
                       ev(uid, at(0, 22, 31), tz=None, age_band=None)])
    sc, band, _ = store.state_of(uid)
    assert band == "13-15" and sc[L.S_TZ] == 120 + L.TZ_BIAS
    assert sc[L.S_HH] == (at(0, 22, 31) + 120 * 60_000) // L.HOUR_MS
    assert sc[L.S_DH] == at(1) // L.DAY_MS  # 00:31 local is the next local day


def test_counters_saturate_instead_of_wrapping(store, uid):
    apply(store, uid, [ev(uid, at(0, 10))])
    day_ms = 86_400_000
    late = [Item(ev(uid, at(0, 9), "view", dwell_ms=day_ms), late=True) for _ in range(60)]
    apply(store, uid, late)
    sc, _, raw = store.state_of(uid)
    w = rings(raw)
    assert w[L.h_index(at(0, 9) // L.HOUR_MS, L.H_ACTIVE)] == L.U32_MAX  # 60 × 86.4e6 > 2³²
    assert w[L.x_index(sc[L.S_DH], L.X_DWELL_S)] == 60 * 86_400 + 10
    assert sc[L.S_LT] == 60


def test_snapshot_matches_state_and_users_are_isolated(store, uid):
    other = uid + "-other"
    out = store.apply([UserBatch(uid, [Item(ev(uid, at(1, 7)))]),
                       UserBatch(other, [Item(ev(other, at(1, 8)))])], FAR)
    assert [r.user_id for r in out] == [uid, other]
    s = out[0].snapshots[0]
    sc, band, raw = store.state_of(uid)
    assert s.rings == raw and s.scalars[:L.S_PT] == sc[:L.S_PT]
    assert store.state_of(other)[0][L.S_MX] == at(1, 8)


# -- outbox and confirm ----------------------------------------------------------------------------
def test_crash_before_confirm_returns_a_tick_decided_at_the_end_of_a_call_unchanged(store, uid):
    items = [Item(ev(uid, at(0, 10, 0, s)), False, "t:0", s) for s in (5, 20)]
    first = apply(store, uid, items, wm=at(0, 10, 1))  # the watermark decides 10:00 at the end of the call
    [snap] = first.snapshots
    sc, band, raw = store.state_of(uid)
    assert snap.tick_end_ms == at(0, 10, 1) and snap.rings == raw and snap.scalars[:L.S_PT] == sc[:L.S_PT]
    # the worker dies before confirm; redelivery, then more events: a late one (it changes the rings
    # but not the tick), one that starts a tick, one with a new tz and age band that decides it
    more = items + [Item(ev(uid, at(0, 9, 30), "view", dwell_ms=5_000), True, "t:0", 30),
                    Item(ev(uid, at(0, 10, 2, 10)), False, "t:0", 31),
                    Item(ev(uid, at(0, 10, 3, 10), tz=60, age_band="13-15"), False, "t:0", 32)]
    second = apply(store, uid, more, wm=at(0, 10, 3))
    assert second.duplicates == 2 and second.pending_tick == at(0, 10, 3) // L.TICK_MS
    assert [s.tick_end_ms for s in second.snapshots] == [at(0, 10, 1), at(0, 10, 3)]
    assert second.snapshots[0] == snap  # byte for byte the state at 10:01
    assert second.snapshots[1].age_band is None  # the 10:03 event lands after the 10:02 tick's snapshot
    assert apply(store, uid, [], wm=at(0, 10, 3)).snapshots == second.snapshots
    store.confirm({uid: (at(0, 10, 3), {"pol:tick": str(at(0, 10, 3))})})
    assert [s.tick_end_ms for s in apply(store, uid, [], wm=FAR).snapshots] == [at(0, 10, 4)]


def test_a_redelivered_call_returns_the_same_snapshots_as_the_lost_reply(store, uid):
    other = uid + "-b"
    batch = [UserBatch(uid, [Item(ev(uid, at(0, 6, 0, 1)), False, "t:0", 1)]),
             UserBatch(other, [Item(ev(other, at(0, 6, 0, 2)), False, "t:0", 2)])]
    lost = store.apply(batch[:1], at(0, 6, 1))  # the pipeline broke after the first user's call
    again = store.apply(batch, at(0, 6, 1))
    assert again[0].duplicates == 1 and again[1].duplicates == 0
    assert again[0].snapshots == lost[0].snapshots and len(again[1].snapshots) == 1
    store.confirm({uid: (at(0, 6, 1), {})})  # a confirm that reached only one of them
    again = store.apply(batch, at(0, 6, 1))
    assert again[0].snapshots == [] and [s.tick_end_ms for s in again[1].snapshots] == [at(0, 6, 1)]


def test_confirming_part_of_the_outbox_keeps_the_rest_byte_for_byte(store, uid):
    items = [Item(ev(uid, at(0, 7, m, 10)), False, "t:3", 40 + m) for m in range(4)]
    first = apply(store, uid, items, wm=at(0, 7, 4))  # 07:00-07:02 decided by events, 07:03 by the watermark
    assert [s.tick_end_ms for s in first.snapshots] == [at(0, 7, m) for m in (1, 2, 3, 4)]
    store.confirm({uid: (at(0, 7, 2), {"pol:tick": "2"})})
    assert apply(store, uid, [], wm=at(0, 7, 4)).snapshots == first.snapshots[2:]
    r = apply(store, uid, [Item(ev(uid, at(0, 7, 5, 10), tz=30), False, "t:3", 50)], wm=at(0, 7, 5))
    assert r.snapshots == first.snapshots[2:]  # the 07:03 snapshot survives the state moving on
    store.confirm({uid: (at(0, 7, 3), {"pol:tick": "3"})})
    assert apply(store, uid, [], wm=at(0, 7, 5)).snapshots == first.snapshots[3:]
    store.confirm({uid: (at(0, 7, 4), {"pol:tick": "4"})})
    assert apply(store, uid, [], wm=at(0, 7, 5)).snapshots == []
    assert store.load_policy([uid]) == {uid: {"pol:tick": "4"}}


def test_confirm_covers_only_snapshots_decided_before_it(store, uid):
    # tick ends are not always increasing: an in-order event older than a decided tick opens it again
    first = apply(store, uid, [ev(uid, at(0, 10, 5, 10))], wm=FAR)
    assert [s.tick_end_ms for s in first.snapshots] == [at(0, 10, 6)]
    r = apply(store, uid, [ev(uid, at(0, 10, 0, 10)), ev(uid, at(0, 10, 7))], wm=at(0, 10, 7))
    assert [s.tick_end_ms for s in r.snapshots] == [at(0, 10, 6), at(0, 10, 1)]
    store.confirm({uid: (at(0, 10, 1), {})})  # not the oldest entry: only 10:01 goes
    assert apply(store, uid, [], wm=at(0, 10, 7)).snapshots == r.snapshots[:1]
    r = apply(store, uid, [], wm=FAR)
    assert [s.tick_end_ms for s in r.snapshots] == [at(0, 10, 6), at(0, 10, 8)]
    store.confirm({uid: (at(0, 10, 8), {})})
    r = apply(store, uid, [ev(uid, at(0, 10, 2, 30))], wm=FAR)  # decides 10:02 at the end of the call
    assert [s.tick_end_ms for s in r.snapshots] == [at(0, 10, 3)]
    assert apply(store, uid, [], wm=FAR).snapshots == r.snapshots  # its tick end <= 10:08, yet not confirmed


def test_confirm_for_a_user_without_window_state(store, uid):
    store.confirm({uid: (at(0, 9), {"pol:x": "1"})})
    assert store.state_of(uid) is None
    assert store.load_policy([uid]) == {uid: {"pol:x": "1"}}
    r = apply(store, uid, [ev(uid, at(0, 8, 59))], wm=at(0, 9))  # its tick ends at the confirmed 09:00
    assert [s.tick_end_ms for s in r.snapshots] == [at(0, 9)]  # a confirm covers only what it saw
    assert apply(store, uid, [], wm=FAR).snapshots == r.snapshots
    store.confirm({uid: (at(0, 9), {})})
    assert apply(store, uid, [], wm=FAR).snapshots == []
    assert store.load_policy([uid]) == {uid: {"pol:x": "1"}}


def test_a_second_confirm_before_the_next_apply_replaces_the_first(store, uid):
    """Tick end and policy fields are one pair, last writer wins (the detector never goes back)."""
    items = [Item(ev(uid, at(0, 7, m, 10)), False, "t:3", m) for m in range(3)]
    first = apply(store, uid, items, wm=at(0, 7, 3))
    store.confirm({uid: (at(0, 7, 3), {"pol:tick": "3"})})
    store.confirm({uid: (at(0, 7, 1), {"pol:tick": "1"})})  # e.g. a stale worker, late
    assert apply(store, uid, [], wm=at(0, 7, 3)).snapshots == first.snapshots[1:]
    assert store.load_policy([uid]) == {uid: {"pol:tick": "1"}}


def test_a_confirmed_policy_state_object_is_held_and_read_back_as_fields(store, uid):
    """The detector confirms :class:`PolicyState` objects: ``load_policy`` gives their fields merged over
    the user's, ``load_policy_states`` a copy the store does not share (changing it, or never
    confirming it, changes nothing), and fields confirmed after an object merge over its fields."""
    store.confirm({uid: (at(0, 9), {"pol:x": "1"})})
    first = store.load_policy_states([uid, uid + "-nobody"])
    assert first == {uid: PolicyState(), uid + "-nobody": PolicyState()}
    st = first[uid]
    st.last_tick_ms, st.ml_level, st.session_min = at(0, 9), "elevated", 12.5
    st.day_scores.append(0.25)
    st.levels = {}
    store.confirm({uid: (at(0, 9), st)})
    got = store.load_policy_states([uid])[uid]
    assert got == st and got is not st and got.day_scores is not st.day_scores
    got.day_scores.append(0.75)
    got.last_tick_ms = 1
    assert store.load_policy_states([uid])[uid] == st  # the caller's copy changed nothing
    assert store.load_policy([uid]) == {uid: {"pol:x": "1", **st.to_fields()}}
    store.confirm({uid: (at(0, 9, 1), {"pol:tick": "7"})})
    assert store.load_policy([uid]) == {uid: {"pol:x": "1", **st.to_fields(), "pol:tick": "7"}}
    assert store.load_policy_states([uid])[uid].last_tick_ms == 7
