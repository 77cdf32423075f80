"""Ownership fencing of state writes by consumer group generation (docs/state-layout.md §2), on real Redis.

A worker that lost a partition without knowing it (a zombie: GC, SIGSTOP, a VM pause past the session
timeout) must be refused, and the partition's new owner must never be refused because of what the
zombie wrote (issue #12 item 7, reviews/reliability.md §3 G1). The rule of ``stream/lua/state.lua``:

* a write from an older generation than the stored one is refused (StaleStateError);
* a write from a newer generation replaces the state whatever its version;
* within one generation, the version compare-and-set and the retried-own-write case, as before;
* a copy is written with the generation it was *loaded* under, not the caller's current one.

The scenarios check the result against the memory store given every event once: what the zombie
wrote and the owner replaced is uncommitted, and the owner applies it itself (redelivery).
"""

from __future__ import annotations


import pytest

from stream.core.windows import Item, MemoryWindowStore, UserBatch
from stream.errors import StaleStateError
from stream.state import STATE_LUA, user_key
from tests.eventgen import at, ev
from tests.integration.test_redis_store import FAR, new_store
from tests.integration.test_redis_store import client, clients, prefix  # noqa: F401 - the same fixtures


U = "owned"
TP = "events.views:0"


def item(minute: int, offset: int) -> Item:
    return Item(ev(U, at(0, 9, minute), event_id=f"ev{offset}"), False, TP, offset)


def batch(*offsets: int) -> list[UserBatch]:
    return [UserBatch(U, [item(o, o) for o in offsets])]


def expected_state(*offsets: int):
    mem = MemoryWindowStore()
    mem.apply(batch(*offsets), FAR)
    return mem.state_of(U)


def stored(client, prefix) -> dict[bytes, bytes]:
    h = client.hgetall(user_key(prefix, U))
    return {k: v for k, v in h.items() if k in (b"v", b"w", b"g")}


def written_by_generation_1(client, prefix):
    """Generation 1 owned the partition and wrote event 0 (committed)."""
    first = new_store(client, prefix)
    first.set_generation(1)
    first.apply(batch(0), FAR)
    first.confirm({U: (at(0, 9, 1), {"pol:tick": "0"})})
    assert stored(client, prefix)[b"g"] == b"1"


def test_the_script_fences_by_generation_then_by_version(client, prefix):
    key = user_key(prefix, "k")
    script = client.register_script(STATE_LUA)

    def write(base: int, writer: str, gen: int, value: str) -> int:
        return script(keys=[key], args=[base, writer, 60_000, gen, "pol:a", value])

    assert write(0, "w1", 3, "a") == 1
    assert client.hget(key, "g") == b"3"
    assert write(1, "w2", 2, "b") == -1  # an older generation, even on the current version
    assert write(0, "w2", 3, "b") == -1  # same generation: the version compare-and-set
    assert write(0, "w1", 3, "a2") == 1  # same generation, same writer, base + 1 stored: a retried write
    assert write(0, "w3", 4, "c") == 1  # a newer generation replaces it whatever the version
    assert client.hmget(key, "v", "w", "g", "pol:a") == [b"1", b"w3", b"4", b"c"]
    assert write(0, "w3", 4, "c2") == 1  # and its lost-reply retry is accepted
    assert write(1, "w3", 4, "c3") == 2  # then it goes on by version
    assert write(2, "w4", 0, "d") == -1  # generation 0 (unknown) is the oldest
    assert write(5, "w4", 3, "d") == -1
    assert client.hmget(key, "v", "w", "g", "pol:a") == [b"2", b"w3", b"4", b"c3"]
    # a hash without g (written before this field existed, or by generation 0) is generation 0
    old = user_key(prefix, "old")
    assert script(keys=[old], args=[0, "w0", 60_000, 0, "pol:a", "x"]) == 1
    assert b"g" not in client.hgetall(old)
    assert script(keys=[old], args=[0, "w5", 60_000, 1, "pol:a", "y"]) == 1
    assert client.hmget(old, "v", "w", "g") == [b"1", b"w5", b"1"]


def test_a_zombie_writing_after_the_new_owner_loaded_does_not_stop_the_owner(client, prefix):
    """The ping-pong of the last-writer fence: the new owner loaded, the zombie wrote first."""
    written_by_generation_1(client, prefix)
    zombie, owner = new_store(client, prefix), new_store(client, prefix)
    zombie.set_generation(1)
    owner.set_generation(2)
    zombie.apply(batch(1), FAR)  # paused with event 1 applied, not written
    owner.apply(batch(1, 2), FAR)  # took the partition over: event 1 redelivered (uncommitted), then 2
    zombie.confirm({U: (at(0, 9, 2), {"pol:tick": "zombie"})})  # resumes: accepted, nobody wrote since its load
    owner.confirm({U: (at(0, 9, 3), {"pol:tick": "2"})})  # a newer generation: replaces the zombie's write
    assert owner.stored_state_of(U) == expected_state(0, 1, 2)
    assert owner.load_policy([U]) == {U: {"pol:tick": "2"}}
    assert stored(client, prefix)[b"g"] == b"2"
    zombie.apply(batch(3), FAR)
    with pytest.raises(StaleStateError, match="generation"):
        zombie.confirm({U: (at(0, 9, 4), {"pol:tick": "zombie"})})
    owner.apply(batch(3), FAR)
    owner.confirm({U: (at(0, 9, 4), {"pol:tick": "3"})})  # the owner carries on
    assert new_store(client, prefix).state_of(U) == expected_state(0, 1, 2, 3)


def test_a_new_owner_loading_after_the_zombies_write_skips_its_events_by_the_fence(client, prefix):
    written_by_generation_1(client, prefix)
    zombie, owner = new_store(client, prefix), new_store(client, prefix)
    zombie.set_generation(1)
    owner.set_generation(2)
    zombie.apply(batch(1), FAR)
    zombie.confirm({U: (at(0, 9, 2), {})})
    (r,) = owner.apply(batch(1, 2), FAR)
    assert r.duplicates == 1
    owner.confirm({U: (at(0, 9, 3), {})})
    assert owner.stored_state_of(U) == expected_state(0, 1, 2)


def test_a_zombie_is_refused_once_the_new_owner_wrote(client, prefix):
    written_by_generation_1(client, prefix)
    zombie, owner = new_store(client, prefix), new_store(client, prefix)
    zombie.set_generation(1)
    owner.set_generation(2)
    zombie.apply(batch(1), FAR)
    owner.apply(batch(1, 2), FAR)
    owner.confirm({U: (at(0, 9, 3), {})})
    with pytest.raises(StaleStateError):
        zombie.confirm({U: (at(0, 9, 2), {})})
    assert zombie.cached_users == 0 and zombie.pending_writes() == 0
    assert new_store(client, prefix).state_of(U) == expected_state(0, 1, 2)


def test_a_copy_keeps_the_generation_it_was_loaded_under(client, prefix):
    """The zombie rejoins and gets a newer generation than the owner's: a copy it loaded before must
    still not replace the owner's state (it lacks what the owner applied and committed)."""
    written_by_generation_1(client, prefix)
    zombie, owner = new_store(client, prefix), new_store(client, prefix)
    zombie.set_generation(1)
    owner.set_generation(2)
    zombie.apply(batch(1), FAR)
    owner.apply(batch(1, 2), FAR)
    owner.confirm({U: (at(0, 9, 3), {})})  # events 1 and 2 written; the owner may commit them
    zombie.set_generation(3)  # rejoined
    with pytest.raises(StaleStateError):
        zombie.confirm({U: (at(0, 9, 2), {})})  # its old copy: generation 1
    # reloaded under generation 3, it owns the state again (the partition may well be its own now)
    (r,) = zombie.apply(batch(2, 3), FAR)
    assert r.duplicates == 1
    zombie.confirm({U: (at(0, 9, 4), {})})
    assert stored(client, prefix)[b"g"] == b"3"
    assert new_store(client, prefix).state_of(U) == expected_state(0, 1, 2, 3)


def test_within_a_generation_the_version_compare_and_set_holds(client, prefix):
    written_by_generation_1(client, prefix)
    a, b = new_store(client, prefix), new_store(client, prefix)
    a.set_generation(2)
    b.set_generation(2)
    a.apply(batch(1), FAR)
    b.apply(batch(1), FAR)
    a.confirm({U: (at(0, 9, 2), {})})
    with pytest.raises(StaleStateError):
        b.confirm({U: (at(0, 9, 2), {})})
    assert stored(client, prefix)[b"v"] == b"2"


def test_a_deferred_write_of_a_zombie_settles_as_refused(client, prefix):
    """The zombie's write was in flight when it paused; the new owner wrote meanwhile."""
    written_by_generation_1(client, prefix)
    zombie = new_store(client, prefix, defer_writes=True)
    owner = new_store(client, prefix)
    zombie.set_generation(1)
    owner.set_generation(2)
    zombie.apply(batch(1), FAR)
    owner.apply(batch(1, 2), FAR)
    owner.confirm({U: (at(0, 9, 3), {})})
    with pytest.raises(StaleStateError):
        zombie.confirm({U: (at(0, 9, 2), {})})  # Redis Cluster: written (refused) at once
        assert zombie.write_in_flight()  # standalone: sent, its reply unread
        zombie.finish_write()
    assert new_store(client, prefix).state_of(U) == expected_state(0, 1, 2)
