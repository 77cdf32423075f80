"""Redis CPU per event with checkpointed state writes (RISKSTREAM_CHECKPOINT_MS) on and off.

Drives the live pipeline (stream.live.pipeline.Pipeline, deferred-write RedisWindowStore on the
local Redis, alerts to a producer that drops them) with steps of one click per user for ``--users``
users; every step decides its ticks (lateness 0, inputs idle). "off" writes every step (interval
0); "on" checkpoints every K steps, i.e. each user has K events per checkpoint interval (the bench
forces the checkpoint every K steps instead of waiting for the clock, so the figure does not depend
on the machine's speed). Redis CPU is ``INFO cpu`` used_cpu_sys + used_cpu_user of the Redis
server before and after: the server is shared, so runs are interleaved (off, on, off, on) and
repeated; the pipeline's own CPU per event is printed too.

    PYTHONPATH=$PWD python bench/checkpoint_bench.py --users 2000 --events 100000
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import redis

from stream.core.detector import Detector
from stream.core.events import Event, encode_event
from stream.core.policy import AlertPolicy, load_policy_config
from stream.live.pipeline import Pipeline
from stream.live.protocol import Step
from stream.settings import load_settings
from stream.state import RedisWindowStore, delete_keys

DAY0 = 1_717_200_000_000  # 2024-06-01 00:00 UTC


class NullProducer:
    def produce(self, topic: str, key: bytes | None = None, value: bytes = b"") -> None:
        pass

    def flush(self, _timeout: float) -> int:
        return 0

    def poll(self, _timeout: float = 0) -> int:
        return 0


def redis_cpu(client: redis.Redis) -> float:
    info: dict[str, Any] = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def run(client: redis.Redis, users: int, events: int, per_interval: int, on: bool) -> tuple[float, float]:
    """(Redis CPU µs per event, pipeline CPU µs per event)."""
    ns = f"ck{uuid.uuid4().hex[:8]}"
    s = load_settings(namespace=ns, lateness_ms=0, checkpoint_ms=600_000 if on else 0,
                      state_cache_users=max(100, users * 2))
    store = RedisWindowStore(client, key_prefix=s.key_prefix, ttl_s=3600, keep_outbox=False, defer_writes=True,
                             max_cached_users=s.state_cache_users)
    p = Pipeline(s, Detector(store, AlertPolicy(load_policy_config(None))), NullProducer(),  # type: ignore[arg-type]
                 store=store)
    names = [f"u{i}" for i in range(users)]
    idle = {(q, k): True for q in range(3) for k in ("click", "view")}
    steps = max(1, events // users)
    # encode once, outside the measurement
    batches = []
    for j in range(steps):
        msgs = []
        for i, u in enumerate(names):
            e = Event(user_id=u, ts_ms=DAY0 + 43_200_000 + j * 10_000 + i, type="click", event_id=f"e{j}-{i}",
                      category="social", dwell_ms=0, tz_offset_min=0, age_band=None, item_id=None, session_id=None)
            msgs.append((s.clicks_topic, i % 3, j * users + i, u.encode(), encode_event(e)))
        batches.append(msgs)
    try:
        # warm-up step (loads every user: the same cost on and off), not measured
        p.step(Step(batches[0], [0, 1, 2], idle, {}, 0.0, DAY0 + 86_400_000))
        p.finish_writes()
        r0, c0 = redis_cpu(client), time.process_time()
        n = 0
        for j, msgs in enumerate(batches[1:], 1):
            if on and j % per_interval == 0:
                p._last_checkpoint = float("-inf")  # the interval passed: checkpoint in this step
            p.step(Step(msgs, [0, 1, 2], idle, {}, 0.0, DAY0 + 86_400_000))
            n += len(msgs)
        p.close()
        c1, r1 = time.process_time(), redis_cpu(client)
    finally:
        delete_keys(client, f"{s.key_prefix}")
    return (r1 - r0) / n * 1e6, (c1 - c0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--events", type=int, default=100_000, help="per run")
    ap.add_argument("--per-interval", type=int, nargs="*", default=[1, 8, 20])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    a = ap.parse_args()
    client = redis.Redis.from_url(a.redis)
    print(f"{a.users} users, {a.events} events per run, {a.rounds} interleaved rounds; µs of CPU per event")
    print(f"{'events/user/interval':>21} {'Redis off':>10} {'Redis on':>10} {'on/off':>7} "
          f"{'pipeline off':>13} {'pipeline on':>12} {'on/off':>7}")
    for k in a.per_interval:
        res: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(a.rounds):
            for on in (False, True):
                res[on].append(run(client, a.users, a.events, k, on))
        off_r = sum(r for r, _ in res[False]) / a.rounds
        on_r = sum(r for r, _ in res[True]) / a.rounds
        off_p = sum(c for _, c in res[False]) / a.rounds
        on_p = sum(c for _, c in res[True]) / a.rounds
        print(f"{k:>21} {off_r:>10.2f} {on_r:>10.2f} {on_r / off_r:>7.2f} {off_p:>13.1f} {on_p:>12.1f} "
              f"{on_p / off_p:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
