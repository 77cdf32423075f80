"""RedisWindowStore against its Python twin, on real Redis (standalone and Redis Cluster).

* randomized equivalence: seeded multi-user event sequences (late items, too-late items, redelivered
  duplicates with offsets applied out of offset order, commit floors, long gaps, tz and age-band
  changes, confirms) in random batch splits give identical UserResults (snapshots byte-equal),
  identical policy state and identical final ``state_of`` in both stores;
* the key layout of docs/state-layout.md, pinned: key names, hash tag, types, TTLs, hash fields;
* the constants hard-coded in stream/lua/*.lua equal stream/core/layout.py;
* NOSCRIPT fallback, the fence cap, error translation.
"""

from __future__ import annotations

import re
import struct
import uuid
from collections.abc import Generator, Iterator
from typing import Any

import numpy as np
import pytest
import redis

from stream.core import layout as L
from stream.core import windows
from stream.core.events import CATEGORIES, Event, Reason
from stream.core.windows import Item, MemoryWindowStore, UserBatch, UserResult
from stream.errors import StoreUnavailableError
from stream import redis_store as RS
from stream.redis_store import APPLY_LUA, RedisWindowStore, user_keys, user_tag
from tests.contract.conftest import delete_prefix, redis_client
from tests.eventgen import DAY0, at, ev

FAR = 2**62
TTL_S = 7 * 86_400
KINDS = ["redis", "redis-cluster"]
USER_POOL = [
    "plain-user", "a{b}c", "{", "}", "{}", "}{", "%7B", "%", "x%7Dy", "a:b*c?[x] d", "ü✓ 用户",
    "{" * 64 + "}" * 64, "tab\there", "user\nnewline",
]


@pytest.fixture(scope="module")
def clients() -> Iterator[dict[str, redis.Redis | redis.RedisCluster]]:
    made: dict[str, redis.Redis | redis.RedisCluster] = {}
    yield made
    for c in made.values():
        c.close()


@pytest.fixture(params=KINDS)
def client(request: pytest.FixtureRequest, clients: dict[str, Any]) -> redis.Redis | redis.RedisCluster:
    if request.param not in clients:
        clients[request.param] = redis_client(request.param)
    return clients[request.param]  # type: ignore[no-any-return]


@pytest.fixture
def prefix(client: redis.Redis | redis.RedisCluster) -> Iterator[str]:
    p = f"it{uuid.uuid4().hex[:12]}:rs:"
    yield p
    delete_prefix(client, p)


def scan(client: redis.Redis | redis.RedisCluster, prefix: str) -> set[bytes]:
    if isinstance(client, redis.RedisCluster):
        return set(client.scan_iter(match=prefix + "*", count=1000, target_nodes=redis.RedisCluster.PRIMARIES))
    return set(client.scan_iter(match=prefix + "*", count=1000))


# -- randomized equivalence ----------------------------------------------------------------------
_ids = iter(range(10**9))


def _event(rng: np.random.Generator, user: str, ts: int, tz: int | None, band: str | None) -> Event:
    kind = "view" if rng.random() < 0.6 else "click"
    r = rng.random()
    dwell = int(rng.integers(0, 3_000)) if r < 0.3 else int(rng.integers(0, 120_000)) if r < 0.95 else \
        int(rng.integers(0, 86_400_001))
    return ev(user, ts, kind, dwell_ms=dwell, category=str(rng.choice(CATEGORIES)), tz=tz, age_band=band,
              event_id=f"e{next(_ids):09d}")


def _gap(rng: np.random.Generator) -> int:
    r = rng.random()
    if r < 0.5:
        return int(rng.integers(0, 40_000))
    if r < 0.7:
        return int(rng.integers(40_000, 600_000))
    if r < 0.85:
        return int(rng.integers(600_000, 5 * 3_600_000))
    if r < 0.96:
        return int(rng.integers(5 * 3_600_000, 3 * 86_400_000))
    return int(rng.integers(3 * 86_400_000, 40 * 86_400_000))


def _user_items(rng: np.random.Generator, user: str, n: int, offsets: dict[str, int], fenced: bool) -> list[Item]:
    """One user's items in application order: canonical order, with late items mixed in."""
    ts = DAY0 + int(rng.integers(0, 86_400_000))
    tz: int | None = int(rng.choice([0, 60, -300, 330]))
    items: list[Item] = []
    newest = ts
    for _ in range(n):
        r = rng.random()
        if r < 0.05:
            tz = int(rng.choice([-840, -1, 0, 120, 840, int(rng.integers(-840, 841))]))
        ev_tz = None if rng.random() < 0.3 else tz
        band = None if rng.random() < 0.85 else str(rng.choice(["u13", "13-15", "16-17", "adult", "", "a\nb"]))
        if items and rng.random() < 0.12:
            # a late event: older than what was already released; some beyond the longest window
            back = int(rng.integers(0, 35 * 86_400_000)) if rng.random() < 0.3 else int(rng.integers(0, 3_600_000))
            e = _event(rng, user, max(newest - back, DAY0 - 60 * 86_400_000), ev_tz, band)
            late = True
        else:
            ts += _gap(rng)
            newest = max(newest, ts)
            e = _event(rng, user, ts, ev_tz, band)
            late = False
        if fenced and rng.random() < 0.9:
            tp = f"ev.{e.type}s:{int(rng.integers(0, 2))}"
            offsets[tp] = offsets.get(tp, -1) + 1 + int(rng.integers(0, 5))  # other users' offsets between
            items.append(Item(e, late, tp, offsets[tp]))
        else:
            items.append(Item(e, late))
    # out-of-offset-order application: swap offsets of neighbouring items of the same tp
    for i in range(len(items) - 1):
        a, b = items[i], items[i + 1]
        if a.tp is not None and a.tp == b.tp and rng.random() < 0.3:
            items[i], items[i + 1] = a._replace(offset=b.offset), b._replace(offset=a.offset)
    return items


def _scenario(seed: int) -> Generator[tuple[str, Any], list[UserResult] | None, None]:
    """Steps ("apply", (batches, watermark, floors)) — sent back the results — and ("confirm", done)."""
    rng = np.random.default_rng(seed)
    users = [str(u) for u in rng.choice(USER_POOL, size=int(rng.integers(2, 6)), replace=False)]
    offsets: dict[str, int] = {}
    fenced = rng.random() < 0.8
    queues = {u: _user_items(rng, u, int(rng.integers(20, 160)), offsets, fenced) for u in users}
    pos = dict.fromkeys(users, 0)
    sent: list[list[UserBatch]] = []
    floors: dict[str, int] = {}
    wm = DAY0
    ticks_seen: dict[str, list[int]] = {u: [] for u in users}  # outbox tick ends, from the results
    while any(pos[u] < len(queues[u]) for u in users):
        batches: list[UserBatch] = []
        for u in rng.permutation(users):
            u = str(u)
            k = int(rng.integers(0, 12)) if rng.random() < 0.8 else int(rng.integers(0, 80))
            chunk = queues[u][pos[u]: pos[u] + k]
            pos[u] += len(chunk)
            if chunk or rng.random() < 0.3:
                batches.append(UserBatch(u, chunk))
        if sent and rng.random() < 0.15:  # redelivery of an earlier call (and a user twice in one call)
            batches += sent[int(rng.integers(0, len(sent)))]
        if not batches:
            continue
        sent.append(batches)
        newest = max((i.event.ts_ms for b in batches for i in b.items), default=wm)
        r = rng.random()
        wm = FAR if r < 0.05 else max(wm, newest - int(rng.integers(0, 240_000))) if r < 0.9 else wm - 60_000
        if offsets and rng.random() < 0.5:
            tp = str(rng.choice(sorted(offsets)))
            floors[tp] = max(floors.get(tp, 0), int(rng.integers(0, offsets[tp] + 2)))
        results = yield "apply", (batches, wm, dict(floors) if rng.random() < 0.8 else None)
        assert results is not None
        for res in results:
            ticks_seen[res.user_id] = [x.tick_end_ms for x in res.snapshots]
        if rng.random() < 0.6:
            done = {}
            for u in users:
                if ticks_seen[u] and rng.random() < 0.7:
                    through = int(rng.choice(ticks_seen[u]))
                    done[u] = (through, {"pol:tick": str(through), "pol:n": str(int(rng.integers(0, 9)))})
            if done:
                yield "confirm", done


def _run_equivalence(seed: int, red: RedisWindowStore) -> int:
    mem = MemoryWindowStore()
    touched: set[str] = set()
    steps = 0
    gen = _scenario(seed)
    step = next(gen)
    while True:
        kind, arg = step
        reply = None
        if kind == "confirm":
            mem.confirm(arg)
            red.confirm(arg)
        else:
            batches, wm, floors = arg
            reply = mem.apply(batches, wm, floors)
            got = red.apply(batches, wm, floors)
            assert got == reply, f"seed {seed} step {steps}: results differ"
            touched.update(r.user_id for r in reply)
            steps += 1
        try:
            step = gen.send(reply)
        except StopIteration:
            break
    for u in sorted(touched):
        assert red.state_of(u) == mem.state_of(u), f"seed {seed}: final state of {u!r} differs"
    assert red.load_policy(sorted(touched)) == mem.load_policy(sorted(touched))
    return steps


@pytest.mark.parametrize("seed", range(24))
def test_random_sequences_give_identical_results_and_state(client, prefix, seed):
    red = RedisWindowStore(client, key_prefix=prefix, ttl_s=TTL_S)
    assert _run_equivalence(seed, red) > 0


def test_equivalence_also_holds_for_one_big_call_per_user(client, prefix):
    """A fast replay: every user's whole history in one call (many ticks decided inside the script)."""
    rng = np.random.default_rng(99)
    mem, red = MemoryWindowStore(), RedisWindowStore(client, key_prefix=prefix, ttl_s=TTL_S)
    offsets: dict[str, int] = {}
    batches = [UserBatch(u, _user_items(rng, u, 1500, offsets, True)) for u in USER_POOL[:4]]
    assert red.apply(batches, FAR) == mem.apply(batches, FAR)
    assert red.apply(batches, FAR, {"ev.views:0": 10}) == mem.apply(batches, FAR, {"ev.views:0": 10})
    for b in batches:
        assert red.state_of(b.user_id) == mem.state_of(b.user_id)


def test_fence_cap_keeps_the_newest_offsets_like_the_twin(client, prefix):
    n = windows.MAX_FENCE_OFFSETS + 700
    rng = np.random.default_rng(7)
    offs = rng.permutation(np.arange(10, 10 + n + 200))[:n].tolist()  # gaps, out of order
    base = at(2, 8)
    items = [Item(ev("cap", base + 1000 * i, "click"), False, "t:0", int(o)) for i, o in enumerate(offs)]
    mem, red = MemoryWindowStore(), RedisWindowStore(client, key_prefix=prefix, ttl_s=TTL_S)
    for lo in range(0, n, 1700):
        chunk = [UserBatch("cap", items[lo: lo + 1700])]
        assert red.apply(chunk, FAR) == mem.apply(chunk, FAR)
    probe = [Item(ev("cap", base + 10**7 + i, "click"), False, "t:0", o) for i, o in
             enumerate(sorted({*range(0, 10 + n + 210, 3), *offs[:50], *offs[-50:]}))]
    got, want = red.apply([UserBatch("cap", probe)], FAR), mem.apply([UserBatch("cap", probe)], FAR)
    assert got == want and 0 < want[0].duplicates < len(probe)
    assert red.state_of("cap") == mem.state_of("cap")


def test_rejections_saturation_and_profile_edges_match(client, prefix):
    mem, red = MemoryWindowStore(), RedisWindowStore(client, key_prefix=prefix, ttl_s=TTL_S)
    u = "edge"
    steps = [
        [Item(ev(u, at(40, 12), tz=-1, age_band=""))],  # tz -1 must not read back as "none" (TZ_BIAS)
        [Item(ev(u, at(11, 12), tz=None), late=True), Item(ev(u, at(40, 12, 0, 10), tz=None))],  # too late
        [Item(ev(u, at(40, 11), "view", dwell_ms=86_400_000, tz=None), late=True) for _ in range(60)],
        [Item(ev(u, at(40, 12, 5), tz=840, age_band="16-17")), Item(ev(u, at(41, 12), "view", tz=-840))],
    ]
    results = []
    for items in steps:
        want = mem.apply([UserBatch(u, items)], at(41, 13))
        assert red.apply([UserBatch(u, items)], at(41, 13)) == want
        results.append(want[0])
    assert results[1].rejected == [(0, Reason.TOO_LATE)]
    assert red.state_of(u) == mem.state_of(u)
    raw = np.frombuffer(red.state_of(u)[2], dtype=L.RING_DTYPE)
    assert raw.max() == L.U32_MAX


# -- key layout (docs/state-layout.md) ------------------------------------------------------------
def test_key_layout_is_pinned(client, prefix):
    store = RedisWindowStore(client, key_prefix=prefix, ttl_s=TTL_S)
    u = "a{b}c"
    assert user_tag(u) == "a%7Bb%7Dc" and user_tag("%7B") == "%257B" and user_tag("ü") == "ü"
    ring, state, outbox, spill = (prefix + "{a%7Bb%7Dc}" + s for s in (":w", ":s", ":o", ":f"))
    assert store.keys_of(u) == user_keys(prefix, u) == tuple(k.encode() for k in (ring, state, outbox, spill))
    window_fields = {b"ss", b"se", b"sd", b"lc", b"hh", b"dh", b"fd", b"tz", b"mx", b"lt", b"ab",
                     b"f:events.views:3", b"pol:tick", b"pol:ml", b"om"}  # + pt, lv, ob when set

    store.save_policy({u: {"pol:tick": "1", "pol:ml": "none"}})
    # the 09:02 event decides the 09:00 tick inside the call: a copy of the ring goes to the list
    r = store.apply([UserBatch(u, [Item(ev(u, at(0, 9)), False, "events.views:3", 17),
                                   Item(ev(u, at(0, 9, 2), age_band="13-15"), False, "events.views:3", 18)])],
                    at(0, 9, 1))[0]
    assert [s.tick_end_ms for s in r.snapshots] == [at(0, 9, 1)] and r.pending_tick == at(0, 9, 2) // L.TICK_MS
    assert scan(client, prefix) == {ring.encode(), state.encode(), outbox.encode()}
    assert client.type(ring) == b"string" and client.strlen(ring) == L.RING_BYTES
    assert client.type(state) == b"hash" and client.type(outbox) == b"list" and client.llen(outbox) == 2  # header, ring
    for k in (ring, state, outbox):
        assert TTL_S - 10 < client.ttl(k) <= TTL_S
    head = client.lindex(outbox, 0)
    assert RS._snapshot(u, head, client.lindex(outbox, 1)) == r.snapshots[0]
    assert struct.unpack_from(">q", head)[0] == at(0, 9, 1)
    fields = client.hgetall(state)
    assert set(fields) == window_fields | {b"pt"}
    assert fields[b"pt"] == str(at(0, 9, 2) // L.TICK_MS).encode() and fields[b"lt"] == b"0"
    assert fields[b"om"] == str(at(0, 9, 1)).encode()  # the newest tick end in the list
    assert fields[b"ab"] == b"13-15" and fields[b"f:events.views:3"] == b"-1,18,1"
    assert fields[b"pol:tick"] == b"1"  # the policy layer's fields are left alone
    assert client.object("encoding", state) == b"listpack"
    if isinstance(client, redis.RedisCluster):
        assert len({client.keyslot(k) for k in (ring, state, outbox, spill)}) == 1

    # confirm is one HSET: the policy fields and "ob"; the list stays until the next apply
    store.confirm({u: (at(0, 9, 1), {"pol:tick": str(at(0, 9, 1))})})
    assert client.hget(state, "ob") == str(at(0, 9, 1)).encode() and client.llen(outbox) == 2
    assert TTL_S - 10 < client.ttl(state) <= TTL_S
    assert RS.OUTBOX_GRACE_S - 10 < client.ttl(outbox) <= RS.OUTBOX_GRACE_S  # all of it confirmed
    assert store.load_policy([u]) == {u: {"pol:tick": str(at(0, 9, 1)), "pol:ml": "none"}}
    # the next apply drops the confirmed snapshot first: the list is gone, "ob" stays (nothing in
    # the outbox is <= ob after an apply); a floor past both offsets prunes the fence to its frontier
    r = store.apply([UserBatch(u, [Item(ev(u, at(0, 9, 3)), False, "events.views:3", 16)])], at(0, 9, 2),
                    {"events.views:3": 19})[0]
    assert r.snapshots == [] and r.duplicates == 1
    assert scan(client, prefix) == {ring.encode(), state.encode()}
    fields = client.hgetall(state)
    assert set(fields) == window_fields | {b"pt", b"ob"} and fields[b"om"] == b"0"
    assert client.hget(state, "f:events.views:3") == b"18"

    # a tick decided at the end of a call is "live": the field lv, no copy; the reply has the ring
    r = store.apply([UserBatch(u, [])], at(0, 9, 3))[0]
    assert [s.tick_end_ms for s in r.snapshots] == [at(0, 9, 3)] and r.pending_tick is None
    live = r.snapshots[0]
    assert scan(client, prefix) == {ring.encode(), state.encode()}
    assert client.hget(state, "lv") == str(at(0, 9, 3)).encode() and client.hget(state, "pt") is None
    sc, band, raw = store.state_of(u)
    assert live.rings == raw and band == live.age_band == "13-15"
    assert sc[:L.S_PT] == live.scalars[:L.S_PT] and live.scalars[L.S_PT] == at(0, 9, 2) // L.TICK_MS
    assert store.apply([UserBatch(u, [])], FAR)[0].snapshots == [live]  # nothing changes it
    # unconfirmed, it is materialised (header + ring copy) before an item changes the state
    r = store.apply([UserBatch(u, [Item(ev(u, at(0, 9, 4)), False, "events.views:3", 20)])], at(0, 9, 4))[0]
    assert r.snapshots == [live]
    assert client.hget(state, "lv") is None and client.hget(state, "om") == str(at(0, 9, 3)).encode()
    assert client.llen(outbox) == 2
    assert RS._snapshot(u, client.lindex(outbox, 0), client.lindex(outbox, 1)) == live
    assert TTL_S - 10 < client.ttl(outbox) <= TTL_S
    # confirmed, a live snapshot is dropped without ever being copied
    store.confirm({u: (at(0, 9, 3), {})})
    assert RS.OUTBOX_GRACE_S - 10 < client.ttl(outbox) <= RS.OUTBOX_GRACE_S
    r = store.apply([UserBatch(u, [])], at(0, 9, 5))[0]
    assert [s.tick_end_ms for s in r.snapshots] == [at(0, 9, 5)]
    store.confirm({u: (at(0, 9, 5), {})})
    r = store.apply([UserBatch(u, [Item(ev(u, at(0, 9, 6)), False, "events.views:3", 21)])], at(0, 9, 6))[0]
    assert r.snapshots == [] and scan(client, prefix) == {ring.encode(), state.encode()}
    fields = client.hgetall(state)
    assert set(fields) == window_fields | {b"pt", b"ob"} and fields[b"ob"] == str(at(0, 9, 5)).encode()
    assert store.load_policy([u]) == {u: {"pol:tick": str(at(0, 9, 1)), "pol:ml": "none"}}
    with pytest.raises(ValueError, match="pol:"):
        store.confirm({u: (0, {"ss": "1"})})
    with pytest.raises(ValueError, match="pol:"):
        store.confirm({u: (0, {"ob": "1"})})


def test_confirm_for_a_user_without_state_writes_only_the_policy_hash_with_a_ttl(client, prefix):
    store = RedisWindowStore(client, key_prefix=prefix, ttl_s=TTL_S)
    u = "nobody"
    ring, state, _, _ = store.keys_of(u)
    store.confirm({u: (at(0, 9), {"pol:x": "1"})})
    assert scan(client, prefix) == {state}
    assert TTL_S - 10 < client.ttl(state) <= TTL_S
    assert store.state_of(u) is None and store.load_policy([u]) == {u: {"pol:x": "1"}}
    mem = MemoryWindowStore()
    mem.confirm({u: (at(0, 9), {"pol:x": "1"})})
    b = [UserBatch(u, [Item(ev(u, at(0, 8, 59)))])]  # its tick ends at the confirmed 09:00
    got = store.apply(b, FAR)
    assert got == mem.apply(b, FAR) and [x.tick_end_ms for x in got[0].snapshots] == [at(0, 9)]  # not dropped
    assert store.state_of(u) == mem.state_of(u)
    assert client.hget(state, "ob") is None and store.load_policy([u]) == {u: {"pol:x": "1"}}  # reset


def test_a_confirmed_outbox_list_gets_the_grace_ttl_and_a_partly_confirmed_one_keeps_its_ttl(client, prefix):
    store, mem = RedisWindowStore(client, key_prefix=prefix, ttl_s=TTL_S, outbox_grace_s=600), MemoryWindowStore()
    u = "grace"
    _, _, outbox, _ = store.keys_of(u)
    items = [Item(ev(u, at(0, 7, m, 10)), False, "t:3", m) for m in range(4)]
    got = store.apply([UserBatch(u, items)], at(0, 7, 4))[0]  # 3 ticks decided by events, 1 at the end (live)
    assert got == mem.apply([UserBatch(u, items)], at(0, 7, 4))[0] and client.llen(outbox) == 6
    store.confirm({u: (at(0, 7, 2), {})})  # part of the list
    assert TTL_S - 10 < client.ttl(outbox) <= TTL_S
    store.confirm({u: (at(0, 7, 3), {})})  # all of the list, not the live one: enough
    assert 590 < client.ttl(outbox) <= 600
    mem.confirm({u: (at(0, 7, 3), {})})
    got = store.apply([UserBatch(u, [Item(ev(u, at(0, 7, 5)), False, "t:3", 9)])], at(0, 7, 4))
    assert got == mem.apply([UserBatch(u, [Item(ev(u, at(0, 7, 5)), False, "t:3", 9)])], at(0, 7, 4))
    assert client.llen(outbox) == 2 and TTL_S - 10 < client.ttl(outbox) <= TTL_S  # the live one, stored


def test_a_vanished_outbox_list_is_forgotten_not_an_error(client, prefix):
    """om names a list that is gone (its grace TTL met a race, or an eviction): apply carries on."""
    store = RedisWindowStore(client, key_prefix=prefix, ttl_s=TTL_S)
    u = "vanished"
    _, state, outbox, _ = store.keys_of(u)
    items = [Item(ev(u, at(0, 7, m, 10)), False, "t:3", m) for m in range(3)]
    store.apply([UserBatch(u, items)], at(0, 7, 2))
    store.confirm({u: (at(0, 7, 1), {})})  # covers the first stored snapshot only
    client.delete(outbox)
    r = store.apply([UserBatch(u, [])], at(0, 7, 2))[0]
    assert r.snapshots == [] and client.hget(state, "om") == b"0"
    r = store.apply([UserBatch(u, [Item(ev(u, at(0, 7, 3, 10)), False, "t:3", 7)])], FAR)[0]
    assert [s.tick_end_ms for s in r.snapshots] == [at(0, 7, 3), at(0, 7, 4)]


def test_a_snapshot_decided_after_a_confirm_lowers_ob_below_its_tick_end(client, prefix):
    store = RedisWindowStore(client, key_prefix=prefix, ttl_s=TTL_S)
    u = "lower"
    _, state, _, _ = store.keys_of(u)
    store.apply([UserBatch(u, [Item(ev(u, at(0, 10, 5, 10)))])], FAR)
    store.confirm({u: (at(0, 10, 6), {})})
    r = store.apply([UserBatch(u, [Item(ev(u, at(0, 10, 0, 10)))])], FAR)[0]  # an in-order event, older
    assert [s.tick_end_ms for s in r.snapshots] == [at(0, 10, 1)]
    assert client.hget(state, "ob") == str(at(0, 10, 1) - 1).encode()
    assert store.apply([UserBatch(u, [])], FAR)[0].snapshots == r.snapshots


def test_an_outbox_written_by_the_previous_script_is_still_returned(client, prefix):
    """Upgrade: a list without "om" (written by the previous apply.lua, e.g. crashed before confirm)."""
    store, mem = RedisWindowStore(client, key_prefix=prefix, ttl_s=TTL_S), MemoryWindowStore()
    u = "upgrade"
    _, state, outbox, _ = store.keys_of(u)
    items = [Item(ev(u, at(0, 7, m, 10)), False, "t:3", m) for m in range(3)]
    want = mem.apply([UserBatch(u, items)], at(0, 7, 2))
    assert store.apply([UserBatch(u, items)], at(0, 7, 2)) == want and client.llen(outbox) == 4
    client.hdel(state, "om")  # what the previous script left: header/ring pairs, no summary
    assert store.apply([UserBatch(u, items)], at(0, 7, 2)) == mem.apply([UserBatch(u, items)], at(0, 7, 2))
    assert client.hget(state, "om") == str(at(0, 7, 2)).encode()
    store.confirm({u: (at(0, 7, 2), {})})
    mem.confirm({u: (at(0, 7, 2), {})})
    assert store.apply([UserBatch(u, [])], FAR) == mem.apply([UserBatch(u, [])], FAR)
    assert client.exists(outbox) == 0 and client.hget(state, "om") == b"0"


def test_a_long_fence_spills_and_the_state_hash_stays_a_listpack(client, prefix):
    store, mem = RedisWindowStore(client, key_prefix=prefix, ttl_s=TTL_S), MemoryWindowStore()
    u, tp = "spill{}", "events.views:11"
    _, state, _, spill = store.keys_of(u)
    many = [Item(ev(u, at(0, 8, 0, i)), False, tp, 1_000_000 + 347 * i) for i in range(40)]
    for step, (items, floor) in enumerate([(many, None), (many[:5], None), ([], None),
                                           ([Item(ev(u, at(0, 8, 5)), False, tp, 2_000_000)], {tp: 1_000_000 + 347 * 39})]):
        assert store.apply([UserBatch(u, items)], FAR, floor) == mem.apply([UserBatch(u, items)], FAR, floor)
        if step < 3:  # 40 uncommitted offsets: "<frontier>,@" inline, the deltas in the spill hash
            assert client.hget(state, "f:" + tp) == b"-1,@" and client.hlen(spill) == 1
            assert TTL_S - 10 < client.ttl(spill) <= TTL_S
        assert client.object("encoding", state) == b"listpack"
    assert client.hget(state, "f:" + tp) == b"1013532,1,986467"  # frontier = floor - 1; {floor, 2000000}
    assert client.exists(spill) == 0  # back inline: the spill hash is gone
    assert store.state_of(u) == mem.state_of(u)


def test_user_ids_never_collide_or_break_the_hash_tag(client, prefix):
    store, mem = RedisWindowStore(client, key_prefix=prefix, ttl_s=TTL_S), MemoryWindowStore()
    batches = [UserBatch(u, [Item(ev(u, at(0, 8, i)))]) for i, u in enumerate(USER_POOL)]
    assert store.apply(batches, FAR) == mem.apply(batches, FAR)
    assert len(scan(client, prefix)) == 2 * len(USER_POOL)  # ticks decided at the end of the call: no list
    batches = [UserBatch(u, [Item(ev(u, at(0, 9, i)))]) for i, u in enumerate(USER_POOL)]
    assert store.apply(batches, FAR) == mem.apply(batches, FAR)  # unconfirmed: copied into the list first
    keys = scan(client, prefix)
    assert len(keys) == 3 * len(USER_POOL)
    for u in USER_POOL:
        assert store.state_of(u) == mem.state_of(u)
        if isinstance(client, redis.RedisCluster):
            assert len({client.keyslot(k) for k in store.keys_of(u)}) == 1


def test_lua_constants_match_the_layout():
    want = {
        "TICK_MS": L.TICK_MS, "SESSION_GAP_MS": L.SESSION_GAP_MS, "WAKING_GAP_MAX_MS": L.WAKING_GAP_MAX_MS,
        "SHORT_SESSION_MS": L.SHORT_SESSION_MS, "LONG_SESSION_MS": L.LONG_SESSION_MS, "HOUR_MS": L.HOUR_MS,
        "DAY_MS": L.DAY_MS, "HOUR_SLOTS": L.HOUR_SLOTS, "DAY_SLOTS": L.DAY_SLOTS, "DETAIL_SLOTS": L.DETAIL_SLOTS,
        "LONGEST_WINDOW_MS": L.LONGEST_WINDOW_MS, "LOG_SCALE": L.LOG_SCALE, "SQ_UNIT_S2": L.SQ_UNIT_S2,
        "NH": len(L.H_FIELDS), "ND": len(L.D_FIELDS), "NX": len(L.X_FIELDS), "H_BASE": L.H_BASE,
        "D_BASE": L.D_BASE, "X_BASE": L.X_BASE, "RING_WORDS": L.RING_WORDS,
        "H_ACTIVE": L.H_ACTIVE, "H_SESSIONS": L.H_SESSIONS, "D_ACTIVE": L.D_ACTIVE, "D_SESSIONS": L.D_SESSIONS,
        "D_CLOSED": L.D_CLOSED, "D_LOGLEN": L.D_LOGLEN, "X_CLOSED": L.X_CLOSED, "X_SHORT15": L.X_SHORT15,
        "X_LONG30": L.X_LONG30, "X_LEN_S": L.X_LEN_S, "X_LOGLEN": L.X_LOGLEN, "X_LOGLEN_SQ": L.X_LOGLEN_SQ,
        "X_GAP_N": L.X_GAP_N, "X_GAP_S": L.X_GAP_S, "X_GAP_SQ": L.X_GAP_SQ, "X_GAP_LOG": L.X_GAP_LOG,
        "X_RMSSD_N": L.X_RMSSD_N, "X_RMSSD_SQ": L.X_RMSSD_SQ, "X_CLICKS": L.X_CLICKS, "X_VIEWS": L.X_VIEWS,
        "X_DWELL_S": L.X_DWELL_S, "X_CAT0": L.X_CAT0,
        "ITEM_BYTES": RS._ITEM.size, "TZ_ABSENT": RS._TZ_ABSENT,  # the item encoding shared with Python
    }
    got: dict[str, int] = {}
    for names, values in re.findall(r"^local ([A-Z0-9_, ]+) = ([-0-9, ]+)$", APPLY_LUA, flags=re.M):
        for n, v in zip(names.split(","), values.split(","), strict=True):
            got[n.strip()] = int(v)
    assert got == want
    assert re.search(r"^local SCALARS = \{(.*)\}$", APPLY_LUA, flags=re.M).group(1) == \
        ", ".join(f"'{s}'" for s in L.SCALARS)
    lua_fmt = re.search(r"^local ITEM = '(.*)'$", APPLY_LUA, flags=re.M).group(1)
    assert lua_fmt == ">i8BI4hHHi8" and RS._ITEM.format == ">qBIhHHq"  # same widths, same order
    lua_head = re.search(r"^local HEAD = '(.*)'$", APPLY_LUA, flags=re.M).group(1)
    assert lua_head == ">" + "i8" * 12 + "B" and RS._HEAD.format == ">12qB"


# -- scripts and errors ------------------------------------------------------------------------------
def test_noscript_fallback_reloads_and_applies_once(client, prefix):
    store, mem = RedisWindowStore(client, key_prefix=prefix, ttl_s=TTL_S), MemoryWindowStore()
    first = [UserBatch("n1", [Item(ev("n1", at(0, 6)), False, "t:0", 1)])]
    assert store.apply(first, FAR) == mem.apply(first, FAR)
    client.script_flush()  # on every primary of a cluster
    second = [UserBatch("n1", [Item(ev("n1", at(0, 6, 5)), False, "t:0", 2), first[0].items[0]]),
              UserBatch("n2", [Item(ev("n2", at(0, 6)))])]
    assert store.apply(second, FAR) == mem.apply(second, FAR)  # the redelivered offset 1 is a duplicate
    client.script_flush()
    done = {"n1": (at(0, 6, 6), {"pol:x": "1"})}
    store.confirm(done)
    mem.confirm(done)
    assert store.apply(second[:1], FAR) == mem.apply(second[:1], FAR)
    assert store.load_policy(["n1", "n2"]) == mem.load_policy(["n1", "n2"])
    assert store.state_of("n1") == mem.state_of("n1")


def test_a_lost_ring_restarts_the_user_but_keeps_the_policy_fields(client, prefix):
    store = RedisWindowStore(client, key_prefix=prefix, ttl_s=TTL_S)
    u = "lost"
    store.apply([UserBatch(u, [Item(ev(u, at(0, 6)), False, "t:0", 1)])], at(0, 6, 5))
    store.confirm({u: (at(0, 6, 1), {"pol:tick": "5"})})
    client.delete(store.keys_of(u)[0])  # e.g. evicted: the scalars alone are meaningless
    mem = MemoryWindowStore()
    items = [UserBatch(u, [Item(ev(u, at(0, 7)), False, "t:0", 1)])]
    assert store.apply(items, at(0, 7, 5)) == mem.apply(items, at(0, 7, 5))
    assert store.state_of(u) == mem.state_of(u)
    assert store.load_policy([u]) == {u: {"pol:tick": "5"}}


def test_unreachable_redis_raises_store_unavailable():
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1, retry_on_error=[])
    with pytest.raises(StoreUnavailableError, match="unavailable"):
        RedisWindowStore(dead, key_prefix="x:", ttl_s=60)


def test_redis_going_away_mid_run_raises_store_unavailable():
    live = redis_client("redis")
    store = RedisWindowStore(live, key_prefix=f"it{uuid.uuid4().hex[:12]}:rs:", ttl_s=60)
    live.close()
    store._client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1, retry_on_error=[])
    for call in (lambda: store.apply([UserBatch("u", [Item(ev("u", at(0)))])], FAR), lambda: store.state_of("u"),
                 lambda: store.load_policy(["u"]), lambda: store.confirm({"u": (0, {"pol:a": "1"})})):
        with pytest.raises(StoreUnavailableError) as e:
            call()
        assert isinstance(e.value.__cause__, redis.ConnectionError)


def test_decode_responses_client_is_refused():
    with pytest.raises(ValueError, match="decode_responses"):
        RedisWindowStore(redis.Redis(decode_responses=True), key_prefix="x:", ttl_s=60)
