"""Where the live worker's CPU per event goes (issue #17 item 1, the measuring half).

    python bench/profile_pipeline.py [--events 200000] [--users 56] [--days 3] [--envelope 8] [--out DIR]
                                     [--no-py-spy] [--top 25] [--pipelines 1 2 1 2]

On the real stack. Fills a namespace with the same kind of input as bench/peer_bench.py (the
synthetic log as SDK uploads of about ``--envelope`` events per message, or one event per message
with ``--envelope 1``), runs the riskstream worker on it and, while the consumer group's committed
offsets go from 10 % to 90 % of the input (stream_bench's window):

- reads the CPU time (user + system, all threads, /proc/PID/stat) of the worker's Faust process
  and of its pipeline child process(es, summed; ``--pipelines``): µs of CPU per event for each;
  and, in the same window, of the local stack's broker and Redis (``.state/pids``) and of the
  whole machine (/proc/stat): what the detector competes with for the cores;
- samples the pipeline child with py-spy (``--nonblocking``: the child is never paused, so the CPU
  figures stay honest), writing a flame graph (``pipeline.svg``) and the collapsed stacks
  (``pipeline.txt``) into ``--out``, and prints the top functions by inclusive and by own samples,
  as % of samples and as µs per event (the share of the child's CPU per event); and the Faust
  process (all threads, ``faust.txt``) the same way;

then runs the offline detector (``riskstream score``'s path, the same default policy and shipped
model) on the same events in this process and prints its CPU per event and the ratio. py-spy needs
ptrace (root, or CAP_SYS_PTRACE). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, TopicPartition  # noqa: E402

from bench import stream_bench as sb  # noqa: E402
from bench.peer_bench import ENVELOPE_CAP, _keys, choose_window, make_log, write_uploads  # noqa: E402
from stream.settings import load_settings  # noqa: E402
from stream.topics import ensure_topics  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _stat(path: str | Path) -> tuple[str, float]:
    """The name and the user + system CPU seconds of a /proc ``stat`` file (a process's or a thread's)."""
    with open(path) as f:
        head, tail = f.read().rsplit(")", 1)
    fields = tail.split()
    return head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / TICK


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    return _stat(f"/proc/{pid}/stat")[1]


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of a process (threads of one name summed): where a process's
    CPU goes besides its Python main thread (librdkafka's threads, onnxruntime's pool, ...)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name, cpu = _stat(task / "stat")
        except OSError:  # the thread ended
            continue
        out[name] = out.get(name, 0.0) + cpu
    return out


def stack_pids() -> dict[str, int]:
    """The local stack's broker and Redis (``deploy/local/stack`` pid files), those that run."""
    out = {}
    for name in ("kafka", "redis"):
        try:
            pid = int((ROOT / ".state" / "pids" / f"{name}.pid").read_text().split()[0])
            cpu_s(pid)
        except (OSError, ValueError, IndexError):
            continue
        out[name] = pid
    return out


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / TICK, sum(v[:8]) / TICK


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def pipeline_children(pid: int, n: int = 1, timeout: float = 120) -> list[int]:
    """The worker's ``n`` pipeline processes: its spawned children (not multiprocessing's resource tracker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = []
        for c in children(pid):
            try:
                cmd = Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if (b"multiprocessing.spawn" in cmd or b"spawn_main" in cmd) and b"resource_tracker" not in cmd:
                found.append(c)
        if len(found) >= n:
            return sorted(found)
        time.sleep(0.2)
    raise SystemExit(f"profile_pipeline: the worker's {n} pipeline child process(es) did not appear")


def steps_done(port: int) -> float:
    """Steps the worker's pipeline(s) ran so far (``riskstream_batch_seconds_count``)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("riskstream_batch_seconds_count"))


def committed(probe: Consumer, tps: list[TopicPartition]) -> int:
    return sum(max(tp.offset, 0) for tp in probe.committed(tps, timeout=10))


def top_functions(collapsed: Path, n: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, top by inclusive samples, top by own samples) from py-spy's collapsed stacks."""
    incl: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        frames = [f for f in stack.split(";") if " (" in f]  # frames are "function (file:line)"
        if not frames:
            continue
        total += k
        names = [_short(f) for f in frames]
        own[names[-1]] += k
        for name in set(names):
            incl[name] += k
    return total, incl.most_common(n), own.most_common(n)


def _short(frame: str) -> str:
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/stream/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1] if marker != "/stream/" else "stream/" + path.split(marker, 1)[1]
            break
    return f"{func} ({path})"


def offline_cpu(log: Path, model: Path) -> tuple[int, float, float]:
    """(events, CPU s of decode, CPU s of detect) of the offline detector on ``log``."""
    from stream.core.policy import load_policy_config
    from stream.core.scoring import load_scorer
    from stream.core.warmup import warm_up
    from stream.offline import Summary, build_detector, decode_log, run_detector

    warm_up()
    scorer = load_scorer(model)
    det, _ = build_detector(load_policy_config(None), scorer)
    summary = Summary()
    t0 = time.process_time()
    events = decode_log(log, summary)
    t1 = time.process_time()
    run_detector(events, det, lambda _a: None, summary)
    t2 = time.process_time()
    return len(events), t1 - t0, t2 - t1


def run_once(a: argparse.Namespace, spy: str | None, model: Path, src: Path, cap: int, n: int, lateness: int | None,
             pipelines: int) -> tuple[float, float, float]:
    """One worker with ``pipelines`` pipeline processes on a freshly filled namespace: (events/s,
    µs CPU per event of the pipeline processes together, of the Faust process)."""
    ns = f"prof{uuid.uuid4().hex[:6]}"
    parts = 6
    s = load_settings(namespace=ns, partitions=parts, input_retention_ms=sb.HISTORY_MS)
    ensure_topics(s)
    sb.CREATED.append(s)
    subprocess.run([sys.executable, "-m", "stream", "replay", str(src), "--namespace", ns, "--envelope", str(cap),
                    "--no-progress"], cwd=ROOT, env=sb.ENV, check=True, stderr=subprocess.DEVNULL)
    msgs = sb.committed_end(s, parts)
    epm = n / msgs
    print(f"\nRISKSTREAM_PIPELINES={pipelines}; input: {n:,} events of {a.users} users, {epm:.2f} events per "
          f"message ({msgs:,} messages)" + (f", worker --lateness-ms {lateness}" if lateness else "")
          + f"; load average {os.getloadavg()[0]:.1f}", flush=True)
    port = 19465
    cmd = [sys.executable, "-m", "stream", "worker", "--namespace", ns, "--group", "prof", "--model", str(model),
           "--metrics-port", str(port), "--loglevel", "WARNING"] + (["--lateness-ms", str(lateness)] if lateness else [])
    probe = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"{ns}.prof", "enable.auto.commit": False})
    tps = [TopicPartition(t, p) for t in (s.clicks_topic, s.views_topic) for p in range(parts)]
    worker = subprocess.Popen(cmd, cwd=ROOT, env={**sb.ENV, "RISKSTREAM_PIPELINES": str(pipelines)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    spies: list[subprocess.Popen] = []
    try:
        kids = pipeline_children(worker.pid, pipelines)
        lo, hi = 0.1 * msgs, 0.9 * msgs
        while (c := committed(probe, tps)) < lo:
            if worker.poll() is not None:
                raise SystemExit(f"worker exited: {worker.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            time.sleep(0.05)
        c0, t0, w0, p0 = c, time.monotonic(), cpu_s(worker.pid), [cpu_s(k) for k in kids]
        th0 = thread_cpu_s(kids[0])
        steps0 = steps_done(port)
        others = stack_pids()
        o0, m0 = {k: cpu_s(v) for k, v in others.items()}, machine_busy_s()
        if spy:  # the first pipeline process (with several: the share of its partitions)
            for fmt, name in (("flamegraph", "pipeline.svg"), ("raw", "pipeline.txt")):
                spies.append(subprocess.Popen([spy, "record", "--pid", str(kids[0]), "--nonblocking", "--function",
                                               "--rate", str(a.rate), "--format", fmt, "-o", str(a.out / name)],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            # and the Faust process (all its threads): what it costs per message beyond Faust's own loop
            spies.append(subprocess.Popen([spy, "record", "--pid", str(worker.pid), "--nonblocking", "--function",
                                           "--rate", str(a.rate), "--format", "raw", "-o", str(a.out / "faust.txt")],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while (c := committed(probe, tps)) < hi:
            if worker.poll() is not None:
                raise SystemExit(f"worker exited: {worker.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            time.sleep(0.05)
        c1, t1, w1, p1 = c, time.monotonic(), cpu_s(worker.pid), [cpu_s(k) for k in kids]
        th1 = thread_cpu_s(kids[0])
        steps1 = steps_done(port)
        o1, m1 = {k: cpu_s(v) for k, v in others.items()}, machine_busy_s()
    finally:
        for sp in spies:
            sp.send_signal(signal.SIGINT)
        for sp in spies:
            try:
                sp.wait(timeout=60)
            except subprocess.TimeoutExpired:
                sp.kill()
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
        probe.close()
        from stream.tools.namespace import delete_namespace

        for made in sb.CREATED:
            delete_namespace(made)
        sb.CREATED.clear()
    ev = (c1 - c0) * epm
    wall = t1 - t0
    each = [(b - e) for e, b in zip(p0, p1)]
    faust_us, pipe_us = (w1 - w0) / ev * 1e6, sum(each) / ev * 1e6
    steps = max(1.0, steps1 - steps0)
    print(f"live, 10→90 % of the input: {ev:,.0f} events in {wall:.1f} s = {ev / wall:,.0f} events/s, "
          f"{steps:,.0f} steps ({(c1 - c0) / steps:,.0f} messages, {ev / steps:,.0f} events per step)")
    print(f"  CPU per event: pipeline process{'es' if pipelines > 1 else ''} {pipe_us:.1f} µs, Faust process "
          f"{faust_us:.1f} µs (pipeline {sum(each) / wall * 100:.0f} % of a core"
          + (f" = {' + '.join(f'{x / wall * 100:.0f}' for x in each)}" if pipelines > 1 else "")
          + f", Faust {(w1 - w0) / wall * 100:.0f} %)", flush=True)
    threads = sorted(((th1[k] - th0.get(k, 0.0), k) for k in th1), reverse=True)
    print("  the " + ("first " if pipelines > 1 else "") + "pipeline process by thread: "
          + ", ".join(f"{name} {t / ev * 1e6 * pipelines:.2f} µs" for t, name in threads if t > 0), flush=True)
    # the rest of the machine's CPU in the same window: what the detector competes with for the cores
    rest = ", ".join(f"{k} {(o1[k] - o0[k]) / ev * 1e6:.1f} µs ({(o1[k] - o0[k]) / wall * 100:.0f} % of a core)"
                     for k in o0)
    busy, total = m1[0] - m0[0], m1[1] - m0[1]
    cores = os.cpu_count() or 1
    print(f"  the stack: {rest or 'no local stack pid files'}; the whole machine busy {busy / total * cores:.2f} "
          f"of {cores} cores ({busy / ev * 1e6:.1f} µs of CPU per event, everything included)", flush=True)
    return ev / wall, pipe_us, faust_us


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=56)
    ap.add_argument("--days", type=float, default=3.0, help="span of the event times (as peer_bench; 0: as generated)")
    ap.add_argument("--envelope", type=float, default=8, help="target events per message (1: one per message)")
    ap.add_argument("--out", type=Path, default=Path("profile-out"))
    ap.add_argument("--no-py-spy", action="store_true", help="CPU per event only")
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--pipelines", type=int, nargs="+", default=[1],
                    help="RISKSTREAM_PIPELINES of each run, in order (e.g. 1 2 1 2: interleaved), each on a fresh "
                         "namespace; py-spy samples the first run only")
    a = ap.parse_args()
    spy = None if a.no_py_spy else shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if spy is not None and not Path(spy).exists():
        raise SystemExit("profile_pipeline: py-spy not found (pip install py-spy), or pass --no-py-spy")
    model = ROOT / "models" / "riskstream.onnx"
    tmp = Path(tempfile.mkdtemp(prefix="rs-profile-"))
    a.out.mkdir(parents=True, exist_ok=True)
    log = tmp / "events.jsonl.gz"
    make_log(log, a.events, a.users, a.days or None)
    keys = _keys(log)
    n = len(keys)
    lateness = None
    src, cap = log, 1
    if a.envelope > 1:
        window_ms, _ = choose_window(keys, a.envelope, ENVELOPE_CAP)
        src, cap = tmp / "uploads.jsonl.gz", ENVELOPE_CAP
        write_uploads(keys, src, window_ms)
        lateness = min(3_600_000, window_ms + 60_000)
    runs = []
    for i, pipelines in enumerate(a.pipelines):  # each run on a fresh namespace (no state from the one before)
        runs.append(run_once(a, spy if i == 0 else None, model, src, cap, n, lateness, pipelines))
    if len(a.pipelines) > 1:
        print("\nruns (in the order they ran): pipelines | events/s | µs CPU/event pipeline(s) | Faust | total")
        for pipelines, (rate, pipe_us, faust_us) in zip(a.pipelines, runs):
            print(f"  {pipelines} | {rate:,.0f} | {pipe_us:.1f} | {faust_us:.1f} | {pipe_us + faust_us:.1f}")
    _, pipe_us, faust_us = runs[0]  # the ratios below: of the first run
    n_off, dec, det = offline_cpu(log, model)
    off_us = (dec + det) / n_off * 1e6
    print(f"offline detector, the same {n_off:,} events, default policy: {off_us:.1f} µs CPU per event "
          f"(decode {dec / n_off * 1e6:.1f}, detect {det / n_off * 1e6:.1f}) = {n_off / (dec + det):,.0f} events/s "
          f"per core")
    print(f"  ratio pipeline / offline: {pipe_us / off_us:.1f}×   (pipeline + Faust) / offline: "
          f"{(pipe_us + faust_us) / off_us:.1f}×")
    for label, raw, us in (("pipeline process", a.out / "pipeline.txt", pipe_us),
                           ("Faust process", a.out / "faust.txt", faust_us)):
        if not (spy and raw.exists()):
            continue
        total, incl, own = top_functions(raw, a.top)
        print(f"\npy-spy, {label}: {total:,} samples at {a.rate}/s ({raw})")
        for title, rows in (("inclusive (the function and what it calls)", incl), ("own (self) samples", own)):
            print(f"\n| {title} | % samples | µs/event |\n|---|---|---|")
            for name, k in rows:
                print(f"| `{name}` | {k / total * 100:.1f} | {k / total * us:.2f} |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    finally:
        from stream.tools.namespace import delete_namespace

        for made in sb.CREATED:
            delete_namespace(made)
