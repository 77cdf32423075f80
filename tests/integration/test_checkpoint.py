"""Checkpointed state writes (``RISKSTREAM_CHECKPOINT_MS``) on real Redis: a user changed in many
steps is written once per interval; a message is reported done (acked) only with the step whose
checkpoint writes its state; a drop (rebalance) and a full dirty set write at once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from stream.core.detector import Detector
from stream.core.events import encode_event
from stream.core.policy import AlertPolicy, load_policy_config
from stream.live.pipeline import Pipeline
from stream.live.protocol import Step
from stream.settings import Settings, load_settings
from stream.state import RedisWindowStore
from stream.state.codec import _F_VERSION
from tests.contract.conftest import delete_prefix, redis_client
from tests.eventgen import at, ev
from tests.unit.test_pipeline import FakeProducer


@pytest.fixture
def client(stack: None) -> Iterator[redis.Redis]:
    c = redis_client("redis")
    assert isinstance(c, redis.Redis)
    yield c
    c.close()


def _pipeline(client: redis.Redis, namespace: str, **overrides: Any) -> tuple[Pipeline, RedisWindowStore]:
    s = load_settings(namespace=namespace, lateness_ms=0, **overrides)
    store = RedisWindowStore(client, key_prefix=s.key_prefix, ttl_s=s.state_ttl_s, keep_outbox=False,
                             defer_writes=True, max_cached_users=s.state_cache_users)
    return Pipeline(s, Detector(store, AlertPolicy(load_policy_config(None))), FakeProducer(),
                    store=store), store


def _steps(p: Pipeline, s: Settings, users: list[str], n: int, first_off: int = 0) -> list[set[int]]:
    """``n`` steps; in each, one click of every user (partition 0, the view input idle): every
    message is decided in its step. The offsets reported done, per step (after its write settled)."""
    done: list[set[int]] = []
    off = first_off
    for k in range(n):
        msgs = []
        for u in users:
            e = ev(u, at(0, 12, k, users.index(u) % 60), "click", tz=0)
            msgs.append((s.clicks_topic, 0, off, u.encode(), encode_event(e)))
            off += 1
        rep = p.step(Step(msgs, [0], {(0, "view"): True, (0, "click"): True}, {}, 0.0, at(1)))
        p.finish_writes()  # as link.serve does before it answers the report
        done.append({o for _, _, o in rep.done})
    return done


def _version(client: redis.Redis, store: RedisWindowStore, user: str) -> int:
    v = client.hget(store.key_of(user), _F_VERSION)
    return 0 if v is None else int(v)


@pytest.fixture
def ns(client: redis.Redis, namespace: str) -> Iterator[str]:
    yield namespace
    delete_prefix(client, f"{namespace}:")


def test_without_checkpoints_every_step_writes_and_acks(client: redis.Redis, ns: str) -> None:
    p, store = _pipeline(client, ns, checkpoint_ms=0)
    done = _steps(p, p.s, ["a", "b"], 5)
    assert done == [{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}]
    assert _version(client, store, "a") == 5  # one write per step


def test_a_checkpoint_writes_each_user_once_and_releases_the_acks(client: redis.Redis, ns: str) -> None:
    p, store = _pipeline(client, ns, checkpoint_ms=60_000)
    done = _steps(p, p.s, ["a", "b"], 5)
    assert done == [set()] * 5  # done, but not written: nothing acked
    assert _version(client, store, "a") == 0 and store.unwritten_users == 2
    p._last_checkpoint -= 61  # the interval passed
    [last] = _steps(p, p.s, ["a", "b"], 1, first_off=10)
    assert last == set(range(12))  # every message done since the last checkpoint, now written
    assert _version(client, store, "a") == 1 and _version(client, store, "b") == 1
    assert store.unwritten_users == 0
    assert _steps(p, p.s, ["a"], 1, first_off=12) == [set()]  # the next interval starts


def test_a_drop_writes_before_the_new_owner_reads(client: redis.Redis, ns: str) -> None:
    p, store = _pipeline(client, ns, checkpoint_ms=60_000)
    _steps(p, p.s, ["a"], 3)
    assert _version(client, store, "a") == 0
    p.drop([1])  # another partition revoked: everything unwritten is written now
    assert _version(client, store, "a") == 1
    rep = p.step(Step([], [], {}, {}, 0.0, at(1)))  # the acks of the written messages go out next
    assert sorted(o for _, _, o in rep.done) == [0, 1, 2]


def test_too_many_unwritten_users_force_a_checkpoint(client: redis.Redis, ns: str) -> None:
    p, store = _pipeline(client, ns, checkpoint_ms=60_000, state_cache_users=100)
    users = [f"u{i}" for i in range(100)]
    done = _steps(p, p.s, users, 1)
    assert done == [set(range(100))]
    assert all(_version(client, store, u) == 1 for u in users)


def test_close_writes_what_is_unwritten(client: redis.Redis, ns: str) -> None:
    p, store = _pipeline(client, ns, checkpoint_ms=60_000)
    _steps(p, p.s, ["a"], 2)
    p.close()
    assert _version(client, store, "a") == 1 and store.unwritten_users == 0


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="checkpoint_ms"):
        load_settings(checkpoint_ms=-1)
