"""What the Redis Cluster write path costs: redis-py's ClusterPipeline (the previous path) against the
store's per-node raw pipelines, synchronous and deferred, without and with ``WAIT 1`` (a replica
acknowledges each write before it counts as done), interleaved on this machine.

    .venv/bin/python bench/redis_cluster_write_bench.py [--url redis://127.0.0.1:7001/0] [--users 2000]
        [--events 5] [--rounds 20] [--repeat 3]

Needs the stack's cluster (``deploy/local/stack up --cluster``: 3 masters, one replica each). Per
round, ``--users`` users get ``--events`` events each (one ``apply``: the worker's compute), then
the worker's ``confirm`` writes every changed user (fenced EVALSHA, grouped by node). A deferred
write is read at the next round's confirm, so Redis runs it while the next ``apply`` computes, as in
the worker. Reported per mode (medians over rounds, the first round of a run excluded): the round's
wall time (apply + confirm), users written per second, and the client's CPU per written user
(``time.process_time``). Keys are written under a random prefix and deleted afterwards.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.redis_durability_bench import (  # the same workload as the durability bench
    T0,
    feed,
)
from stream.core.windows import UserBatch
from stream.state import RedisWindowStore, delete_keys
from stream.state.wire import _pipelined


class ClusterPipelineStore(RedisWindowStore):
    """The previous cluster write path: redis-py's ClusterPipeline routes every EVALSHA (synchronous)."""

    def _evalsha(self, calls: list[list[Any]]) -> list[Any]:
        def queue(pipe: Any) -> None:
            for key, *argv in calls:
                pipe.execute_command("EVALSHA", self._sha, 1, key, *argv)
        return self._call(lambda c: _pipelined(c, queue, raise_on_error=False))  # type: ignore[no-any-return]


MODES: dict[str, tuple[type[RedisWindowStore], bool, int]] = {
    "ClusterPipeline, sync (before)": (ClusterPipelineStore, False, 0),
    "per node, sync": (RedisWindowStore, False, 0),
    "per node, deferred": (RedisWindowStore, True, 0),
    "per node, sync, WAIT 1": (RedisWindowStore, False, 1),
    "per node, deferred, WAIT 1": (RedisWindowStore, True, 1),
}



def one_run(client: redis.RedisCluster, mode: str, feeds: list[list[UserBatch]], a: argparse.Namespace,
            prefix: str) -> tuple[list[float], list[float]]:
    cls, defer, wait = MODES[mode]
    store = cls(client, key_prefix=f"{prefix}{uuid.uuid4().hex[:8]}:", ttl_s=3600, defer_writes=defer,
                wait_replicas=wait, wait_timeout_ms=5000)
    walls, cpus = [], []
    for r, batches in enumerate(feeds):
        through = T0 + (r + 1) * 60_000
        t, c = time.perf_counter(), time.process_time()
        store.apply(batches, through)
        store.confirm({f"u{u}": (through, {}) for u in range(a.users)})
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    t, c = time.perf_counter(), time.process_time()
    store.finish_write()  # the last deferred write: counted in the last round
    walls[-1] += time.perf_counter() - t
    cpus[-1] += time.process_time() - c
    return walls[1:], cpus[1:]  # the first round creates the users


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="redis://127.0.0.1:7001/0")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--events", type=int, default=5)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    try:
        client = redis.RedisCluster.from_url(a.url, socket_timeout=10)
    except (redis.RedisError, OSError) as e:
        raise SystemExit(f"no Redis Cluster at {a.url} ({e}): deploy/local/stack up --cluster") from None
    replicas = sum(1 for n in client.get_nodes() if n.server_type == "replica")
    prefix = f"bench{uuid.uuid4().hex[:8]}:rs:"
    feeds = [feed(a.users, a.events, r) for r in range(a.rounds)]
    walls: dict[str, list[float]] = {m: [] for m in MODES}
    cpus: dict[str, list[float]] = {m: [] for m in MODES}
    try:
        for _ in range(a.repeat):
            for mode in MODES:  # interleaved: load drift hits every mode alike
                w, c = one_run(client, mode, feeds, a, prefix)
                walls[mode] += w
                cpus[mode] += c
    finally:
        delete_keys(client, prefix)
        client.close()
    print(f"Redis Cluster at {a.url}: {len(client.get_primaries())} masters, {replicas} replicas; "
          f"{a.users} users x {a.events} events per round, {a.rounds} rounds x {a.repeat} runs")
    print(f"{'mode':<32} {'round p50':>10} {'writes/s':>10} {'client CPU/user':>16}")
    base = float(np.median(walls["ClusterPipeline, sync (before)"]))
    for mode in MODES:
        w = float(np.median(walls[mode]))
        c = float(np.median(cpus[mode]))
        print(f"{mode:<32} {w * 1000:>7.1f} ms {a.users / w:>10,.0f} {c / a.users * 1e6:>13.1f} µs"
              f"   ({w / base:.2f}x the round time of the previous path)")


if __name__ == "__main__":
    main()
