"""The live columnar path (``Detector`` on a store with ``apply_fenced``, issue #17 item 1) decides
exactly what the per-user path (``WindowStore.apply`` of :class:`UserBatch` items) decides: the same
alerts, levels, refused events in the same order, duplicates skipped by the offset fence, pending
ticks, window state and fences, release after release — with late events, redelivered positions,
commit floors and users due without events."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core.alerts import alert_to_json
from stream.core.detector import ColumnRelease, Detector, Outcome, Release
from stream.core.events import Event
from stream.core.levels import levels_to_json
from stream.core.ordering import canonical_key
from stream.core.policy import AlertPolicy, load_policy_config
from stream.core.windows import EventColumns, FenceColumn, MemoryWindowStore
from tests.eventgen import at, ev

Meta = tuple[str, int]


class PerUserStore(MemoryWindowStore):
    """The memory store without the columnar entry: the detector takes the per-user path."""

    fenced_columns = False  # type: ignore[assignment]


def _position(meta: Meta) -> tuple[str, int]:
    return meta


def _summary(out: Outcome[Meta]) -> tuple:
    return (
        [alert_to_json(a) for a in out.alerts],
        [(e.event_id, m, str(r)) for e, m, r in out.rejected],
        [(lv.user_id, None if lv.record is None else levels_to_json(lv.record)) for lv in out.levels],
        sorted(out.confirm.items()),
        out.applied, out.late, out.duplicates, out.evaluations,
    )


def _releases(seed: int, n_releases: int, users: int, dup_rate: float, late_rate: float) -> list[list[Release[Meta]]]:
    rng = random.Random(seed)
    names = [f"u{i}" for i in range(users)]
    next_pos = {"events.clicks:0": 0, "events.views:0": 0}
    seen: list[tuple[Event, Meta]] = []
    t = at(1, 8)
    wm = t
    steps: list[list[Release[Meta]]] = []
    for _ in range(n_releases):
        new_wm = wm + rng.randrange(60_000, rng.choice((1_200_000, 3 * 3_600_000)))
        released: list[tuple[Event, Meta]] = []
        for _ in range(rng.randrange(0, 80)):
            kind = rng.choice(("click", "view"))
            tp = f"events.{kind}s:0"
            e = ev(rng.choice(names), rng.randrange(wm, new_wm), kind, dwell_ms=rng.randrange(0, 120_000),
                   category=rng.choice(("social", "short_video", "games")),
                   age_band=rng.choice(("u13", "u13", "16-17", None)))  # rules that fire: caps, curfew
            released.append((e, (tp, next_pos[tp])))
            next_pos[tp] += 1
        if seen:  # redeliveries: the same event at the same position (a duplicate for the fence)
            released += [rng.choice(seen) for _ in range(int(len(released) * dup_rate))]
        late: list[tuple[Event, Meta]] = []
        for _ in range(rng.randrange(0, 8) if rng.random() < late_rate else 0):
            kind = rng.choice(("click", "view"))
            tp = f"events.{kind}s:0"
            back = rng.choice((rng.randrange(1, 3_600_000), rng.randrange(86_400_000, 40 * 86_400_000)))
            late.append((ev(rng.choice(names), wm - back, kind), (tp, next_pos[tp])))
            next_pos[tp] += 1
        if seen and rng.random() < 0.3:
            late.append(rng.choice(seen))
        released.sort(key=lambda em: canonical_key(em[0]))
        seen += released + late
        floor = {tp: rng.randrange(0, p + 1) for tp, p in next_pos.items()} if rng.random() < 0.5 else None
        wm = new_wm
        # sometimes two partitions' releases in one call (users split by name)
        if rng.random() < 0.3:
            a = [em for em in released if em[0].user_id in names[::2]]
            b = [em for em in released if em[0].user_id not in names[::2]]
            steps.append([Release(a, wm, late, floor, group=0), Release(b, wm, (), floor, group=1)])
        else:
            steps.append([Release(released, wm, late, floor, group=0)])
    return steps


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), n=st.integers(1, 40), users=st.integers(1, 6),
       dup_rate=st.sampled_from([0.0, 0.1, 0.5]), late_rate=st.sampled_from([0.0, 0.3, 1.0]))
def test_the_columnar_path_decides_what_the_per_user_path_decides(seed, n, users, dup_rate, late_rate):
    policy = AlertPolicy(load_policy_config(None))
    columnar = Detector(MemoryWindowStore(keep_outbox=False), policy)
    per_user = Detector(PerUserStore(keep_outbox=False), policy)
    assert columnar.store.fenced_columns and not per_user.store.fenced_columns
    for releases in _releases(seed, n, users, dup_rate, late_rate):
        # the same users to load (their order, the pending heap's layout, is irrelevant)
        assert sorted(columnar.users_of(releases)) == sorted(per_user.users_of(releases))
        a = columnar.process(releases, _position)
        b = per_user.process(releases, _position)
        assert _summary(a) == _summary(b)
        columnar.commit(a)
        per_user.commit(b)
        assert columnar._pending == per_user._pending
    ta, tb = columnar.store.table, per_user.store.table
    assert sorted(ta.users()) == sorted(tb.users())
    for u in ta.users():
        assert ta.state_of(u) == tb.state_of(u)
        assert ta._fence.get(ta._slot[u]) == tb._fence.get(tb._slot[u])


def test_refused_events_stay_unapplied_in_the_fence_and_duplicates_are_counted():
    d = Detector(MemoryWindowStore(keep_outbox=False), AlertPolicy(load_policy_config(None)))
    fresh = ev("a", at(40, 9), "view")
    old = ev("a", at(1, 9), "view")  # far older than the user's newest event minus the longest window
    d.process(Release([(fresh, ("events.views:0", 0))], at(40, 10)), _position)
    out = d.process(Release([(fresh, ("events.views:0", 0))], at(40, 11), [(old, ("events.views:0", 1))]),
                    _position)
    assert out.duplicates == 1 and out.late == 1
    assert [(e.event_id, m) for e, m, _ in out.rejected] == [(old.event_id, ("events.views:0", 1))]
    # the refused position is not in the fence: a redelivery is refused again, not skipped
    again = d.process(Release([], at(40, 12), [(old, ("events.views:0", 1))]), _position)
    assert again.duplicates == 0 and len(again.rejected) == 1


def _column_release(rel: Release[Meta]) -> ColumnRelease:
    items = [*rel.released, *rel.late]
    cols = EventColumns.from_events([e for e, _ in items], [False] * len(rel.released) + [True] * len(rel.late))
    return ColumnRelease(cols, len(rel.late), FenceColumn.of([m[0] for _, m in items], [m[1] for _, m in items]),
                         rel.watermark_ms, rel.commit_floor, rel.group)


def _by_user(releases: list[Release[Meta]]) -> list[Release[Meta]]:
    """A step's events as three groups by user (a user's events all in one group)."""
    out = []
    for g in range(3):
        released = [em for rel in releases for em in rel.released if int(em[0].user_id[1:]) % 3 == g]
        late = [em for rel in releases for em in rel.late if int(em[0].user_id[1:]) % 3 == g]
        out.append(Release(released, releases[0].watermark_ms + 60_000 * g, late, releases[0].commit_floor, group=g))
    return out


def _by_topic(releases: list[Release[Meta]]) -> list[Release[Meta]]:
    """A step's events as two groups by input topic (clicks in group 0, views in group 1): every
    user may be in both, every fence key in one, as with input topics of different partition counts."""
    out = []
    for g, topic in enumerate(("events.clicks:0", "events.views:0")):
        released = [em for rel in releases for em in rel.released if em[1][0] == topic]
        released.sort(key=lambda em: canonical_key(em[0]))
        late = [em for rel in releases for em in rel.late if em[1][0] == topic]
        out.append(Release(released, releases[0].watermark_ms + 60_000 * g, late, releases[0].commit_floor, group=g))
    return out


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), n=st.integers(1, 40), users=st.integers(1, 6),
       dup_rate=st.sampled_from([0.0, 0.1, 0.5]), late_rate=st.sampled_from([0.0, 0.3, 1.0]),
       split=st.sampled_from(["users", "topics", "gaps"]))
def test_the_releases_of_a_step_in_one_store_call_decide_what_they_decide_one_by_one(
        seed, n, users, dup_rate, late_rate, split):
    """The live worker hands the detector one release per partition; with the columnar entry they go
    to the store in one call (one kernel call, per-part watermarks). That decides what the per-user
    path decides release after release — also for a user in two groups (each with its own watermark
    and pending tick)."""
    policy = AlertPolicy(load_policy_config(None))
    together = Detector(MemoryWindowStore(keep_outbox=False), policy)
    one_by_one = Detector(PerUserStore(keep_outbox=False), policy)
    calls = 0
    apply_fenced = together.store.apply_fenced

    def counting(parts):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return apply_fenced(parts)
    together.store.apply_fenced = counting  # type: ignore[method-assign]
    steps = 0
    rng = random.Random(seed)
    for releases in _releases(seed, n, users, dup_rate, late_rate):
        if split == "gaps":  # a partition with no events now and then: its part may be due users only
            releases = [Release([] if rng.random() < 0.5 else r.released, r.watermark_ms, r.late, r.commit_floor,
                                group=r.group) for r in _by_user(releases)]
        rels = [_column_release(r) for r in (_by_topic(releases) if split == "topics" else releases)]
        a = together.process(rels)
        b = one_by_one.process(rels)
        assert _summary(a) == _summary(b)
        together.commit(a)
        one_by_one.commit(b)
        assert together._pending == one_by_one._pending
        steps += 1
    assert calls <= steps  # one store call per step (none when nothing is applied or due)
    ta, tb = together.store.table, one_by_one.store.table
    assert sorted(ta.users()) == sorted(tb.users())
    for u in ta.users():
        assert ta.state_of(u) == tb.state_of(u)
        assert ta._fence.get(ta._slot[u]) == tb._fence.get(tb._slot[u])
