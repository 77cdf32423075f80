"""Benchmark of RedisWindowStore: Redis CPU per event, events/s, and memory per user.

    .venv/bin/python bench/redis_store_bench.py [--url redis://127.0.0.1:6379/0] [--users 500] [--rounds 30]
    .venv/bin/python bench/redis_store_bench.py --baseline REV --repeat 5   # A/B against a git revision

For each size k in (1, 5, 20) events per user per call: ``--users`` users per ``apply``, one call
per user per round, and the worker's ``confirm`` after each round, as live (the current store
writes there: one fenced EVALSHA per changed user). Items carry Kafka positions and commit floors
(the fence is exercised). Modes:

* "tick/call": a round is one minute of event time; each user's k events fall inside it and the
  watermark is at its end, as the reorder buffer releases: every call decides its tick at its end.
* "next ev": the watermark stays at the start of the round's minute, so the tick of the previous
  round is decided by the first event of the next call instead.
* "2 ticks/call" (k >= 2): each call's events span two minutes, the watermark passes both.
* "no tick": all rounds inside one tick: the pure update cost.

``--baseline 0c63d38`` runs the previous design (a Lua script that applied the events inside
Redis) against the current one.

Reported: per event, the server's ``used_cpu_user + used_cpu_sys`` delta (everything: protocol,
script, replies, confirm) and the EVALSHA time from INFO commandstats (the script alone); per call,
the server CPU of the apply pipeline and of the confirm pipeline (measured separately); and client
throughput (single-threaded Python: encode, one round trip, decode, confirm). The first round (users
created) is excluded. Then MEMORY USAGE of a user with a week of realistic activity.

``--baseline REV`` loads ``stream/redis_store.py`` and ``stream/lua/*.lua`` of a git revision into a
separate module and runs it and the working tree's store alternately, ``--repeat`` times per size
(same Redis, same feeds, fresh key prefixes), then prints the ranges and the per-pair ratios: on a
shared machine, interleaving keeps load drift out of the comparison.
Keys are written under a random prefix and deleted afterwards.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import types
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import redis

from stream.core.events import CATEGORIES, Event
from stream.core.windows import Item, UserBatch
from stream.state import RedisWindowStore

T0 = 1_717_200_000_000  # 2024-06-01T00:00:00Z
ROOT = Path(__file__).resolve().parents[1]


def baseline_store_class(rev: str) -> type:
    """RedisWindowStore (and its Lua scripts) as of git revision ``rev``, as a separate module."""
    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout
    lua_dir = Path(tempfile.mkdtemp(prefix="rs-baseline-"))
    (lua_dir / "lua").mkdir()
    names = subprocess.run(["git", "ls-tree", "--name-only", rev, "stream/lua/"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in names:
        (lua_dir / "lua" / Path(name).name).write_text(show(name), encoding="utf-8")
    path = "stream/state/redis_store.py"  # stream/redis_store.py before the layout of issue #9
    if not subprocess.run(["git", "cat-file", "-e", f"{rev}:{path}"], cwd=ROOT, capture_output=True).returncode == 0:
        path = "stream/redis_store.py"
    src = show(path)
    hook = 'resources.files("stream")'
    if src.count(hook) != 1:
        raise RuntimeError(f"{rev}:{path} does not load its scripts through {hook}")
    src = src.replace(hook, f"__import__('pathlib').Path({str(lua_dir)!r})")
    mod = types.ModuleType(f"redis_store_{rev}")
    mod.__file__ = f"{rev}:{path}"
    sys.modules[mod.__name__] = mod
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod.RedisWindowStore  # type: ignore[no-any-return]


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


MODES = {"tick": "tick/call", "next": "next ev", "two": "2 ticks/call", "none": "no tick"}


def run(client: redis.Redis, k: int, users: int, rounds: int, mode: str,
        store_class: type = RedisWindowStore) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:8]}:rs:"
    store = store_class(client, key_prefix=prefix, ttl_s=86_400)
    feed = Feed([f"user-{i:06d}" for i in range(users)], seed=k)
    cpu_apply = cpu_confirm = ev_usec = 0.0
    wall = 0.0
    events = snaps = calls = confirms = 0
    floors: dict[str, int] = {}
    try:
        for r in range(rounds):
            if mode == "tick":
                t = T0 + r * 60_000
                batches = feed.batches(k, t, 60_000)
                wm = t + 60_000  # past every released event: the tick is decided at the end of the call
            elif mode == "next":
                t = T0 + r * 60_000
                batches = feed.batches(k, t, 60_000)
                wm = t  # passes the previous minute only: decided by this call's first event
            elif mode == "two":
                t = T0 + r * 120_000
                batches = feed.batches(k, t - 120_000, 120_000)  # two minutes, both passed by the watermark
                wm = t
            else:
                t = T0 + r * 50  # all rounds inside one tick: no decision, no snapshot
                batches = feed.batches(k, t, 50)
                wm = 0
            # INFO commandstats costs ~1 ms of server CPU: read outside the CPU windows
            u0, _ = _evalsha_usec(client)
            c0, w0 = _server_cpu(client), time.perf_counter()
            results = store.apply(batches, wm, floors)
            w_apply, cm = time.perf_counter() - w0, _server_cpu(client)
            done = {res.user_id: (res.snapshots[-1].tick_end_ms, {"pol:tick": str(res.snapshots[-1].tick_end_ms)})
                    for res in results if res.snapshots}
            cc, w0 = _server_cpu(client), time.perf_counter()
            store.confirm(done)  # also when nothing was decided (a store may write applied state here)
            w1, c1 = time.perf_counter() - w0 + w_apply, _server_cpu(client)
            um, _ = _evalsha_usec(client)  # the scripts of the apply (the previous design) and of the confirm
            floors = dict(feed.offsets)  # the previous round is committed by the time the next one runs
            if r == 0:
                continue
            cpu_apply += cm - c0
            cpu_confirm += c1 - cc
            ev_usec += um - u0
            wall += w1
            events += users * k
            calls += len(batches)
            confirms += len(done)
            snaps += sum(len(x.snapshots) for x in results)
    finally:
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)
    return {
        "k": k, "mode": MODES[mode], "events": events, "snapshots": snaps,
        "cpu_us_per_event": 1e6 * (cpu_apply + cpu_confirm) / events, "evalsha_us_per_event": ev_usec / events,
        "apply_cpu_us_per_call": 1e6 * cpu_apply / calls,
        "confirm_cpu_us_per_call": 1e6 * cpu_confirm / max(1, confirms), "events_per_s": events / wall,
    }


def memory_of_a_week(client: redis.Redis, next_event: bool = False) -> dict[str, Any]:
    """A realistic heavy-ish user: ~40 pickups a day for 7 days, 3-25 events each, one call a minute.

    Each call's watermark is past its events (as released), so its tick is decided at its end;
    ``next_event``: at their start, so the next call's first event decides it (a stored copy, which
    waits for the user's next call or the outbox grace once confirmed).
    """
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
                    res = store.apply(b, t + (minute + (0 if next_event else 1)) * 60_000, floors)[0]
                    store.confirm({u: (res.snapshots[-1].tick_end_ms, {
                        "pol:tick": str(res.snapshots[-1].tick_end_ms), "pol:ml": "none", "pol:ml_at": "",
                        "pol:el_t0": "", "pol:hi_t0": "", "pol:cap_day": str(19875 + day), "pol:cf_at": "",
                        "pol:cu_n": "0", "pol:cu_min": "3.5"})} if res.snapshots else {})
                    floors = dict(feed.offsets)
                    n += sum(len(x.items) for x in b)
        # the last call's offsets stay in the fence until the next commit floor passes them
        keys = sorted(client.scan_iter(match=prefix + "*", count=1000))
        out: dict[str, Any] = {"events": n, "keys": len(keys)}
        for key in keys:
            out[key.decode().rsplit("}", 1)[-1] or "key"] = client.memory_usage(key, samples=0)
        out["total"] = sum(client.memory_usage(key, samples=0) for key in keys)
        return out
    finally:
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)


def memory_per_user_overall(client: redis.Redis, users: int = 5000, next_event: bool = False) -> dict[str, float]:
    """INFO used_memory delta per user (keys, values, dict and expires entries) after 30 min of activity.

    ``next_event`` as in :func:`memory_of_a_week`.
    """
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
                wm = T0 + (r + (0 if next_event else 1)) * 60_000
                results += store.apply(feed.batches(2, T0 + r * 60_000, 60_000), wm, floors)
            done = {x.user_id: (x.snapshots[-1].tick_end_ms, {f"pol:f{i}": "1717200000000" for i in range(9)})
                    for x in results if x.snapshots}
            for lo in range(0, len(done), 500):
                store.confirm(dict(list(done.items())[lo: lo + 500]))
            store.confirm({})
            floors = dict(feed.offsets)
        after = int(client.info("memory")["used_memory"])
        return {"users": users, "bytes_per_user": (after - before) / users}
    finally:
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)


def _row(label: str, r: dict[str, Any]) -> str:
    return (f"{label:>9} {r['k']:>3} {r['mode']:>12} {r['events']:>8} {r['snapshots']:>7} {r['cpu_us_per_event']:>10.1f} "
            f"{r['evalsha_us_per_event']:>14.1f} {r['apply_cpu_us_per_call']:>12.1f} "
            f"{r['confirm_cpu_us_per_call']:>14.1f} {r['events_per_s']:>9.0f}")


HEADER = (f"{'store':>9} {'k':>3} {'mode':>12} {'events':>8} {'snaps':>7} {'cpu µs/ev':>10} {'evalsha µs/ev':>14} "
          f"{'apply cpu µs':>12} {'confirm cpu µs':>14} {'events/s':>9}")


def compare(client: redis.Redis, baseline: type, rev: str, a: argparse.Namespace) -> None:
    """Baseline and working tree alternately, ``a.repeat`` pairs per size; ranges and ratios."""
    print(f"A/B: {rev} vs working tree, {a.repeat} interleaved pairs per size (Redis CPU µs per event)")
    print(HEADER)
    summary = []
    for mode in a.modes:
        for k in a.sizes:
            if mode == "two" and k < 2:
                continue
            old: list[dict[str, Any]] = []
            new: list[dict[str, Any]] = []
            for i in range(a.repeat):
                order = [("base", baseline), ("new", RedisWindowStore)]
                if i % 2:
                    order.reverse()  # alternate which one runs first
                for label, cls in order:
                    r = run(client, k, a.users, a.rounds, mode, cls)
                    print(_row(label, r), flush=True)
                    (old if label == "base" else new).append(r)
            ratios = sorted(o["cpu_us_per_event"] / n["cpu_us_per_event"] for o, n in zip(old, new))
            summary.append((k, MODES[mode], old, new, ratios))
    print(f"\n{'k':>3} {'mode':>12} {'base µs/ev (min-max)':>22} {'new µs/ev (min-max)':>22} "
          f"{'base/new ratio (min, median, max)':>34} {'confirm cpu µs base → new':>26}")
    for k, mode, old, new, ratios in summary:
        o = sorted(x["cpu_us_per_event"] for x in old)
        n = sorted(x["cpu_us_per_event"] for x in new)
        oc = sorted(x["confirm_cpu_us_per_call"] for x in old)
        nc = sorted(x["confirm_cpu_us_per_call"] for x in new)
        print(f"{k:>3} {mode:>12} {o[0]:>10.1f} - {o[-1]:<9.1f} {n[0]:>10.1f} - {n[-1]:<9.1f} "
              f"{ratios[0]:>12.2f} {ratios[len(ratios) // 2]:>8.2f} {ratios[-1]:>8.2f}   "
              f"{oc[len(oc) // 2]:>10.1f} → {nc[len(nc) // 2]:<8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--baseline", metavar="REV", help="A/B against the store of this git revision (e.g. HEAD)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved pairs per size with --baseline")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 20])
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    a = ap.parse_args()
    client = redis.Redis.from_url(a.url)
    print(f"redis {client.info('server')['redis_version']} at {a.url}; {a.users} users per pipelined apply")
    if a.baseline:
        compare(client, baseline_store_class(a.baseline), a.baseline, a)
    else:
        print(HEADER)
        for mode in a.modes:
            for k in a.sizes:
                if mode == "two" and k < 2:
                    continue
                print(_row("new", run(client, k, a.users, a.rounds, mode)), flush=True)
    if not a.no_memory:
        for next_event in (False, True):
            how = "ticks decided by the next call's first event" if next_event else "ticks decided at the end of calls"
            print(f"memory of one user after a week ({how}):", memory_of_a_week(client, next_event))
            print(f"memory per user, INFO used_memory delta ({how}):", memory_per_user_overall(client, next_event=next_event))


if __name__ == "__main__":
    main()
