"""Benchmark of RedisWindowStore: Redis CPU per event, events/s, and memory per user.

    .venv/bin/python bench/redis_store_bench.py [--url redis://127.0.0.1:6379/0] [--users 500] [--rounds 30]

For each size k in (1, 5, 20) events per user per call: ``--users`` users per pipelined ``apply``,
one call per user per round. A round is one minute of event time: each user's k events fall inside
it, the watermark passes the previous minute, so every call also decides one tick (a snapshot into
the outbox), and the worker's ``confirm`` follows, as live. Items carry Kafka positions and commit
floors (the fence is exercised). A second mode ("no tick") keeps all rounds inside one tick: the
pure update cost.

Reported: per event, the server's ``used_cpu_user + used_cpu_sys`` delta (everything: protocol,
script, replies, confirm) and the EVALSHA time from INFO commandstats (the scripts alone); per call,
the apply script's and the confirm script's EVALSHA time; and client throughput (single-threaded
Python: encode, one round trip, decode, confirm). The first round (users
created) is excluded. Then MEMORY USAGE of a user with a week of realistic activity.
Keys are written under a random prefix and deleted afterwards.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import numpy as np
import redis

from stream.core.events import CATEGORIES, Event
from stream.core.windows import Item, UserBatch
from stream.redis_store import RedisWindowStore

T0 = 1_717_200_000_000  # 2024-06-01T00:00:00Z


def _event(rng: np.random.Generator, user: str, ts: int, n: int) -> Event:
    view = rng.random() < 0.6
    return Event(user_id=user, ts_ms=ts, type="view" if view else "click", event_id=f"{user}-{n}",
                 category=str(CATEGORIES[int(rng.integers(0, len(CATEGORIES)))]),
                 dwell_ms=int(rng.integers(500, 30_000)) if view else 0, tz_offset_min=120, age_band="16-17",
                 item_id=None, session_id=None)


def _server_cpu(c: redis.Redis) -> float:
    info = c.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _evalsha_usec(c: redis.Redis) -> tuple[int, int]:
    s = c.info("commandstats").get("cmdstat_evalsha", {"usec": 0, "calls": 0})
    return int(s["usec"]), int(s["calls"])


class Feed:
    """Per-user events with Kafka positions: partition p of two topics, offsets interleaved."""

    def __init__(self, users: list[str], seed: int) -> None:
        self.users = users
        self.rng = np.random.default_rng(seed)
        self.offsets = {"events.clicks:0": 0, "events.views:0": 0}
        self.n = 0

    def batches(self, k: int, t_start: int, span_ms: int) -> list[UserBatch]:
        out = []
        for u in self.users:
            times = np.sort(self.rng.integers(t_start, t_start + span_ms, size=k))
            items = []
            for ts in times.tolist():
                e = _event(self.rng, u, ts, self.n)
                self.n += 1
                tp = "events.views:0" if e.type == "view" else "events.clicks:0"
                self.offsets[tp] += 1
                items.append(Item(e, False, tp, self.offsets[tp]))
            out.append(UserBatch(u, items))
        return out


def run(client: redis.Redis, k: int, users: int, rounds: int, decide: bool) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:8]}:rs:"
    store = RedisWindowStore(client, key_prefix=prefix, ttl_s=86_400)
    feed = Feed([f"user-{i:06d}" for i in range(users)], seed=k)
    cpu = ev_usec = ev_calls = confirm_usec = 0.0
    wall = 0.0
    events = snaps = 0
    floors: dict[str, int] = {}
    try:
        for r in range(rounds):
            if decide:
                t = T0 + r * 60_000
                batches = feed.batches(k, t, 60_000)
                wm = t  # passes the previous minute: one tick decided per user and call
            else:
                t = T0 + r * 50  # all rounds inside one tick: no decision, no snapshot
                batches = feed.batches(k, t, 50)
                wm = 0
            c0, (u0, n0), w0 = _server_cpu(client), _evalsha_usec(client), time.perf_counter()
            results = store.apply(batches, wm, floors)
            done = {res.user_id: (res.snapshots[-1].tick_end_ms, {"pol:tick": str(res.snapshots[-1].tick_end_ms)})
                    for res in results if res.snapshots}
            um, _ = _evalsha_usec(client)
            if done:
                store.confirm(done)
            w1, (u1, n1), c1 = time.perf_counter(), _evalsha_usec(client), _server_cpu(client)
            floors = dict(feed.offsets)  # the previous round is committed by the time the next one runs
            if r == 0:
                continue
            cpu += c1 - c0
            ev_usec += u1 - u0
            ev_calls += n1 - n0
            confirm_usec += u1 - um
            wall += w1 - w0
            events += users * k
            snaps += sum(len(x.snapshots) for x in results)
    finally:
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)
    return {
        "k": k, "mode": "tick/call" if decide else "no tick", "events": events, "snapshots": snaps,
        "cpu_us_per_event": 1e6 * cpu / events, "evalsha_us_per_event": ev_usec / events,
        "apply_us_per_call": (ev_usec - confirm_usec) / (events / k),
        "confirm_us_per_call": confirm_usec / max(1, snaps), "events_per_s": events / wall,
    }


def memory_of_a_week(client: redis.Redis) -> dict[str, int]:
    """A realistic heavy-ish user: ~40 pickups a day for 7 days, 3-25 events each, one call a minute."""
    prefix = f"benchmem{uuid.uuid4().hex[:8]}:rs:"
    store = RedisWindowStore(client, key_prefix=prefix, ttl_s=86_400)
    rng = np.random.default_rng(1)
    u = "user-week"
    feed = Feed([u], seed=1)
    floors: dict[str, int] = {}
    n = 0
    try:
        for day in range(7):
            starts = np.sort(rng.integers(7 * 3_600_000, 24 * 3_600_000, size=40))
            for s in starts.tolist():
                t = T0 + day * 86_400_000 + s
                for minute in range(int(rng.integers(1, 8))):
                    b = feed.batches(int(rng.integers(1, 6)), t + minute * 60_000, 60_000)
                    res = store.apply(b, t + minute * 60_000, floors)[0]
                    if res.snapshots:
                        store.confirm({u: (res.snapshots[-1].tick_end_ms, {
                            "pol:tick": str(res.snapshots[-1].tick_end_ms), "pol:ml": "none", "pol:ml_at": "",
                            "pol:el_t0": "", "pol:hi_t0": "", "pol:cap_day": str(19875 + day), "pol:cf_at": "",
                            "pol:cu_n": "0", "pol:cu_min": "3.5"})})
                    floors = dict(feed.offsets)
                    n += sum(len(x.items) for x in b)
        # the last call's offsets stay in the fence until the next commit floor passes them
        ring, state, outbox, spill = store.keys_of(u)
        out = {"events": n, "ring": client.memory_usage(ring, samples=0),
               "state": client.memory_usage(state, samples=0),
               "outbox": client.memory_usage(outbox, samples=0) or 0,
               "spill": client.memory_usage(spill, samples=0) or 0,
               "state_fields": client.hlen(state), "state_encoding": client.object("encoding", state)}
        out["total"] = out["ring"] + out["state"] + out["outbox"] + out["spill"]
        return out
    finally:
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)


def memory_per_user_overall(client: redis.Redis, users: int = 5000) -> dict[str, float]:
    """INFO used_memory delta per user (keys, values, dict and expires entries) after 30 min of activity."""
    prefix = f"benchall{uuid.uuid4().hex[:8]}:rs:"
    store = RedisWindowStore(client, key_prefix=prefix, ttl_s=86_400)
    feed = Feed([f"user-{i:06d}" for i in range(users)], seed=5)
    before = int(client.info("memory")["used_memory"])
    floors: dict[str, int] = {}
    try:
        for r in range(30):
            results = []
            for lo in range(0, users, 500):
                feed.users = [f"user-{i:06d}" for i in range(lo, min(users, lo + 500))]
                results += store.apply(feed.batches(2, T0 + r * 60_000, 60_000), T0 + r * 60_000, floors)
            done = {x.user_id: (x.snapshots[-1].tick_end_ms, {f"pol:f{i}": "1717200000000" for i in range(9)})
                    for x in results if x.snapshots}
            for lo in range(0, len(done), 500):
                store.confirm(dict(list(done.items())[lo: lo + 500]))
            floors = dict(feed.offsets)
        after = int(client.info("memory")["used_memory"])
        return {"users": users, "bytes_per_user": (after - before) / users}
    finally:
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=30)
    a = ap.parse_args()
    client = redis.Redis.from_url(a.url)
    print(f"redis {client.info('server')['redis_version']} at {a.url}; {a.users} users per pipelined apply")
    print(f"{'k':>3} {'mode':>10} {'events':>8} {'snaps':>7} {'cpu µs/ev':>10} {'evalsha µs/ev':>14} "
          f"{'apply µs':>9} {'confirm µs':>10} {'events/s':>9}")
    for decide in (True, False):
        for k in (1, 5, 20):
            r = run(client, k, a.users, a.rounds, decide)
            print(f"{r['k']:>3} {r['mode']:>10} {r['events']:>8} {r['snapshots']:>7} {r['cpu_us_per_event']:>10.1f} "
                  f"{r['evalsha_us_per_event']:>14.1f} {r['apply_us_per_call']:>9.1f} {r['confirm_us_per_call']:>10.1f} "
                  f"{r['events_per_s']:>9.0f}")
    print("memory of one user after a week:", memory_of_a_week(client))
    print("memory per user, INFO used_memory delta:", memory_per_user_overall(client))


if __name__ == "__main__":
    main()
