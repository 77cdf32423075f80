"""What durable state writes cost: the worker's write path against Redis with ``appendfsync
everysec`` and with ``appendfsync always``, interleaved on this machine.

    .venv/bin/python bench/redis_durability_bench.py [--users 2000] [--events 5] [--rounds 40] [--repeat 3]

Two private ``redis-server`` processes (AOF on, in temporary directories, loopback) take the same
feed: per round, ``--users`` users get ``--events`` events each (one ``apply``), then the worker's
``confirm`` writes every changed user (one pipeline of fenced EVALSHA). Reported per setting: the
confirm's wall time (p50, p99 over rounds), state writes per second, and the ratio always/everysec.
With ``always`` Redis fsyncs the AOF before it answers a write, so a write the worker saw confirmed
survives a Redis crash; with ``everysec`` up to a second of confirmed writes can vanish.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

from stream.core.events import Event
from stream.core.windows import Item, UserBatch
from stream.state import RedisWindowStore

T0 = 1_717_200_000_000


def start(port: int, fsync: str, root: Path) -> tuple[subprocess.Popen[bytes], redis.Redis]:
    d = root / fsync
    d.mkdir()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "yes", "--appendfsync", fsync, "--dir", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            return proc, client
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def feed(users: int, k: int, r: int) -> list[UserBatch]:
    out = []
    for u in range(users):
        evs = [Event(f"e{r}-{u}-{i}", T0 + r * 60_000 + i * 1_000, "click", f"u{u}", "social", 0, 0, "adult",
                     None, None) for i in range(k)]
        out.append(UserBatch(f"u{u}", [Item(e, False, "events.clicks:0", (r * users + u) * k + i)
                                       for i, e in enumerate(evs)]))
    return out


def one_run(client: redis.Redis, a: argparse.Namespace) -> list[float]:
    store = RedisWindowStore(client, key_prefix=f"bench{time.monotonic_ns()}:rs:", ttl_s=3600)
    times = []
    for r in range(a.rounds):
        through = T0 + (r + 1) * 60_000
        store.apply(feed(a.users, a.events, r), through)
        done: dict[str, tuple[int, dict[str, str]]] = {f"u{u}": (through, {}) for u in range(a.users)}
        t = time.perf_counter()
        store.confirm(done)
        times.append(time.perf_counter() - t)
    return times[1:]  # the first round creates the users


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--events", type=int, default=5)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server not found: deploy/local/stack install")
    root = Path(tempfile.mkdtemp(prefix="rs-durability-"))
    servers = {"everysec": start(16401, "everysec", root), "always": start(16402, "always", root)}
    try:
        results: dict[str, list[float]] = {k: [] for k in servers}
        for _ in range(a.repeat):
            for name, (_, client) in servers.items():  # interleaved: load drift hits both alike
                results[name] += one_run(client, a)
        print(f"{a.users} users x {a.events} events per round, {a.rounds} rounds x {a.repeat} runs")
        print(f"{'appendfsync':<12} {'confirm p50':>12} {'p99':>9} {'writes/s':>10}")
        med = {}
        for name, ts in results.items():
            arr = np.array(ts)
            med[name] = float(np.median(arr))
            print(f"{name:<12} {med[name] * 1000:>10.1f} ms {np.percentile(arr, 99) * 1000:>6.1f} ms "
                  f"{a.users / med[name]:>10,.0f}")
        print(f"always / everysec (median confirm time): {med['always'] / med['everysec']:.2f}x")
    finally:
        for proc, client in servers.values():
            client.close()
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
