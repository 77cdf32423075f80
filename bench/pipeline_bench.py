"""The live pipeline's CPU per event without Kafka or Faust, by step size, against the offline detector.

    python bench/pipeline_bench.py [--events 1500000] [--days 10] [--envelope 8] [--steps 250 2000]
                                   [--rounds 2] [--redis redis://127.0.0.1:6379/0]

``bench/profile_pipeline.py`` measures the pipeline process of a real worker, whose steps are as big
as what the Faust side happened to gather. This drives the same :class:`~stream.live.pipeline.Pipeline`
in this process (built as the pipeline process builds it: deferred-write Redis store on the local
Redis, poison ledger, checkpointed writes, the same GC settings; alerts go to a producer that
drops them) with the same input — the synthetic log as SDK uploads of about ``--envelope`` events
per message, keyed and partitioned per user over ``--partitions`` (6), in log order — cut into steps of a
fixed number of messages. Each step's write is settled before the next one, as the pipeline
process does when no call waits. Step sizes are interleaved over ``--rounds``, each run on a fresh
namespace. Then the offline detector runs on the same events, and every ratio is printed.

Prints figures; asserts nothing. Needs a Redis (``make stack-up``).
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
import uuid
import zlib
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.checkpoint_bench import NullProducer  # noqa: E402
from bench.peer_bench import ENVELOPE_CAP, _keys, choose_window, make_log, write_uploads  # noqa: E402
from bench.profile_pipeline import offline_cpu  # noqa: E402
from stream.core.detector import Detector  # noqa: E402
from stream.core.policy import AlertPolicy, load_policy_config  # noqa: E402
from stream.core.scoring import load_scorer  # noqa: E402
from stream.core.warmup import warm_up  # noqa: E402
from stream.live.pipeline import Pipeline  # noqa: E402
from stream.live.protocol import Step, WireMessage  # noqa: E402
from stream.logs import open_log  # noqa: E402
from stream.settings import load_settings  # noqa: E402
from stream.state import RedisWindowStore, delete_keys, redis_client  # noqa: E402
from stream.state.poison import RedisPoisonLedger  # noqa: E402
from stream.tools.replay import ReplaySummary, _groups  # noqa: E402

PARTITIONS = 6


def messages(src: Path, cap: int, clicks: str, views: str, partitions: int = PARTITIONS,
             fetch: int = 0) -> list[WireMessage]:
    """The log as the worker would receive it: (topic, partition, offset, key, value); in log order,
    or (``fetch`` > 0) as a consumer fetching unevenly: runs of 1..``fetch`` messages of one input
    partition at a time, the partition picked at random (seeded), each partition in offset order."""
    out: list[WireMessage] = []
    offsets: dict[tuple[str, int], int] = {}
    with open_log(src) as f:
        lines = (line for line in f if line.strip())
        for kind, user, _ts, value in _groups(lines, ReplaySummary(), cap, {"click", "view"}):
            topic = clicks if kind == "click" else views
            p = zlib.crc32(user.encode()) % partitions
            off = offsets.get((topic, p), 0)
            offsets[(topic, p)] = off + 1
            out.append((topic, p, off, user.encode(), value))
    if fetch <= 0:
        return out
    rng = random.Random(7)
    queues: dict[tuple[str, int], deque[WireMessage]] = {}
    for m in out:
        queues.setdefault((m[0], m[1]), deque()).append(m)
    fetched: list[WireMessage] = []
    keys = list(queues)
    while keys:
        k = rng.choice(keys)
        q = queues[k]
        for _ in range(min(len(q), rng.randint(1, fetch))):
            fetched.append(q.popleft())
        if not q:
            keys.remove(k)
    return fetched


def run(a: argparse.Namespace, model: Path, src: Path, cap: int, lateness: int | None, step_msgs: int) -> float:
    """µs of this process's CPU per event through the pipeline in steps of ``step_msgs`` messages."""
    ns = f"pb{uuid.uuid4().hex[:8]}"
    kw = {} if lateness is None else {"lateness_ms": lateness}
    s = load_settings(namespace=ns, redis_url=a.redis, partitions=a.partitions, **kw)
    msgs = messages(src, cap, s.clicks_topic, s.views_topic, a.partitions, a.fetch)
    client = redis_client(s)
    store = RedisWindowStore(client, key_prefix=s.key_prefix, ttl_s=s.state_ttl_s,
                             max_cached_users=s.state_cache_users, keep_outbox=False, defer_writes=True)
    scorer = load_scorer(model)
    policy = AlertPolicy(load_policy_config(None), model_thresholds=scorer.info.thresholds)
    p = Pipeline(s, Detector(store, policy, scorer), NullProducer(), store=store,  # type: ignore[arg-type]
                 ledger=RedisPoisonLedger(client, s.key_prefix))
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)  # as stream/live/link.py's serve
    now = int(time.time() * 1000)
    n_events = 0
    try:
        c0 = time.process_time()
        for i in range(0, len(msgs), step_msgs):
            batch = msgs[i:i + step_msgs]
            last = i + step_msgs >= len(msgs)
            idle = {(q, k): True for q in range(a.partitions) for k in ("click", "view")} if last else {}
            rep = p.step(Step(batch, sorted({m[1] for m in batch}), idle, {}, time.monotonic(), now, 1))
            p.finish_writes()
            n_events += rep.applied + rep.late + rep.duplicates
        p.close()
        c1 = time.process_time()
    finally:
        gc.unfreeze()
        delete_keys(client, s.key_prefix)
    return (c1 - c0) / max(1, n_events) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_500_000)
    ap.add_argument("--users", type=int, default=56)
    ap.add_argument("--days", type=float, default=10, help="span of the event times (0: as generated)")
    ap.add_argument("--envelope", type=float, default=8, help="target events per message (1: one per message)")
    ap.add_argument("--steps", type=int, nargs="+", default=[250, 2000], help="messages per step, interleaved")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=PARTITIONS, help="of each input topic (users hashed over them)")
    ap.add_argument("--fetch", type=int, default=0,
                    help="uneven fetch: runs of up to N messages of one input partition (0: log order)")
    ap.add_argument("--lateness-ms", type=int, default=None,
                    help="the lateness bound L (default: the upload window + 60 s, at most 1 h; with one event "
                         "per message the settings' default)")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    a = ap.parse_args()
    model = ROOT / "models" / "riskstream.onnx"
    tmp = Path(tempfile.mkdtemp(prefix="rs-pipebench-"))
    log = tmp / "events.jsonl.gz"
    make_log(log, a.events, a.users, a.days or None)
    keys = _keys(log)
    src, cap, lateness = log, 1, None
    if a.envelope > 1:
        window_ms, _ = choose_window(keys, a.envelope, ENVELOPE_CAP)
        src, cap = tmp / "uploads.jsonl.gz", ENVELOPE_CAP
        write_uploads(keys, src, window_ms)
        lateness = min(3_600_000, window_ms + 60_000)
    if a.lateness_ms is not None:
        lateness = a.lateness_ms
    warm_up()
    n_msgs = len(messages(src, cap, "c", "v"))
    print(f"input: {len(keys):,} events, {len(keys) / n_msgs:.2f} per message ({n_msgs:,} messages), "
          f"lateness {lateness} ms")
    runs: dict[int, list[float]] = {k: [] for k in a.steps}
    for r in range(a.rounds):
        for k in a.steps:
            us = run(a, model, src, cap, lateness, k)
            runs[k].append(us)
            print(f"  round {r + 1}, {k} messages per step: {us:.2f} µs CPU per event", flush=True)
    n_off, dec, det = offline_cpu(log, model)
    off_us = (dec + det) / n_off * 1e6
    print(f"offline detector, the same {n_off:,} events: {off_us:.2f} µs CPU per event "
          f"(decode {dec / n_off * 1e6:.2f}, detect {det / n_off * 1e6:.2f})")
    for k, figures in runs.items():
        print(f"  {k} messages per step: {', '.join(f'{u:.2f}' for u in figures)} µs = "
              f"{', '.join(f'{u / off_us:.2f}×' for u in figures)} the offline detector")


if __name__ == "__main__":
    main()
