"""The peer in the bench: riskstream against a Faust no-op agent and Quix Streams apps (issue #17 item 4).

    python bench/peer_bench.py [--events 276000] [--users 56] [--days 3] [--repeats 2] [--envelopes 1 8 20]
                               [--variants faust-noop faust-noop-drain faust-noop-fast worker worker-handoff quix-noop
                                           quix-tumbling quix-sliding]
                               [--peer-venv ~/.cache/riskstream/peer-venv] [--timeout 1800]

On the real stack (Kafka + Redis up). For each input shape — one event per message, and the same
events as SDK uploads of about 8 and about 20 events per message (a user's events of one type
within an upload window, grouped as a mobile SDK uploads them; the window is chosen so that the
mean lands near the target) — the input topics are filled once, then every variant drains them
with a fresh consumer group, in alternating order (A B C … A B C …):

- ``faust-noop``: a Faust agent that does nothing (bench/stream_bench.py's ``--agent noop``): ``async
  for`` over its stream, Faust's idiom, the baseline of issue #17's ratios;
- ``faust-noop-drain``: a Faust agent that does nothing but ack, taking its messages off its
  channel's queue as the worker's agent does (``--agent noop-drain``): Faust's consumer without its
  stream iterator;
- ``faust-noop-fast``: the same, with the worker's delivery of fetched messages as well
  (``--agent noop-fast``: ``stream.live.faust_compat.install_fast_delivery``, which spares Faust's
  consumer four asyncio tasks per message): the Faust ceiling as the worker meets it;
- ``worker``: the riskstream worker, shipped model, fresh Redis state; for uploads its lateness
  bound is set above the upload window (an upload reorders events by up to the window);
- ``worker-handoff``: a control, the same worker with its detector taken out (bench/handoff: its
  pipeline process reports every message done unread), i.e. Faust plus the worker's batching,
  hand-off and acks: the ceiling of any detector behind that hand-off on this machine;
- ``quix-noop``: a Quix Streams app without transformation (its consumer loop);
- ``quix-tumbling``: Quix Streams, per user a 1-minute tumbling count + sum of dwell, durable
  (RocksDB state in a temp dir + changelog topics);
- ``quix-sliding``: the same with a 1-hour sliding window.

The Quix apps (bench/peer_quix_app.py) run in their own virtual environment, created on first run
with ``python -m venv`` and ``pip install quixstreams`` (not a riskstream dependency). Drain rate is
stream_bench's: events committed between the group's committed offsets passing 10 % and 90 % of
the input, over that time — the same method for every variant. Prints every run, the median per
variant and every ratio; asserts nothing. Deletes its namespaces and the Quix changelog topics.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from bench import stream_bench as sb  # noqa: E402
from stream.core.ordering import DEFAULT_LATENESS_MS  # noqa: E402
from stream.settings import load_settings  # noqa: E402
from stream.topics import admin_client, ensure_topics  # noqa: E402

DEFAULT_VENV = Path.home() / ".cache" / "riskstream" / "peer-venv"
QUIX_APP = ROOT / "bench" / "peer_quix_app.py"
HANDOFF = ROOT / "bench" / "handoff"  # the worker-handoff control's sitecustomize
VARIANTS = ["faust-noop", "faust-noop-drain", "faust-noop-fast", "worker", "worker-handoff", "quix-noop", "quix-tumbling",
            "quix-sliding"]
ENVELOPE_CAP = 100  # events per upload at most (an SDK's batch limit; the contract allows 1,000)
WINDOWS_S = [5, 10, 20, 30, 60, 100, 200, 300, 600, 900, 1200, 1800, 2700, 3300]


def peer_python(venv: Path, spec: str) -> Path:
    """The peer venv's interpreter; created (python -m venv + pip install) on first use."""
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import quixstreams"], capture_output=True).returncode == 0:
        return py
    print(f"creating the peer's virtual environment {venv} ({spec}) …", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", spec], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"peer_bench: pip install {spec} into {venv} failed: {r.stderr.strip()[-500:]}")
    return py


def quix_version(py: Path) -> str:
    return subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('quixstreams'))"],
                          capture_output=True, text=True, check=True).stdout.strip()


# -- input shapes ----------------------------------------------------------------------------------
def make_log(path: Path, events: int, users: int, days: float | None) -> None:
    """bench/offline_bench.synth_log, its event times rescaled to span ``days`` (denser or sparser
    users: an upload window under the worker's 1-hour lateness limit holds ~20 events only when a
    user makes dozens an hour)."""
    from bench.offline_bench import synth_log

    synth_log(path, events, users)
    if days is None:
        return
    with gzip.open(path, "rb") as f:
        rows = [orjson.loads(line) for line in f.read().splitlines() if line]
    t0 = min(r["ts"] for r in rows)
    span = max(max(r["ts"] for r in rows) - t0, 1)
    k = days * 86_400_000 / span
    for r in rows:
        r["ts"] = t0 + int((r["ts"] - t0) * k)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")


def _keys(log: Path) -> list[tuple[int, str, str, bytes]]:
    with gzip.open(log, "rb") as f:
        out = []
        for line in f.read().splitlines():
            if line:
                e = orjson.loads(line)
                out.append((e["ts"], e["user_id"], e["type"], line))
    return out


def upload_sizes(keys: list[tuple[int, str, str, bytes]], window_ms: int, cap: int) -> float:
    """Mean events per message of the log as SDK uploads of ``window_ms`` (what replay --envelope
    ``cap`` makes of the reordered log: consecutive events of one user and type, at most ``cap``)."""
    groups: dict[tuple[int, str, str], int] = {}
    for ts, user, typ, _ in keys:
        k = (ts // window_ms, user, typ)
        groups[k] = groups.get(k, 0) + 1
    msgs = sum(-(-n // cap) for n in groups.values())
    return len(keys) / max(msgs, 1)


def choose_window(keys: list[tuple[int, str, str, bytes]], target: float, cap: int) -> tuple[int, float]:
    """The upload window (ms) from WINDOWS_S whose mean events per message is closest to ``target``."""
    best = min(((w * 1000, upload_sizes(keys, w * 1000, cap)) for w in WINDOWS_S),
               key=lambda p: abs(p[1] - target))
    return best


def write_uploads(keys: list[tuple[int, str, str, bytes]], dst: Path, window_ms: int) -> None:
    """The log reordered so each user's events of one type in one window are consecutive lines."""
    order = sorted(keys, key=lambda k: (k[0] // window_ms, k[1], k[2], k[0]))
    with gzip.open(dst, "wb", compresslevel=1) as f:
        f.write(b"\n".join(k[3] for k in order) + b"\n")


# -- one drain -------------------------------------------------------------------------------------
def run_variant(variant: str, *, py: str, peer_py: Path, s, ns: str, parts: int, model: Path,  # type: ignore[no-untyped-def]
                msgs: int, epm: float, lateness_ms: int | None, grace_ms: int, tag: str, timeout: float,
                made_groups: list[str]) -> float:
    topics = [s.clicks_topic, s.views_topic]
    group = f"{variant}-{tag}"
    label = f"{variant} ({tag})"
    if variant in ("faust-noop", "faust-noop-drain", "faust-noop-fast"):
        cmd = [py, sb.__file__, "--agent", variant.removeprefix("faust-"), "--namespace", ns, "--group", group]
        return sb.drain(label, cmd, s.kafka_bootstrap, f"{ns}.{group}", topics, parts, msgs, epm, timeout=timeout)
    if variant in ("worker", "worker-handoff"):
        from stream.state import delete_keys, redis_client

        r = redis_client(s)
        try:
            delete_keys(r, s.key_prefix)  # fresh window state for every worker run
        finally:
            r.close()
        cmd = [py, "-m", "stream", "worker", "--namespace", ns, "--group", group, "--model", str(model),
               "--loglevel", "WARNING"]
        if lateness_ms is not None:
            cmd += ["--lateness-ms", str(lateness_ms)]
        env = None if variant == "worker" else {"PYTHONPATH": f"{HANDOFF}{os.pathsep}{sb.ENV['PYTHONPATH']}",
                                                "RISKSTREAM_BENCH_HANDOFF_ONLY": "1"}
        return sb.drain(label, cmd, s.kafka_bootstrap, f"{ns}.{group}", topics, parts, msgs, epm, timeout=timeout,
                        env=env)
    kind = variant.removeprefix("quix-")
    qgroup = f"{ns}.{group}"
    made_groups.append(qgroup)
    state = Path(tempfile.mkdtemp(prefix="rs-peer-state-"))
    try:
        cmd = [str(peer_py), str(QUIX_APP), kind, "--bootstrap", s.kafka_bootstrap, "--group", qgroup,
               "--topics", *topics, "--state-dir", str(state), "--grace-ms", str(grace_ms),
               "--late-file", str(state / "late.txt")]
        return sb.drain(label, cmd, s.kafka_bootstrap, qgroup, topics, parts, msgs, epm, timeout=timeout)
    finally:
        late = state / "late.txt"
        if late.exists() and late.read_text().strip() not in ("", "0"):
            print(f"    ({variant}: the windows dropped {int(late.read_text()):,} events as late)", flush=True)
        shutil.rmtree(state, ignore_errors=True)


def delete_quix_topics(s, groups: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Quix's changelog/repartition topics carry the consumer group in their names."""
    if not groups:
        return
    admin = admin_client(s)
    names = admin.list_topics(timeout=10).topics
    mine = [t for t in names if any(g in t for g in groups)]
    if mine:
        for fut in admin.delete_topics(mine, operation_timeout=30).values():
            try:
                fut.result()
            except Exception as e:  # noqa: BLE001 - cleanup: report and go on
                print(f"  (could not delete {e})", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=276_000, help="events in the synthetic log")
    ap.add_argument("--users", type=int, default=56)
    ap.add_argument("--days", type=float, default=3.0,
                    help="span of the log's event times (rescaled; 0 = synth_log's own)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating rounds per input shape")
    ap.add_argument("--envelopes", type=float, nargs="+", default=[1, 8, 20],
                    help="target events per message (1 = one event per message)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    ap.add_argument("--peer-venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("--quix-spec", default="quixstreams", help="pip requirement for the peer venv")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one drain may take")
    a = ap.parse_args()
    if a.events < 1000 or a.users < 1 or a.repeats < 1 or any(e < 1 for e in a.envelopes):
        raise SystemExit("peer_bench: --events ≥ 1000, --users ≥ 1, --repeats ≥ 1, --envelopes ≥ 1")

    py = sys.executable
    peer_py = peer_python(a.peer_venv, a.quix_spec) if any(v.startswith("quix") for v in a.variants) else None
    model = ROOT / "models" / "riskstream.onnx"
    if any(v.startswith("worker") for v in a.variants) and not model.exists():
        raise SystemExit(f"peer_bench: no model at {model} (python -m models.build)")
    tmp = Path(tempfile.mkdtemp(prefix="rs-peer-bench-"))
    log = tmp / "events.jsonl.gz"
    make_log(log, a.events, a.users, a.days or None)
    keys = _keys(log)
    n = len(keys)
    span_d = (max(k[0] for k in keys) - min(k[0] for k in keys)) / 86_400_000
    print(f"input: {n:,} events of {a.users:,} users over {span_d:.1f} days (bench/offline_bench.synth_log"
          f"{', rescaled' if a.days else ''}), "
          f"6 partitions per topic; quixstreams {quix_version(peer_py) if peer_py else '-'}; "
          f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}", flush=True)
    parts = 6
    results: dict[tuple[float, str], list[float]] = {}
    shapes: dict[float, str] = {}
    quix_groups: list[str] = []
    base = f"peer{uuid.uuid4().hex[:6]}"
    try:
        for target in a.envelopes:
            ns = f"{base}e{int(target)}"
            s = load_settings(namespace=ns, partitions=parts, input_retention_ms=sb.HISTORY_MS)
            ensure_topics(s)
            sb.CREATED.append(s)
            if target <= 1:
                src, cap, window_ms, lateness, grace = log, 1, 0, None, DEFAULT_LATENESS_MS  # the worker's default
                shape = "one event per message"
            else:
                window_ms, _ = choose_window(keys, target, ENVELOPE_CAP)
                src, cap = tmp / f"uploads{int(target)}.jsonl.gz", ENVELOPE_CAP
                write_uploads(keys, src, window_ms)
                lateness = min(3_600_000, window_ms + 60_000)  # above the upload window
                grace = lateness
                shape = f"SDK uploads, {window_ms // 1000} s window"
            t = time.perf_counter()
            subprocess.run([py, "-m", "stream", "replay", str(src), "--namespace", ns, "--envelope", str(cap),
                            "--no-progress"], cwd=ROOT, env=sb.ENV, check=True, stderr=subprocess.DEVNULL)
            msgs = sb.committed_end(s, parts)
            epm = n / max(msgs, 1)
            shapes[target] = f"{shape}: {epm:.2f} events/message"
            print(f"\n[{shapes[target]}] {msgs:,} messages (published in {time.perf_counter() - t:.1f} s)"
                  + f"; worker lateness {lateness or DEFAULT_LATENESS_MS} ms, Quix windows' grace {grace} ms", flush=True)
            for r in range(a.repeats):
                for v in a.variants:
                    try:
                        rate = run_variant(v, py=py, peer_py=peer_py, s=s, ns=ns, parts=parts, model=model,  # type: ignore[arg-type]
                                           msgs=msgs, epm=epm, lateness_ms=lateness, grace_ms=grace,
                                           tag=f"r{r + 1}", timeout=a.timeout, made_groups=quix_groups)
                    except sb.TooSmall as e:  # this variant outran the commit interval: no figure
                        print(f"  {e}", flush=True)
                        continue
                    results.setdefault((target, v), []).append(rate)
    finally:
        for made in sb.CREATED:
            delete_quix_topics(made, [g for g in quix_groups if g.startswith(made.namespace + ".")])
        from stream.tools.namespace import delete_namespace

        for made in sb.CREATED:
            delete_namespace(made)
        sb.CREATED.clear()
        shutil.rmtree(tmp, ignore_errors=True)
    report(a, results, shapes)


def report(a: argparse.Namespace, results: dict[tuple[float, str], list[float]], shapes: dict[float, str]) -> None:
    print(f"\nsummary (median of {a.repeats} run(s) each; load average now {os.getloadavg()[0]:.1f}):")
    print("| input | " + " | ".join(a.variants) + " |")
    print("|---|" + "---|" * len(a.variants))
    med: dict[tuple[float, str], float] = {}
    for target in a.envelopes:
        cells = []
        for v in a.variants:
            runs = results.get((target, v), [])
            med[(target, v)] = statistics.median(runs) if runs else float("nan")
            cells.append(f"{med[(target, v)]:,.0f} ({', '.join(f'{x / 1000:.1f}k' for x in runs)})" if runs
                         else "too fast for the input")
        print(f"| {shapes.get(target, target)} | " + " | ".join(cells) + " |")
    for lead in ("worker", "worker-handoff"):
        if lead not in a.variants:
            continue
        print(f"\nratios (medians): {lead} / …")
        for target in a.envelopes:
            w = med[(target, lead)]
            parts = [f"{v} {w / med[(target, v)]:.2f}" if med[(target, v)] > 0 else f"{v} n/a"
                     for v in a.variants if v not in (lead, "worker")]
            print(f"  {shapes.get(target, target)}: " + ",  ".join(parts))


if __name__ == "__main__":
    try:
        main()
    finally:
        from stream.tools.namespace import delete_namespace

        for made in sb.CREATED:
            delete_namespace(made)
