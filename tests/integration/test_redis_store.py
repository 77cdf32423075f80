"""RedisWindowStore on real Redis (standalone and Redis Cluster): persistence, fencing, layout.

The store computes with the memory store's kernel (the contract suite in ``tests/contract`` runs
the same cases against both); what is specific to Redis is tested here:

* randomized equivalence with restarts: seeded multi-user event sequences (late and too-late items,
  redelivered duplicates applied out of offset order, commit floors, long gaps, tz and age-band
  changes, partial confirms) give the memory store's exact results and state, also when the Redis
  store is replaced by a fresh instance (a restart or a rebalance) whenever all its changes were
  written; what Redis holds then equals the memory store's state;
* a crash before confirm: a fresh store re-decides the same ticks from the last written state;
* the fence: a stale writer is refused (StaleStateError), a retried write is accepted;
* the key layout of docs/state-layout.md, pinned; TTL; hash tags; cache bound; invalidation;
* NOSCRIPT fallback and error translation.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Iterator
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from stream.core import layout as L
from stream.core import windows
from stream.core.events import CATEGORIES, Event
from stream.core.windows import Item, MemoryWindowStore, UserBatch, UserResult
from stream.errors import StaleStateError, StoreUnavailableError
from stream.state import STATE_LUA, RedisWindowStore, pack_state, unpack_state, user_key, user_tag
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


def new_store(client: Any, prefix: str, **kw: Any) -> RedisWindowStore:
    return RedisWindowStore(client, key_prefix=prefix, ttl_s=TTL_S, **kw)


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


def _run_equivalence(seed: int, client: Any, prefix: str, defer: bool = False) -> tuple[int, int]:
    """Memory store vs Redis store over one scenario; the Redis store restarts when it may.

    ``defer``: the store's writes are deferred (sent by confirm, settled by the next confirm or
    now and then explicitly), as in the worker's pipeline process."""
    rng = np.random.default_rng(10_000 + seed)
    mem = MemoryWindowStore()
    red = new_store(client, prefix, defer_writes=defer)
    touched: set[str] = set()
    outbox: dict[str, list[int]] = {}
    steps = restarts = 0
    gen = _scenario(seed)
    step = next(gen)
    while True:
        kind, arg = step
        reply = None
        if kind == "confirm":
            mem.confirm(arg)
            red.confirm(arg)
            if rng.random() < 0.3:  # now and then everything decided so far is confirmed
                full = {u: (max(t), {"pol:full": str(steps)}) for u, t in outbox.items() if t}
                mem.confirm(full)
                red.confirm(full)
                outbox.clear()
                # an apply drops confirmed snapshots (lazily); a watermark of -inf decides nothing
                nothing = [UserBatch(u, []) for u in sorted(touched)]
                assert red.apply(nothing, -FAR) == mem.apply(nothing, -FAR)
            if defer and rng.random() < 0.5:
                red.finish_write()
            if red.pending_writes() == 0:
                assert not red.write_in_flight()
                for u in touched:  # everything written: what Redis holds is the state
                    assert red.stored_state_of(u) == mem.state_of(u), f"seed {seed}: stored state of {u!r}"
                if rng.random() < 0.5:
                    red = new_store(client, prefix, defer_writes=defer)  # a restart, or the partition moving
                    restarts += 1
        else:
            batches, wm, floors = arg
            reply = mem.apply(batches, wm, floors)
            got = red.apply(batches, wm, floors)
            assert got == reply, f"seed {seed} step {steps}: results differ"
            for r in reply:
                outbox[r.user_id] = [int(t) for t in r.snapshots.tick_end]
            touched.update(r.user_id for r in reply)
            steps += 1
        try:
            step = gen.send(reply)
        except StopIteration:
            break
    assert red.load_policy(sorted(touched)) == mem.load_policy(sorted(touched))
    for u in touched:
        assert red.state_of(u) == mem.state_of(u), f"seed {seed}: final state of {u!r} differs"
    return steps, restarts


@pytest.mark.parametrize("seed", range(16))
def test_random_sequences_with_restarts_give_the_memory_stores_results(client, prefix, seed):
    steps, _ = _run_equivalence(seed, client, prefix)
    assert steps > 0


@pytest.mark.parametrize("seed", range(8))
def test_random_sequences_with_deferred_writes_give_the_memory_stores_results(client, prefix, seed):
    """Standalone and Redis Cluster (calls grouped by the node serving their slot)."""
    steps, _ = _run_equivalence(seed, client, prefix, defer=True)
    assert steps > 0


def test_a_deferred_write_is_settled_by_the_next_confirm_and_its_errors_surface_there(client, prefix):
    p = prefix
    a = new_store(client, p, defer_writes=True)
    a.apply([UserBatch("d", [Item(ev("d", at(0, 7)), False, "t:0", 0)])], at(0, 8))
    a.confirm({"d": (at(0, 7, 1), {})})
    assert a.write_in_flight() and a.pending_writes() == 1
    a.finish_write()
    assert not a.write_in_flight() and a.pending_writes() == 0
    assert a.stored_state_of("d") == a.state_of("d")
    # another writer takes the user over while our next write is in flight
    a.apply([UserBatch("d", [Item(ev("d", at(0, 7, 30)), False, "t:0", 1)])], at(0, 8))
    b = new_store(client, p)
    b.apply([UserBatch("d", [Item(ev("d", at(0, 7, 40)), False, "t:0", 2)])], at(0, 8))
    b.confirm({"d": (at(0, 7, 41), {})})
    a.confirm({"d": (at(0, 7, 31), {})})  # sent; refused by Redis, but nobody has read the reply yet
    assert a.write_in_flight()
    with pytest.raises(StaleStateError):
        a.confirm({})  # the next confirm settles it first


@pytest.mark.parametrize("defer", [False, True])
def test_a_cluster_write_sent_to_the_wrong_node_is_redirected_and_re_sent(clients, defer):
    """A stale slot map (as after a failover or a resharding): the node answers MOVED, the store
    reloads the map and re-sends the write; it lands once, on the right node."""
    if "redis-cluster" not in clients:
        clients["redis-cluster"] = redis_client("redis-cluster")
    client: redis.RedisCluster = clients["redis-cluster"]
    p = f"it{uuid.uuid4().hex[:12]}:rs:"
    try:
        store = new_store(client, p, defer_writes=defer)
        users = [f"u{i}" for i in range(40)]
        store.apply([UserBatch(u, [Item(ev(u, at(0, 7)), False, "t:0", i)]) for i, u in enumerate(users)], at(0, 8))
        slots = client.nodes_manager.slots_cache
        right = {client.keyslot(store.key_of(u)): slots[client.keyslot(store.key_of(u))][0] for u in users}
        primaries = client.get_primaries()
        assert len({n.name for n in right.values()}) > 1
        for slot, node in right.items():  # point every slot of the batch at another primary
            slots[slot] = [next(n for n in primaries if n.name != node.name)]
        store.confirm({u: (at(0, 7, 1), {}) for u in users})
        store.finish_write()  # deferred: MOVED is read here, and the write re-sent synchronously
        assert store.pending_writes() == 0
        assert client.nodes_manager.slots_cache[next(iter(right))][0].name == right[next(iter(right))].name
        for u in users:
            assert client.hget(store.key_of(u), "v") == b"1"
            assert store.stored_state_of(u) == store.state_of(u)
    finally:
        delete_prefix(client, p)


def test_a_cluster_write_waits_for_a_replica(clients):
    """wait_replicas=1 on the stack's cluster (one replica per master): every write acknowledged."""
    if "redis-cluster" not in clients:
        clients["redis-cluster"] = redis_client("redis-cluster")
    client: redis.RedisCluster = clients["redis-cluster"]
    p = f"it{uuid.uuid4().hex[:12]}:rs:"
    try:
        for defer in (False, True):
            store = new_store(client, p, defer_writes=defer, wait_replicas=1, wait_timeout_ms=5000)
            users = [f"w{defer}{i}" for i in range(30)]
            store.apply([UserBatch(u, [Item(ev(u, at(0, 7)), False, "t:0", i)]) for i, u in enumerate(users)],
                        at(0, 8))
            store.confirm({u: (at(0, 7, 1), {}) for u in users})
            store.finish_write()
            assert store.pending_writes() == 0
            for u in users:
                assert store.stored_state_of(u) == store.state_of(u)
    finally:
        delete_prefix(client, p)


@pytest.mark.parametrize("defer", [False, True])
def test_a_write_without_the_replicas_it_waits_for_is_not_done(clients, defer):
    """Standalone Redis has no replica: WAIT 1 times out, the write raises StoreUnavailableError,
    stays pending, and is re-sent (and accepted: the same write by the same writer) once waiting stops."""
    if "redis" not in clients:
        clients["redis"] = redis_client("redis")
    client = clients["redis"]
    p = f"it{uuid.uuid4().hex[:12]}:rs:"
    try:
        store = new_store(client, p, defer_writes=defer, wait_replicas=1, wait_timeout_ms=50)
        store.apply([UserBatch("r", [Item(ev("r", at(0, 7)), False, "t:0", 0)])], at(0, 8))
        with pytest.raises(StoreUnavailableError, match="not acknowledged by 1 replica"):
            store.confirm({"r": (at(0, 7, 1), {})})
            store.finish_write()
        assert store.pending_writes() == 1 and client.hget(store.key_of("r"), "v") == b"1"
        store._wait = []  # as a store with wait_replicas=0 would: the re-send is accepted
        store.finish_write()  # deferred: the unsettled write is re-sent (accepted: the same write)
        store.confirm({})  # the user is still dirty: written (again, if deferred)
        store.finish_write()
        assert store.pending_writes() == 0 and store.stored_state_of("r") == store.state_of("r")
        assert client.hget(store.key_of("r"), "v") == (b"2" if defer else b"1")
    finally:
        delete_prefix(client, p)


def test_the_scenarios_do_restart(client, prefix):
    assert sum(_run_equivalence(seed, client, f"{prefix}{seed}:")[1] for seed in range(4)) > 0
    for seed in range(4):
        delete_prefix(client, f"{prefix}{seed}:")


# -- crashes, fencing ---------------------------------------------------------------------------------
@pytest.mark.parametrize("keep_outbox", [True, False])
def test_a_crash_before_confirm_re_decides_the_same_ticks_from_the_written_state(client, prefix, keep_outbox):
    u = "crash"
    first = [Item(ev(u, at(0, 7, m)), False, "t:0", m) for m in range(3)]
    a = new_store(client, prefix, keep_outbox=keep_outbox)
    a.apply([UserBatch(u, first)], at(0, 7, 3))
    a.confirm({u: (at(0, 7, 3), {"pol:tick": "3"})})
    written = a.stored_state_of(u)
    assert written == a.state_of(u) and a.pending_writes() == 0
    more = first + [Item(ev(u, at(0, 7, m, 5), tz=60, age_band="13-15"), False, "t:0", m) for m in range(3, 6)]
    decided = a.apply([UserBatch(u, more)], at(0, 7, 6))[0]
    assert [s.tick_end_ms for s in decided.snapshots] == [at(0, 7, m) for m in (4, 5, 6)]
    a.confirm({})  # another user's batch confirms: this user's decisions are still unconfirmed
    assert a.stored_state_of(u) == written and a.pending_writes() == 1  # so not written
    # the worker dies here; Kafka redelivers from the last committed offset (3)
    b = new_store(client, prefix)
    again = b.apply([UserBatch(u, more)], at(0, 7, 6))[0]
    assert again.duplicates == 3 and again.snapshots == decided.snapshots
    assert b.load_policy([u]) == {u: {"pol:tick": "3"}}


def test_a_stale_writer_is_refused_and_forgets_the_user(client, prefix):
    u = "owned"
    zombie, owner = new_store(client, prefix), new_store(client, prefix)
    zombie.apply([UserBatch(u, [Item(ev(u, at(0, 9)), False, "t:0", 1)])], FAR)
    owner.apply([UserBatch(u, [Item(ev(u, at(0, 9)), False, "t:0", 1)])], FAR)
    owner.confirm({u: (at(0, 9, 1), {"pol:tick": "1"})})
    with pytest.raises(StaleStateError, match="another worker"):
        zombie.confirm({u: (at(0, 9, 1), {"pol:tick": "zombie"})})
    assert zombie.cached_users == 0 and zombie.pending_writes() == 0
    assert new_store(client, prefix).load_policy([u]) == {u: {"pol:tick": "1"}}
    # reloaded, the former zombie writes again on top of the owner's state
    zombie.apply([UserBatch(u, [Item(ev(u, at(0, 9, 3)), False, "t:0", 2)])], FAR)
    zombie.confirm({u: (at(0, 9, 4), {"pol:tick": "4"})})
    assert client.hget(user_key(prefix, u), "v") == b"2"


def test_a_retried_write_is_accepted_and_another_writers_is_not(client, prefix):
    key = user_key(prefix, "retry")
    script = client.register_script(STATE_LUA)
    assert script(keys=[key], args=[0, "w1", 60_000, 0, "pol:a", "1"]) == 1
    assert script(keys=[key], args=[0, "w1", 60_000, 0, "pol:a", "1"]) == 1  # its reply was lost: same write
    assert script(keys=[key], args=[0, "w2", 60_000, 0, "pol:a", "2"]) == -1
    assert script(keys=[key], args=[1, "w2", 60_000, 0, "pol:a", "2"]) == 2
    assert script(keys=[key], args=[1, "w1", 60_000, 0, "pol:a", "3"]) == -1
    assert client.hgetall(key) == {b"v": b"2", b"w": b"w2", b"pol:a": b"2"}  # the script sets what it is given
    assert 0 < client.pttl(key) <= 60_000


# -- layout -------------------------------------------------------------------------------------------
def test_key_layout_is_pinned(client, prefix):
    u = "layout"
    store = new_store(client, prefix)
    items = [Item(ev(u, at(0, 9), tz=-300, age_band="16-17"), False, "events.views:3", 17),
             Item(ev(u, at(0, 9, 1, 30)), False, "events.views:3", 15)]
    store.apply([UserBatch(u, items)], at(0, 9, 2))
    store.confirm({u: (at(0, 9, 2), {"pol:tick": str(at(0, 9, 1)), "pol:ml": "none"})})
    key = f"{prefix}{{layout}}:u".encode()
    assert scan(client, prefix) == {key} and user_key(prefix, u) == key
    assert client.type(key) == b"hash"
    assert TTL_S * 1000 - 60_000 < client.pttl(key) <= TTL_S * 1000
    h = client.hgetall(key)
    assert set(h) == {b"v", b"w", b"r", b"st", b"pol"}
    assert h[b"v"] == b"1" and len(h[b"w"]) == 32
    sc, band, ring = store.state_of(u)
    assert len(ring) == L.RING_BYTES  # 624 big-endian u32 words
    words = np.frombuffer(ring, ">u4")
    r = h[b"r"]  # few non-zero words: the sparse form, 0x01, a bitmap of them, then them in word order
    assert 0 < np.count_nonzero(words) < 40 and len(r) == 1 + 78 + 4 * np.count_nonzero(words)
    assert r[:1] == b"\x01" and np.array_equal(np.unpackbits(np.frombuffer(r[1:79], np.uint8)).astype(bool), words != 0)
    assert r[79:] == words[words != 0].tobytes()
    st = h[b"st"]
    assert np.array_equal(np.frombuffer(st[:88], ">i8"), sc)  # 11 scalars, big-endian i64
    assert st[88:95] == b"\x00\x0516-17" and band == "16-17"  # u16 length, UTF-8
    assert st[95:] == b'{"events.views:3":[-1,[15,17]]}'  # frontier, applied offsets above it
    assert orjson.loads(h[b"pol"]) == {"pol:tick": str(at(0, 9, 1)), "pol:ml": "none"}
    assert pack_state(*unpack_state(st)) == st


def test_rings_are_read_in_either_form_and_written_in_the_shorter(client, prefix):
    u = "forms"
    store = new_store(client, prefix)
    store.apply([UserBatch(u, [Item(ev(u, at(0, 9)), False, "events.views:0", 1)])], at(0, 9, 2))
    store.confirm({u: (at(0, 9, 2), {})})
    key, state = user_key(prefix, u), store.state_of(u)
    assert state is not None and len(client.hget(key, b"r")) < 200
    client.hset(key, b"r", state[2])  # every word, as versions before the sparse form wrote it
    assert new_store(client, prefix).state_of(u) == state

    # almost every word set: the sparse form would be longer, so the dense one is kept
    full = np.arange(1, L.RING_WORDS + 1, dtype=">u4").tobytes()
    client.hset(key, b"r", full)
    busy = new_store(client, prefix)
    assert busy.state_of(u)[2] == full
    busy.apply([UserBatch(u, [Item(ev(u, at(0, 10)), False, "events.views:0", 2)])], at(0, 10, 2))
    busy.confirm({u: (at(0, 10, 2), {})})
    assert len(client.hget(key, b"r")) == L.RING_BYTES and busy.state_of(u)[2] != full
    assert new_store(client, prefix).state_of(u) == busy.state_of(u)

    for bad in (full[:-4], b"\x02" + full[1:100], b"\x01" + b"\xff" * 78 + b"\x00" * 8):
        client.hset(key, b"r", bad)
        with pytest.raises(ValueError, match="corrupt window state for user 'forms': (ring is|sparse ring marks)"):
            new_store(client, prefix).state_of(u)
        with pytest.raises(ValueError, match="corrupt window state for user 'forms': (ring is|sparse ring marks)"):
            new_store(client, prefix).apply([UserBatch(u, [Item(ev(u, at(0, 11)), False, "events.views:0", 3)])],
                                            at(0, 11, 2))


def test_confirm_for_a_user_without_window_state_writes_only_the_policy(client, prefix):
    store = new_store(client, prefix)
    store.confirm({"p": (at(0, 9), {"pol:x": "1"})})
    h = client.hgetall(user_key(prefix, "p"))
    assert set(h) == {b"v", b"w", b"pol"} and client.pttl(user_key(prefix, "p")) > 0
    assert store.state_of("p") is None and new_store(client, prefix).state_of("p") is None
    with pytest.raises(ValueError, match="pol:"):
        store.confirm({"p": (at(0, 9), {"ring": "x"})})


def test_user_ids_never_collide_or_break_the_hash_tag(client, prefix):
    store, mem = new_store(client, prefix), MemoryWindowStore()
    batches = [UserBatch(u, [Item(ev(u, at(0, 8, i)))]) for i, u in enumerate(USER_POOL)]
    assert store.apply(batches, FAR) == mem.apply(batches, FAR)
    store.confirm({u: (at(0, 8, i + 1), {}) for i, u in enumerate(USER_POOL)})
    keys = scan(client, prefix)
    assert len(keys) == len(USER_POOL) and len({user_tag(u) for u in USER_POOL}) == len(USER_POOL)
    fresh = new_store(client, prefix)
    for u in USER_POOL:
        assert fresh.state_of(u) == mem.state_of(u)
        if isinstance(client, redis.RedisCluster):
            assert client.keyslot(user_key(prefix, u)) == client.keyslot(f"{{{user_tag(u)}}}")


def test_the_cache_is_bounded_and_evicted_users_come_back_from_redis(client, prefix):
    store, mem = new_store(client, prefix, max_cached_users=50), MemoryWindowStore()
    users = [f"c{i}" for i in range(200)]
    for round_ in range(3):
        batches = [UserBatch(u, [Item(ev(u, at(round_, 8, i % 60)), False, "t:1", 1000 * round_ + i)])
                   for i, u in enumerate(users)]
        assert store.apply(batches, at(round_, 9)) == mem.apply(batches, at(round_, 9))
        done = {u: (at(round_, 9), {"pol:r": str(round_)}) for u in users}
        store.confirm(done)
        mem.confirm(done)
        assert store.cached_users <= 50
    assert all(store.state_of(u) == mem.state_of(u) for u in users)
    assert store.load_policy(users) == mem.load_policy(users)


def test_invalidate_drops_the_cache_once_everything_is_written(client, prefix):
    store = new_store(client, prefix)
    store.apply([UserBatch("i", [Item(ev("i", at(0, 8)))])], at(0, 8, 1))
    store.invalidate()
    store.apply([UserBatch("j", [Item(ev("j", at(0, 8)))])], FAR)  # "i" is not written yet: kept
    assert store.cached_users == 2
    store.confirm({"i": (at(0, 8, 1), {}), "j": (at(0, 8, 1), {})})
    assert store.cached_users == 0 and store.pending_writes() == 0
    assert store.state_of("i") is not None and store.cached_users == 0  # read from Redis


def test_a_long_fence_round_trips(client, prefix):
    u = "fence"
    n = windows.MAX_FENCE_OFFSETS + 300
    offs = np.random.default_rng(3).permutation(np.arange(n + 500))[:n].tolist()
    items = [Item(ev(u, at(1, 8) + 1000 * i, "click"), False, "t:0", int(o)) for i, o in enumerate(offs)]
    store, mem = new_store(client, prefix), MemoryWindowStore()
    assert store.apply([UserBatch(u, items)], FAR) == mem.apply([UserBatch(u, items)], FAR)
    store.confirm({u: (FAR, {})})
    mem.confirm({u: (FAR, {})})
    probe = [Item(ev(u, at(3, 8) + i, "click"), False, "t:0", o) for i, o in enumerate(range(0, n + 600, 7))]
    assert new_store(client, prefix).apply([UserBatch(u, probe)], FAR) == mem.apply([UserBatch(u, probe)], FAR)


# -- scripts and errors ------------------------------------------------------------------------------
def test_noscript_fallback_reloads_and_writes_once(client, prefix):
    store, mem = new_store(client, prefix), MemoryWindowStore()
    first = [UserBatch("n1", [Item(ev("n1", at(0, 6)), False, "t:0", 1)])]
    assert store.apply(first, FAR) == mem.apply(first, FAR)
    client.script_flush()  # on every primary of a cluster
    done = {"n1": (FAR, {"pol:x": "1"})}
    store.confirm(done)
    mem.confirm(done)
    assert client.hget(user_key(prefix, "n1"), "v") == b"1"
    assert new_store(client, prefix).state_of("n1") == mem.state_of("n1")


def test_unreachable_redis_raises_store_unavailable():
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1, retry_on_error=[])
    with pytest.raises(StoreUnavailableError, match="unavailable"):
        RedisWindowStore(dead, key_prefix="x:", ttl_s=60)


def test_redis_going_away_mid_run_raises_store_unavailable():
    live = redis_client("redis")
    store = RedisWindowStore(live, key_prefix=f"it{uuid.uuid4().hex[:12]}:rs:", ttl_s=60)
    store.apply([UserBatch("cached", [Item(ev("cached", at(0)))])], FAR)
    live.close()
    store._client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1, retry_on_error=[])
    for call in (lambda: store.apply([UserBatch("u", [Item(ev("u", at(0)))])], FAR), lambda: store.state_of("u"),
                 lambda: store.load_policy(["u"]), lambda: store.confirm({"u": (0, {"pol:a": "1"})})):
        with pytest.raises(StoreUnavailableError) as e:
            call()
        assert isinstance(e.value.__cause__, redis.ConnectionError)
    assert store.pending_writes() >= 1  # nothing was lost: a retry writes it


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="decode_responses"):
        RedisWindowStore(redis.Redis(decode_responses=True), key_prefix="x:", ttl_s=60)
    with pytest.raises(ValueError, match="ttl_s"):
        RedisWindowStore(redis.Redis(), key_prefix="x:", ttl_s=0)


def test_delete_keys_takes_the_prefix_literally(client, prefix):
    from stream.state import delete_keys

    glob, plain = f"{prefix}{{a*[b]}}:", f"{prefix}{{aXb}}:"
    client.set(glob + "1", b"x")
    client.set(plain + "1", b"y")
    assert delete_keys(client, glob) == 1
    assert client.get(glob + "1") is None and client.get(plain + "1") == b"y"


def test_a_confirmed_policy_state_object_is_written_as_its_fields(client, prefix):
    """An object confirm is persisted at the write as :meth:`PolicyState.to_fields` gives it: a new
    owner reads the same state back from Redis (the object itself never leaves the worker)."""
    u = "pobj"
    store = new_store(client, prefix)
    store.apply([UserBatch(u, [Item(ev(u, at(0, 9)), False, "t:1", 3)])], at(0, 9, 1))
    st = store.load_policy_states([u])[u]
    st.last_tick_ms, st.cap_day, st.cap_open, st.cur_score = at(0, 9, 1), 20000, True, 0.125
    st.day_scores += [0.5, 0.0625]
    store.confirm({u: (at(0, 9, 1), st)})  # written now (write=True)
    assert new_store(client, prefix).load_policy_states([u])[u] == st
    assert new_store(client, prefix).load_policy([u]) == {u: st.to_fields()}
