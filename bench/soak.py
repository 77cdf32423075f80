"""Soak run on the real stack (issue #13): hours of load, not a test.

    python bench/soak.py [--minutes 30] [--rate 2000] [--users 5000] [--sample-s 10] [--warmup-min 5]
                         [--partitions 6] [--out test-artifacts/soak]

Two workers consume a synthetic history published at a steady input rate by ``riskstream replay``
(event time runs ~50× faster than wall time, so days of behaviour pass, windows wrap, day-mean
decisions and alerts happen). Half-way through, the second worker is stopped with SIGTERM and a new
one takes its place (a rolling restart: two rebalances). Every ``--sample-s`` seconds it samples:

- the RSS of every process: both workers, their pipeline children (the workers' own /metrics), the
  Kafka broker and Redis (/proc);
- Redis ``used_memory``. The soak starts its own ``redis-server`` (AOF, ``appendfsync everysec``, as
  the stack's) on a free loopback port, so that nothing else using the stack's Redis moves the figure;
- the consumer group's lag from committed offsets (an OffsetFetch probe that never joins the group);
- decidable→acknowledged p50/p99 over the interval (both workers' histograms, merged);
- unplanned exits of any process (a worker that exits, a pipeline child whose start time changed).

Prints a row per sample and a summary (drift after warm-up: the mean of the last tenth against the
mean of the first tenth after warm-up), writes ``soak.csv`` and ``soak.png`` to ``--out``. Asserts
nothing; exits 1 when a target is missed (a process's RSS drifting > 10 %, Redis ``used_memory``
above the bound of its users' state, lag not bounded, unplanned restarts) so that a scheduled run
can page someone.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, TopicPartition  # noqa: E402

from bench.stream_bench import HISTORY_MS, histogram_buckets, histogram_quantiles  # noqa: E402
from stream.kafka_conf import librdkafka_config  # noqa: E402
from stream.settings import Settings, load_settings  # noqa: E402
from stream.topics import ensure_topics  # noqa: E402

HIST = "riskstream_decidable_to_ack_seconds"
DRIFT_LIMIT = 0.10
# Redis holds a user's state in a size that grows with the user's history (sparse rings) up to the
# dense form's, ≈ 3.6–3.7 KiB a user in all (docs/state-layout.md §7): Redis memory is checked against
# that bound, not for flatness, since the soak's day or so of event time does not fill the rings.
USER_BYTES_MAX = 3_800
REDIS_BASE_BYTES = 2 * 2**20  # an empty server's used_memory, with room


def metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def rss_of_pid(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def own_redis(tmp: Path) -> tuple[subprocess.Popen, str]:
    """A redis-server for the soak alone (loopback, AOF every second, like deploy/local/stack's)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp / "redis").mkdir()
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(tmp / "redis"),
                             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
                            stdout=open(tmp / "redis.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"soak: redis-server on port {port} did not start (see {tmp / 'redis.log'})")


def stack_pid(name: str) -> int | None:
    state = Path(os.environ.get("RISKSTREAM_STATE_DIR", ROOT / ".state"))
    try:
        return int((state / "pids" / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass
class Worker:
    """One worker process of the soak, with the state needed to read its histogram as deltas."""

    label: str
    port: int
    proc: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    prev_buckets: list[tuple[float, float]] = field(default_factory=list)
    child_start: float | None = None
    planned_stop: bool = False

    def scrape(self) -> str | None:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        except OSError:
            return None


def start_worker(py: str, s: Settings, label: str, port: int, log_dir: Path, env: dict[str, str]) -> Worker:
    log = open(log_dir / f"{label}.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen([py, "-m", "stream", "worker", "--namespace", s.namespace, "--metrics-port", str(port),
                             "--loglevel", "warning"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return Worker(label, port, proc)


def offsets(probe: Consumer, tps: list[TopicPartition]) -> tuple[int, int]:
    """(lag, committed) of the group, summed over the input partitions."""
    committed = probe.committed(tps, timeout=10)
    total = done = 0
    for tp in committed:
        _, high = probe.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10, cached=False)
        total += high - max(tp.offset, 0)
        done += max(tp.offset, 0)
    return total, done


def cpu_of_pid(pid: int) -> float | None:
    """utime + stime of a process, in seconds (/proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def drift(values: list[float]) -> float:
    """Relative change of the mean of the last tenth against the first tenth of ``values``."""
    k = max(1, len(values) // 10)
    first, last = sum(values[:k]) / k, sum(values[-k:]) / k
    return (last - first) / first if first else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=int, default=2000, help="input events per second")
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--warmup-min", type=float, default=5.0)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--out", type=Path, default=ROOT / "test-artifacts" / "soak")
    a = ap.parse_args()
    if a.minutes <= 0 or a.rate <= 0 or a.users <= 0 or a.sample_s <= 0:
        ap.error("--minutes, --rate, --users and --sample-s must be > 0")
    if a.warmup_min >= a.minutes:
        ap.error("--warmup-min must be shorter than --minutes")
    a.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SIGTERM stops the processes it started too

    from bench.offline_bench import synth_log

    py = sys.executable
    duration = a.minutes * 60
    ns = f"soak{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="riskstream-soak-"))
    redis_proc, redis_url = own_redis(tmp)
    s = load_settings(namespace=ns, partitions=a.partitions, input_retention_ms=HISTORY_MS, redis_url=redis_url)
    ensure_topics(s)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RISKSTREAM_REDIS_URL": redis_url}
    log = tmp / "soak.jsonl.gz"
    n = int(a.rate * (duration + 30))  # a little more than the run: the input never runs dry
    print(f"soak {ns}: {n:,} events of {a.users:,} users at {a.rate:,}/s for {a.minutes:g} min, "
          f"{a.partitions} partitions, logs in {tmp}", flush=True)
    synth_log(log, n, a.users, seed=3)

    import redis

    r = redis.Redis.from_url(s.redis_url.get_secret_value())
    probe = Consumer(librdkafka_config(s, **{"group.id": s.group_id, "enable.auto.commit": False}))
    tps = [TopicPartition(t, p) for t in (s.clicks_topic, s.views_topic) for p in range(a.partitions)]
    kafka_pid, redis_pid = stack_pid("kafka"), redis_proc.pid

    workers = [start_worker(py, s, "worker-a", 19471, tmp, env), start_worker(py, s, "worker-b", 19472, tmp, env)]
    time.sleep(8)  # both join before the input starts: one rebalance, not two
    replay = subprocess.Popen([py, "-m", "stream", "replay", str(log), "--namespace", ns, "--rate", str(a.rate),
                               "--no-progress"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=open(tmp / "replay.log", "wb"))  # noqa: SIM115
    t0 = time.monotonic()
    rows: list[dict[str, float | str]] = []
    unplanned: list[str] = []
    restarted = False
    header = (f"{'t s':>6} {'rss a MB':>8} {'pipe a':>7} {'rss b MB':>8} {'pipe b':>7} {'kafka MB':>8} {'redis MB':>8} "
              f"{'used MB':>8} {'lag':>8} {'p50 ms':>7} {'p99 ms':>7} {'alerts':>7}")
    print(header, flush=True)
    try:
        next_sample = t0 + a.sample_s
        while time.monotonic() - t0 < duration:
            time.sleep(max(0.0, next_sample - time.monotonic()))
            next_sample += a.sample_s
            t = time.monotonic() - t0
            if not restarted and t >= duration / 2:  # the rolling restart: SIGTERM b, start b2
                restarted = True
                old = workers[1]
                old.planned_stop = True
                old.proc.send_signal(signal.SIGTERM)
                rc = old.proc.wait(timeout=120)
                if rc != 0:
                    unplanned.append(f"{old.label} exited {rc} on SIGTERM")
                workers[1] = start_worker(py, s, "worker-b2", 19473, tmp, env)
                print(f"{t:6.0f} rolling restart: worker-b stopped (exit {rc}), worker-b2 started", flush=True)
            row: dict[str, float | str] = {"t_s": round(t, 1)}
            merged: list[tuple[float, float]] = []
            for w, slot in zip(workers, ("a", "b"), strict=True):
                if w.proc.poll() is not None and not w.planned_stop:
                    unplanned.append(f"{w.label} exited {w.proc.returncode} at {t:.0f} s")
                    w.planned_stop = True  # count it once
                text = w.scrape() or ""
                row[f"rss_{slot}"] = metric(text, "process_resident_memory_bytes") or float("nan")
                row[f"pipe_{slot}"] = metric(text, "riskstream_pipeline_process_resident_memory_bytes") or float("nan")
                row[f"worker_{slot}"] = w.label
                row[f"cpu_{slot}"] = metric(text, "process_cpu_seconds_total") or float("nan")
                row[f"pcpu_{slot}"] = metric(text, "riskstream_pipeline_process_cpu_seconds_total") or float("nan")
                child_start = metric(text, "riskstream_pipeline_process_start_time_seconds")
                if child_start is not None:
                    if w.child_start is not None and child_start != w.child_start:
                        unplanned.append(f"{w.label}: pipeline process restarted at {t:.0f} s")
                    w.child_start = child_start
                b = histogram_buckets(text, HIST)
                if b:
                    prev = w.prev_buckets or [(le, 0.0) for le, _ in b]
                    delta = [(le, c - c0) for (le, c), (_, c0) in zip(b, prev, strict=True)]
                    merged = delta if not merged else [(le, c + c2) for (le, c), (_, c2) in
                                                       zip(merged, delta, strict=True)]
                    w.prev_buckets = b
            row["kafka_rss"] = (rss_of_pid(kafka_pid) if kafka_pid else None) or float("nan")
            row["redis_rss"] = (rss_of_pid(redis_pid) if redis_pid else None) or float("nan")
            row["redis_used"] = float(r.info("memory")["used_memory"])
            info = r.info("cpu")
            row["redis_cpu"] = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
            row["kafka_cpu"] = (cpu_of_pid(kafka_pid) if kafka_pid else None) or float("nan")
            lag, done = offsets(probe, tps)
            row["lag"], row["committed"] = float(lag), float(done)
            (p50, p99), count = histogram_quantiles(merged, (0.5, 0.99)) if merged else ((float("nan"),) * 2, 0)
            row["p50_ms"], row["p99_ms"], row["alerts"] = p50 * 1000, p99 * 1000, float(count)
            rows.append(row)
            mb = 1 / 2**20
            print(f"{t:6.0f} {row['rss_a'] * mb:8.0f} {row['pipe_a'] * mb:7.0f} {row['rss_b'] * mb:8.0f} "  # type: ignore[operator]
                  f"{row['pipe_b'] * mb:7.0f} {row['kafka_rss'] * mb:8.0f} {row['redis_rss'] * mb:8.0f} "  # type: ignore[operator]
                  f"{row['redis_used'] * mb:8.1f} {row['lag']:8.0f} {p50 * 1000:7.0f} {p99 * 1000:7.0f} "
                  f"{count:7d}", flush=True)
            if replay.poll() not in (None, 0):
                unplanned.append(f"replay exited {replay.returncode}")
                break
    finally:
        replay.terminate()
        for w in workers:
            w.proc.terminate()
        for w in workers:
            try:
                w.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                w.proc.kill()
        probe.close()
        from stream.tools.namespace import delete_namespace

        delete_namespace(s)
        redis_proc.terminate()
        redis_proc.wait(timeout=30)

    return report(a, rows, unplanned)


def report(a: argparse.Namespace, rows: list[dict[str, float | str]], unplanned: list[str]) -> int:
    out: Path = a.out
    with open(out / "soak.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    warm = [row for row in rows if float(row["t_s"]) >= a.warmup_min * 60]
    half = a.minutes * 30
    # each process instance on its own span: worker b before the restart, b2 after it
    series = {
        "worker a RSS": [float(x["rss_a"]) for x in warm],
        "worker a pipeline RSS": [float(x["pipe_a"]) for x in warm],
        "worker b RSS (before restart)": [float(x["rss_b"]) for x in warm if float(x["t_s"]) < half],
        "worker b pipeline RSS (before restart)": [float(x["pipe_b"]) for x in warm if float(x["t_s"]) < half],
        "worker b2 RSS (after restart + warm-up)": [float(x["rss_b"]) for x in warm
                                                    if float(x["t_s"]) >= half + a.warmup_min * 60],
        "worker b2 pipeline RSS (after restart + warm-up)": [float(x["pipe_b"]) for x in warm
                                                             if float(x["t_s"]) >= half + a.warmup_min * 60],
        "Kafka broker RSS": [float(x["kafka_rss"]) for x in warm],
        "Redis RSS": [float(x["redis_rss"]) for x in warm],
        "Redis used_memory": [float(x["redis_used"]) for x in warm],
    }
    ok = not unplanned
    print(f"\nsummary (after a {a.warmup_min:g}-min warm-up; drift = mean of the last tenth vs the first tenth):")
    for name, vals in series.items():
        vals = [v for v in vals if v == v]  # drop NaN (a scrape that failed)
        if len(vals) < 2:
            print(f"  {name:50s} too few samples")
            continue
        d = drift(vals)
        if name.startswith("Redis"):  # bounded, not flat (above); RSS follows used_memory
            bound = REDIS_BASE_BYTES + a.users * USER_BYTES_MAX
            flag = (f"  (grows with the users' history; bound {bound / 2**20:.1f} MB: "
                    + ("within)" if max(vals) <= bound else "OVER  <--)") if name == "Redis used_memory" else
                    "  (follows used_memory)")
            if name == "Redis used_memory" and max(vals) > bound:
                ok = False
        else:
            flag = "" if abs(d) <= DRIFT_LIMIT or "Kafka" in name else "  <-- over 10 %"
            if flag:
                ok = False
        print(f"  {name:50s} {vals[0] / 2**20:8.1f} → {vals[-1] / 2**20:8.1f} MB, drift {d * 100:+5.1f} %{flag}")
    lags = [float(x["lag"]) for x in warm]
    p99s = [float(x["p99_ms"]) for x in warm if float(x["p99_ms"]) == float(x["p99_ms"])]
    lag_first, lag_last = max(lags[: max(1, len(lags) // 2)]), max(lags[len(lags) // 2:])
    bounded = lag_last <= max(2 * lag_first, a.rate * 5)  # no growth: within 5 s of input or the first half's max
    ok = ok and bounded
    print(f"  consumer lag (messages): max {lag_first:,.0f} in the first half, {lag_last:,.0f} in the second "
          f"— {'bounded' if bounded else 'GROWING'}")
    if p99s:
        p99s.sort()
        print(f"  decidable→acknowledged p99 per {a.sample_s:g}-s interval: median {p99s[len(p99s) // 2]:.0f} ms, "
              f"worst {p99s[-1]:.0f} ms; alerts {sum(float(x['alerts']) for x in rows):,.0f}")
    # CPU per event over the first half after warm-up (both original workers running, no restart)
    span = [x for x in warm if float(x["t_s"]) < half]
    if len(span) >= 2:
        x0, x1 = span[0], span[-1]
        events = float(x1["committed"]) - float(x0["committed"])
        if events > 0:
            parts = {"worker processes (Faust)": ("cpu_a", "cpu_b"), "pipeline processes": ("pcpu_a", "pcpu_b"),
                     "Redis": ("redis_cpu",), "Kafka broker": ("kafka_cpu",)}
            costs = {name: sum(float(x1[k]) - float(x0[k]) for k in keys) / events * 1e6
                     for name, keys in parts.items()}
            wall = float(x1["t_s"]) - float(x0["t_s"])
            print(f"  CPU per event over {events:,.0f} events ({events / wall:,.0f}/s, "
                  f"{wall / 60:.1f} min): " + ", ".join(f"{k} {v:.1f} µs" for k, v in costs.items()))
    print(f"  unplanned exits/restarts: {len(unplanned)}" + (f" ({'; '.join(unplanned)})" if unplanned else ""))
    plot(rows, out / "soak.png", a)
    print(f"wrote {out / 'soak.csv'} and {out / 'soak.png'}; targets {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


def plot(rows: list[dict[str, float | str]], path: Path, a: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [float(x["t_s"]) / 60 for x in rows]
    mb = 1 / 2**20
    fig, ax = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    for key, label in (("rss_a", "worker a"), ("pipe_a", "worker a pipeline"), ("rss_b", "worker b / b2"),
                       ("pipe_b", "worker b / b2 pipeline"), ("kafka_rss", "Kafka broker"), ("redis_rss", "Redis")):
        ax[0].plot(t, [float(x[key]) * mb for x in rows], label=label)
    ax[0].set_ylabel("RSS (MB)")
    ax[0].legend(fontsize=8, ncol=3)
    ax[1].plot(t, [float(x["redis_used"]) * mb for x in rows])
    ax[1].set_ylabel("Redis used_memory (MB)")
    ax[2].plot(t, [float(x["lag"]) for x in rows])
    ax[2].set_ylabel("consumer lag (messages)")
    ax[3].plot(t, [float(x["p99_ms"]) for x in rows], label="p99")
    ax[3].plot(t, [float(x["p50_ms"]) for x in rows], label="p50")
    ax[3].set_ylabel("decidable→ack (ms)")
    ax[3].legend(fontsize=8)
    ax[3].set_xlabel("minutes")
    for x in ax:
        x.axvline(a.minutes / 2, color="grey", ls="--", lw=0.8)
        x.axvline(a.warmup_min, color="grey", ls=":", lw=0.8)
    fig.suptitle(f"riskstream soak: {a.rate:,} events/s, 2 workers, rolling restart at {a.minutes / 2:g} min")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
