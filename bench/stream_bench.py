"""Streaming benchmark on the real stack (Kafka + Redis up: deploy/local/stack up).

    python bench/stream_bench.py [--events 150000] [--users 5000] [--rate 5000] [--latency-s 30]
                                 [--latency-batch-wait 0.2 …] [--latency-repeats 1] [--only-latency]
                                 [--only-redis] [--checkpoint-ms 500]

In one run, on the same pre-filled input topics (one event per Kafka message):
  (a) a naive Faust agent: one Redis round trip (the fenced state write) and one ONNX call per event;
  (b) a Faust agent that does nothing;
  (c) the riskstream worker (and (c-thread) the same worker with its pipeline in a thread instead
      of a process, the design it replaced; (c') the worker on the same events as batch envelopes:
      each user's events of one type within 100 s in one message, as an SDK uploads them);
then the worker at a fixed input rate for the decidable→acknowledged latency percentiles, and
Redis CPU per event and memory per active user. Drain rate = events committed between the
consumer group's committed offsets passing 10 % and 90 % of the input, over that time (the same
method for every variant). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, TopicPartition  # noqa: E402

from stream.settings import load_settings  # noqa: E402
from stream.topics import ensure_topics  # noqa: E402

# Drain rates are read from committed offsets, which move in steps of the commit interval and, for
# the riskstream worker, of its state checkpoint (a message is acked once its state is written):
# both at 0.5 s, so a drain of a few seconds is not rounded to whole seconds (the default checkpoint,
# 1 s, costs less Redis CPU at few events per user and interval: README, "Measured figures").
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "RISKSTREAM_COMMIT_INTERVAL_S": "0.5", "RISKSTREAM_CHECKPOINT_MS": "500"}
HISTORY_MS = 20 * 365 * 86_400_000
WARMUP_S = 5.0  # latency is also reported without the first seconds: every user's first touch loads and writes
  # the synthetic log is from 2025: keep Kafka from deleting it mid-run


# -- the two reference agents (run as: python bench/stream_bench.py --agent naive|noop ...) --------
def run_agent(kind: str, namespace: str, group: str, model: str) -> None:
    import faust

    from stream.live.app import create_app
    from stream.core import features as F
    from stream.core.events import decode_message
    from stream.core.windows import Item, UserBatch

    s = load_settings(namespace=namespace, consumer_group=group)
    extra = {}
    if os.environ.get("RISKSTREAM_BENCH_STREAM_BUFFER"):
        extra["stream_buffer_maxsize"] = int(os.environ["RISKSTREAM_BENCH_STREAM_BUFFER"])
    app = create_app(s, broker_commit_interval=0.5, **extra)
    topic = app.topic(s.clicks_topic, s.views_topic, value_serializer="raw", key_serializer="raw")
    if kind == "noop":
        @app.agent(topic)
        async def noop(stream):  # type: ignore[no-untyped-def]
            async for _ in stream:
                pass
    elif kind in ("noop-drain", "noop-fast"):
        @app.agent(topic)
        async def noop_drain(stream):  # type: ignore[no-untyped-def]
            # as the worker's agent takes its messages (stream/live/worker.py), acking each; noop-fast
            # also with the worker's delivery of fetched messages (faust_compat.install_fast_delivery)
            if kind == "noop-fast":
                from stream.live.faust_compat import install_fast_delivery

                assert install_fast_delivery(app.consumer)
            q = stream.channel.queue
            get = q.get_nowait
            while True:
                batch = [await q.get()]
                while not q.empty():
                    batch.append(get())
                gen = app.consumer_generation_id
                for fe in batch:
                    if fe.message.generation_id == gen:
                        fe.ack()
    elif kind == "noop-take":
        @app.agent(topic)
        async def noop_take(stream):  # type: ignore[no-untyped-def]
            async for batch in stream.noack_take(2000, within=0.005):
                for fe in batch:
                    fe.ack()
    else:
        import numpy as np

        from stream.core.scoring import load_scorer
        from stream.state import RedisWindowStore, redis_client

        store = RedisWindowStore(redis_client(s),
                                 key_prefix=f"{namespace}-naive:rs:", ttl_s=3600)
        scorer = load_scorer(model)
        zero = np.zeros((1, F.N_FEATURES), dtype=np.float32)
        topics = {s.clicks_topic: "click", s.views_topic: "view"}

        @app.agent(topic)
        async def naive(stream):  # type: ignore[no-untyped-def]
            async for event in stream.events():
                msg = event.message
                evs, _ = decode_message(msg.value, topic_type=topics[msg.topic], key=msg.key, now_ms=2**62)
                for ev in evs:
                    res = store.apply([UserBatch(ev.user_id, [Item(ev)])], ev.ts_ms - 120_000)
                    snaps = res[0].snapshots
                    x = F.compute(snaps[-1:])[0] if snaps else zero
                    scorer.score(x)
                    # the write (one EVALSHA round trip), also when no tick was decided
                    store.confirm({ev.user_id: (snaps[-1].tick_end_ms, {})} if snaps else {})

    import mode.loop

    if os.environ.get("BENCH_LOOP", "uvloop") == "uvloop":
        mode.loop.use("uvloop")  # as the worker does: compare like with like
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


# -- harness ---------------------------------------------------------------------------------------
class TooSmall(SystemExit):
    """A drain too fast for the input: the committed offsets jumped over most of the 10–90 % span."""


def drain(name: str, cmd: list[str], bootstrap: str, group: str, topics: list[str], partitions: int,
          total_msgs: int, events_per_msg: float, timeout: float = 600, env: dict[str, str] | None = None) -> float:
    """Run ``cmd`` until the group's committed offsets reach ``total_msgs``; events/s in between.

    The rate is taken between the moments the committed offsets pass 10 % and 90 % of the input:
    steady state, without start-up and without the end, where a worker's last undecided events wait
    ``idle_ms`` for the idle watermark (a fixed delay, not throughput). One probe consumer with the
    agent's ``group.id`` reads the committed offsets (OffsetFetch); it never subscribes, so it does
    not join the group or trigger a rebalance.
    """
    from stream.kafka_conf import librdkafka_config
    from stream.settings import load_settings

    # Kafka security from the environment (RISKSTREAM_KAFKA_SECURITY_PROTOCOL, …), as the agents'
    probe = Consumer(librdkafka_config(load_settings(kafka_bootstrap=bootstrap),
                                       **{"group.id": group, "enable.auto.commit": False}))
    tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**ENV, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    lo, hi = 0.1 * total_msgs, 0.9 * total_msgs
    t_lo = c_lo = None
    rate: float | None = None
    c = 0
    start = time.monotonic()
    try:
        while time.monotonic() - start < timeout:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited early: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            c = sum(max(tp.offset, 0) for tp in probe.committed(tps, timeout=10))
            now = time.monotonic()
            if c >= lo and t_lo is None:
                t_lo, c_lo = now, c
            if c >= hi and t_lo is not None and c_lo is not None and c > c_lo and rate is None:
                rate = (c - c_lo) * events_per_msg / max(now - t_lo, 1e-6)
                print(f"  {name:62s} {rate:8,.0f} events/s   ({(c - c_lo) * events_per_msg:,.0f} events in "
                      f"{now - t_lo:.1f} s)", flush=True)
            if c >= total_msgs and rate is not None:  # all done (Redis CPU is measured over all of it)
                return rate
            if c >= total_msgs or (c_lo is not None and c_lo >= 0.5 * total_msgs):
                # the first commit seen past 10 % was past half the input: too few commits in between
                raise TooSmall(f"{name}: the input drained in too few commits ({total_msgs} messages): "
                               "too small to measure, use more events")
            time.sleep(0.1)
        raise SystemExit(f"{name} did not drain within {timeout:.0f} s ({c}/{total_msgs} messages committed)")
    finally:
        probe.close()
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def histogram_buckets(text: str, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a Prometheus histogram in exposition text."""
    return [(float(m.group(1)) if m.group(1) != "+Inf" else float("inf"), float(m.group(2)))
            for m in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M)]


def histogram_quantiles(buckets: list[tuple[float, float]], qs: tuple[float, ...]) -> tuple[list[float], int]:
    """Quantiles by linear interpolation inside buckets (as Prometheus' histogram_quantile)."""
    total = buckets[-1][1] if buckets else 0
    out = []
    for q in qs:
        target, prev_le, prev_c = q * total, 0.0, 0.0
        for le, c in buckets:
            if c >= target:
                if le == float("inf"):
                    out.append(prev_le)
                else:
                    frac = 0 if c == prev_c else (target - prev_c) / (c - prev_c)
                    out.append(prev_le + frac * (le - prev_le))
                break
            prev_le, prev_c = le, c
    return out, int(total)


def redis_cpu(r) -> float:  # type: ignore[no-untyped-def]
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def command_usec(r) -> dict[str, tuple[int, float]]:  # type: ignore[no-untyped-def]
    """(calls, µs) per command from INFO commandstats (commands a script runs count under their own name)."""
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), float(v["usec"])) for k, v in r.info("commandstats").items()}


def redis_only(a: argparse.Namespace, r, py: str, s, ns: str, model: Path, topics: list[str],  # type: ignore[no-untyped-def]
               parts: int) -> None:
    """The worker's drain (c) alone: Redis CPU per event, split into the commands' own time (INFO
    commandstats) and the rest (reading requests, writing replies and the append-only file, the event loop)."""
    import numpy as np

    from stream.core import layout as L
    from stream.state.codec import unpack_rings

    cpu0, cmd0, mem0 = redis_cpu(r), command_usec(r), int(r.info("memory")["used_memory"])
    drain("(c) riskstream worker", [py, "-m", "stream", "worker", "--namespace", ns, "--group", "worker",
          "--model", str(model), "--loglevel", "WARNING"], s.kafka_bootstrap, f"{ns}.worker", topics, parts,
          a.events, 1)
    total = (redis_cpu(r) - cpu0) * 1e6
    cmd1 = command_usec(r)
    users = sum(1 for _ in r.scan_iter(match=f"{ns}:rs:*", count=1000))
    mem_per_user = (int(r.info("memory")["used_memory"]) - mem0) / max(users, 1)
    delta = {k: (c - cmd0.get(k, (0, 0.0))[0], u - cmd0.get(k, (0, 0.0))[1]) for k, (c, u) in cmd1.items()}
    delta = {k: v for k, v in delta.items() if v[0] > 0}
    nested = {"hset", "hget", "pexpire"}  # what state.lua calls
    top = {k: v for k, v in delta.items() if k not in nested}
    info = r.info("persistence")
    print(f"  Redis: {total / a.events:.2f} µs CPU per event (checkpoints every {ENV['RISKSTREAM_CHECKPOINT_MS']} ms, "
          f"append-only file {'on' if info.get('aof_enabled') else 'off'}); {mem_per_user:,.0f} B per active user "
          f"({users:,} users)")
    for k, (calls, usec) in sorted(delta.items(), key=lambda kv: -kv[1][1]):
        print(f"    {k:10s} {calls:>9,} calls  {usec / calls:6.2f} µs each  {usec / a.events:5.2f} µs per event"
              + ("" if k in top else "  (inside the script)"))
    rest = total - sum(u for _, u in top.values())
    print(f"    the rest (requests, replies, append-only file, event loop): {rest / a.events:.2f} µs per event")
    sizes: dict[bytes, list[int]] = {}
    nonzero: list[int] = []
    for k in list(r.scan_iter(match=f"{ns}:rs:*", count=1000))[:500]:
        for f, v in r.hgetall(k).items():
            sizes.setdefault(f, []).append(len(v))
            if f == b"r":
                nonzero.append(int(np.count_nonzero(np.frombuffer(unpack_rings(v), dtype=">u4"))))
    print("    stored bytes per user (mean of up to 500): "
          + ", ".join(f"{f.decode()} {sum(v) / len(v):,.0f}" for f, v in sorted(sizes.items()))
          + (f"; non-zero ring words {np.mean(nonzero):.0f} (median {np.median(nonzero):.0f}, max {max(nonzero)}) "
             f"of {L.RING_WORDS}" if nonzero else ""))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", choices=["naive", "noop", "noop-take", "noop-drain", "noop-fast"])
    ap.add_argument("--namespace")
    ap.add_argument("--group")
    ap.add_argument("--model")
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--users", type=int, default=5_000)
    ap.add_argument("--rate", type=int, default=5_000)
    ap.add_argument("--latency-s", type=int, default=30)
    ap.add_argument("--latency-repeats", type=int, default=1,
                    help="latency runs per batch wait, each with a fresh worker and namespace (default 1)")
    ap.add_argument("--latency-batch-wait", type=float, nargs="+", default=[0.2],
                    help="RISKSTREAM_BATCH_WAIT_S values for the latency runs (the default is the worker's; it "
                         "only matters while a backlog drains)")
    ap.add_argument("--only-latency", action="store_true", help="skip the drain-rate variants")
    ap.add_argument("--only-redis", action="store_true",
                    help="only the worker's drain (c), with Redis CPU per event split by command")
    ap.add_argument("--faust-configs", action="store_true",
                    help="only the no-op agent under Faust configurations (iterator vs take, Cython, uvloop)")
    ap.add_argument("--checkpoint-ms", type=int, default=int(ENV["RISKSTREAM_CHECKPOINT_MS"]),
                    help="the workers' RISKSTREAM_CHECKPOINT_MS (default 500: drains commit sooner; the worker's "
                         "own default is 1000, which writes a user touched again half as often)")
    a = ap.parse_args()
    if a.agent:
        run_agent(a.agent, a.namespace, a.group, a.model)
        return
    if a.checkpoint_ms < 0:
        raise SystemExit("--checkpoint-ms must be >= 0")
    ENV["RISKSTREAM_CHECKPOINT_MS"] = str(a.checkpoint_ms)


    from bench.offline_bench import synth_log
    from stream.core import features as F
    from stream.state import delete_keys, redis_client
    from tests.model_factory import build_model

    tmp = Path(tempfile.mkdtemp(prefix="rs-stream-bench-"))
    ns = f"bench{uuid.uuid4().hex[:6]}"
    parts = 6
    s = load_settings(namespace=ns, partitions=parts, input_retention_ms=HISTORY_MS)
    ensure_topics(s)
    CREATED.extend([s, load_settings(namespace=f"{ns}-naive")])
    log = tmp / "events.jsonl.gz"
    synth_log(log, a.events, a.users)
    model = ROOT / "models" / "riskstream.onnx"
    if not model.exists():
        model = tmp / "model.onnx"
        build_model(str(model), n_features=F.N_FEATURES, feature_names=list(F.FEATURE_NAMES),
                    spec_hash=F.FEATURE_SPEC_HASH, kind="gbt", seed=0)
    py = sys.executable
    t = time.perf_counter()
    subprocess.run([py, "-m", "stream", "replay", str(log), "--namespace", ns, "--no-progress"], cwd=ROOT,
                   env=ENV, check=True, stderr=subprocess.DEVNULL)
    print(f"input: {a.events:,} events of {a.users:,} users in {parts} partitions, one event per message "
          f"(published in {time.perf_counter() - t:.1f} s); model {model.name}")
    if a.only_latency:
        latency_runs(a, py, parts, model, tmp)
        return
    if a.faust_configs:
        faust_configs(py, s, ns, parts, a.events)
        return
    topics = [s.clicks_topic, s.views_topic]
    r = redis_client(s)
    if a.only_redis:
        redis_only(a, r, py, s, ns, model, topics, parts)
        return
    print("drain rate (same input, fresh consumer group each):")
    rate_a = drain("(a) naive agent: Redis+ONNX per event", [py, __file__, "--agent", "naive", "--namespace", ns,
                   "--group", "naive", "--model", str(model)], s.kafka_bootstrap, f"{ns}.naive", topics, parts,
                   a.events, 1)
    rate_b = drain("(b) no-op Faust agent", [py, __file__, "--agent", "noop", "--namespace", ns, "--group", "noop"],
                   s.kafka_bootstrap, f"{ns}.noop", topics, parts, a.events, 1)
    cpu0 = redis_cpu(r)
    mem0 = int(r.info("memory")["used_memory"])
    rate_c = drain("(c) riskstream worker", [py, "-m", "stream", "worker", "--namespace", ns, "--group", "worker",
                   "--model", str(model), "--loglevel", "WARNING"], s.kafka_bootstrap, f"{ns}.worker", topics, parts,
                   a.events, 1)
    cpu_per_event = (redis_cpu(r) - cpu0) / a.events * 1e6
    users = sum(1 for _ in r.scan_iter(match=f"{ns}:rs:*", count=1000))
    mem_per_user = (int(r.info("memory")["used_memory"]) - mem0) / max(users, 1)
    print(f"  ratios: (c)/(a) = {rate_c / rate_a:.2f}   (c)/(b) = {rate_c / rate_b:.2f}")
    print(f"  Redis: {cpu_per_event:.1f} µs CPU per event (worker run, checkpoints every {ENV['RISKSTREAM_CHECKPOINT_MS']} ms), "
          f"{mem_per_user:,.0f} B per active user ({users:,} users)")
    # the design choice behind (c): the same worker with its pipeline in a thread of the Faust process
    delete_keys(r, s.key_prefix)  # fresh window state, as for (c)
    rate_t = drain("(c-thread) pipeline in a thread", [py, "-m", "stream", "worker", "--namespace", ns, "--group",
                   "thread", "--model", str(model), "--loglevel", "WARNING"], s.kafka_bootstrap, f"{ns}.thread",
                   topics, parts, a.events, 1, env={"RISKSTREAM_DETECTOR_PROCESS": "false"})
    print(f"  pipeline process vs thread: {rate_c / rate_t:.2f}x")

    # (c') envelopes: the same events, 20 per message
    ns2 = f"{ns}env"
    s2 = load_settings(namespace=ns2, partitions=parts, input_retention_ms=HISTORY_MS)
    ensure_topics(s2)
    CREATED.append(s2)
    env_log = tmp / "envelopes.jsonl.gz"
    sdk_uploads(log, env_log, window_ms=100_000)
    subprocess.run([py, "-m", "stream", "replay", str(env_log), "--namespace", ns2, "--envelope", "20",
                    "--no-progress"], cwd=ROOT, env=ENV, check=True, stderr=subprocess.DEVNULL)
    msgs = committed_end(s2, parts)
    print(f"  (c') input: the same events as SDK uploads (a user's events of one type within 100 s, up to 20): "
          f"{a.events / max(msgs, 1):.2f} events per message")
    drain("(c') worker, batch envelopes", [py, "-m", "stream", "worker", "--namespace", ns2, "--model",
          str(model), "--loglevel", "WARNING"], s2.kafka_bootstrap, f"{ns2}.riskstream",
          [s2.clicks_topic, s2.views_topic], parts, msgs, a.events / max(msgs, 1))

    latency_runs(a, py, parts, model, tmp)


def faust_configs(py: str, s, ns: str, parts: int, events: int) -> None:  # type: ignore[no-untyped-def]
    """The no-op agent (b) under the configurations the worker could use: one drain each."""
    print("no-op Faust agent, one event per message:")
    topics = [s.clicks_topic, s.views_topic]
    for label, kind, env in [
        ("async for over the stream, uvloop, Cython", "noop", {}),
        ("the agent draining its channel's queue (the worker's since (I))", "noop-drain", {}),
        ("noack_take(2000, within=5 ms) + ack", "noop-take", {}),
        ("without Faust's Cython extensions (NO_CYTHON=1)", "noop", {"NO_CYTHON": "1"}),
        ("asyncio's own event loop instead of uvloop", "noop", {"BENCH_LOOP": "asyncio"}),
        ("stream_buffer_maxsize 4096 (Faust's default) instead of 16384", "noop",
         {"RISKSTREAM_BENCH_STREAM_BUFFER": "4096"}),
    ]:
        group = f"cfg{uuid.uuid4().hex[:6]}"
        drain(label, [py, __file__, "--agent", kind, "--namespace", ns, "--group", group], s.kafka_bootstrap,
              f"{ns}.{group}", topics, parts, events, 1, env=env)


def latency_runs(a: argparse.Namespace, py: str, parts: int, model: Path, tmp: Path) -> None:
    """The worker at a fixed input rate, once per batch wait: decidable→acknowledged percentiles."""
    from bench.offline_bench import synth_log

    n = a.rate * a.latency_s
    lat_log = tmp / "latency.jsonl.gz"
    synth_log(lat_log, n, max(a.users, n // 100), seed=2)
    for wait in [w for w in a.latency_batch_wait for _ in range(a.latency_repeats)]:
        ns3 = f"bench{uuid.uuid4().hex[:6]}lat"
        s3 = load_settings(namespace=ns3, partitions=parts, input_retention_ms=HISTORY_MS)
        ensure_topics(s3)
        CREATED.append(s3)
        port = 19464
        env = {**ENV, "RISKSTREAM_BATCH_WAIT_S": str(wait)}
        worker = subprocess.Popen([py, "-m", "stream", "worker", "--namespace", ns3, "--model", str(model),
                                   "--metrics-port", str(port), "--loglevel", "WARNING"], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        name = "riskstream_decidable_to_ack_seconds"

        def metrics() -> str:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

        def scrape() -> list[tuple[float, float]]:
            return histogram_buckets(metrics(), name)

        def consumed() -> int:
            m = re.search(r"^riskstream_messages_total (\S+)$", metrics(), re.M)
            return int(float(m.group(1))) if m else 0

        try:
            ready_s = wait_ready(worker, port)
            load0 = os.getloadavg()[0]
            print(f"worker ready after {ready_s:.1f} s (kernels loaded, partitions assigned); load average "
                  f"{load0:.2f}", flush=True)
            pub = subprocess.Popen([py, "-m", "stream", "replay", str(lat_log), "--namespace", ns3, "--rate",
                                    str(a.rate), "--no-progress"], cwd=ROOT, env=ENV, stderr=subprocess.DEVNULL)
            time.sleep(WARMUP_S)
            early = scrape()
            assert pub.wait() == 0, "replay failed"
            t_end, at_end = time.monotonic(), consumed()
            # "decidable" starts when the worker receives the message that made an alert decidable: time
            # the input waited in Kafka before that is not in the figure. So say whether the worker kept
            # pace with the input: how much it had left to consume when the publisher finished.
            while (left := n - consumed()) > 0 and time.monotonic() - t_end < 60:
                time.sleep(0.1)
            caught_up_s = time.monotonic() - t_end
            print(f"input consumed when the publisher finished: {at_end:,} of {n:,} messages "
                  + ("(kept pace)" if at_end >= n * 0.99 else
                     f"(behind by {n - at_end:,} = {(n - at_end) / a.rate:.1f} s of input; "
                     + (f"all consumed {caught_up_s:.1f} s later)" if left <= 0 else "not all consumed within 60 s)"))
                  + "; the latency below starts when the worker receives a message", flush=True)
            time.sleep(max(0.0, 5 - caught_up_s))
            late = scrape()
            steady = [(le, c - c0) for (le, c), (_, c0) in zip(late, early, strict=True)]
            print(f"load average at the end {os.getloadavg()[0]:.2f} (the bench shares the cores with the "
                  f"broker and Redis: other load shows in the p99)", flush=True)
            for label, buckets in ((f"whole run, {a.latency_s} s", late),
                                   (f"after the first {WARMUP_S:g} s (cold caches)", steady)):
                (p50, p95, p99), count = histogram_quantiles(buckets, (0.5, 0.95, 0.99))
                print(f"latency at {a.rate:,} events/s, batch wait {wait:g} s, {label}: decidable→acknowledged "
                      f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms ({count:,} alerts)",
                      flush=True)
        finally:
            worker.terminate()
            worker.wait(timeout=60)


def wait_ready(worker: subprocess.Popen[bytes], port: int, timeout_s: float = 180.0) -> float:
    """Seconds until the worker answers ``/readyz`` with 200: its kernels are loaded (compiled, with a
    cold numba cache: ≈ 7 s) and it has its partitions. Input published before that waits in Kafka
    and is then drained as a backlog, in full batches: the latency of a catch-up, not of live input
    (the cause of a p99 of 300–400 ms on a fresh checkout, measured)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited with code {worker.returncode} before it was ready")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                return time.monotonic() - t0
        except OSError:  # not listening yet, or 503 (HTTPError is an OSError)
            pass
        time.sleep(0.2)
    raise SystemExit(f"the worker was not ready within {timeout_s:.0f} s")


def sdk_uploads(src: Path, dst: Path, window_ms: int) -> None:
    """Reorder a log so that each user's events of one window are consecutive lines (replay then
    packs them into envelopes, as a mobile SDK uploads them). Windows shorter than the lateness
    bound keep every event on time."""
    import gzip

    import orjson

    with gzip.open(src, "rb") as f:
        lines = [line for line in f.read().splitlines() if line]
    keyed = []
    for line in lines:
        e = orjson.loads(line)
        keyed.append((e["ts"] // window_ms, e["user_id"], e["type"], e["ts"], line))
    keyed.sort(key=lambda k: k[:4])
    with gzip.open(dst, "wb", compresslevel=1) as f:
        f.write(b"\n".join(k[4] for k in keyed) + b"\n")


def committed_end(s, parts: int) -> int:  # type: ignore[no-untyped-def]
    from stream.kafka_conf import librdkafka_config

    c = Consumer(librdkafka_config(s, **{"group.id": "probe"}))
    try:
        return sum(c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
                   for t in (s.clicks_topic, s.views_topic) for p in range(parts))
    finally:
        c.close()


CREATED: list = []  # namespaces this run made: deleted at the end (topics and Redis keys)


if __name__ == "__main__":
    try:
        main()
    finally:
        from stream.tools.namespace import delete_namespace

        for made in CREATED:
            delete_namespace(made)
