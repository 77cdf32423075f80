"""Replay a recording of pipeline steps through an in-process pipeline: the code's CPU per event on
exactly the steps a live run produced.

Record a live run first (any worker; the file holds the raw input, user ids included):

    RISKSTREAM_RECORD_STEPS=/tmp/steps.jsonl riskstream worker ...      # or under any bench
    python bench/replay_steps.py /tmp/steps.jsonl --rounds 3           # stack up (Kafka, Redis)

Each round builds a pipeline as the worker's pipeline process does (`build_pipeline`: real Redis,
real Kafka producer, the shipped model unless ``--model``) on a fresh namespace, feeds it the
recorded steps in order (their topics mapped onto the namespace's inputs), settles each step's
write, and prints the CPU per event, the recorded live CPU of the same steps, and a fit of CPU per
step against messages per step. Run it from two checkouts, alternated, to compare code on the same
steps (docs/perf-profile.md, session 16). The namespace is deleted afterwards.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.live.protocol import Step, TopicPartition  # noqa: E402
from stream.live.recording import read_steps  # noqa: E402
from stream.live.wiring import build_pipeline  # noqa: E402
from stream.settings import Settings, load_settings  # noqa: E402
from stream.tools.namespace import delete_namespace  # noqa: E402
from stream.topics import ensure_topics  # noqa: E402

DEFAULT_MODEL = ROOT / "models" / "riskstream.onnx"


def _input(s: Settings, topic: str) -> str:
    """The namespace's input topic for a recorded one (by its last name: clicks or views)."""
    kind = topic.rsplit(".", 1)[-1]
    if kind not in ("clicks", "views"):
        raise SystemExit(f"recorded topic {topic!r} is not an events.clicks or events.views input")
    return s.clicks_topic if kind == "clicks" else s.views_topic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recording", type=Path, help="a file written under RISKSTREAM_RECORD_STEPS")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--lateness-ms", type=int, default=None, help="as the recorded worker's (default: the default)")
    ap.add_argument("--min-messages", type=int, default=0, help="replay only steps with at least this many messages")
    a = ap.parse_args()
    if a.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    recorded = list(read_steps(a.recording))
    if not recorded:
        raise SystemExit(f"{a.recording}: no steps recorded")
    steps = [(st, cpu) for st, cpu in recorded if len(st.messages) >= a.min_messages]
    n_msgs = sum(len(st.messages) for st, _ in steps)
    live_cpu = sum(cpu for _, cpu in steps)
    print(f"{a.recording}: {len(recorded):,} steps recorded, replaying {len(steps):,} ({n_msgs:,} messages); "
          f"their pipeline CPU live: {live_cpu:.2f} s", flush=True)
    for rnd in range(a.rounds):
        s = load_settings(namespace=f"rps{uuid.uuid4().hex[:8]}",
                          **({} if a.lateness_ms is None else {"lateness_ms": a.lateness_ms}))
        ensure_topics(s)
        try:
            pipeline = build_pipeline(s, a.model, defer_writes=True)
            mine = [Step([(_input(s, t), p, off, k, v) for t, p, off, k, v in st.messages], st.partitions, st.idle,
                         {TopicPartition(_input(s, tp.topic), tp.partition): off for tp, off in st.floor.items()},
                         st.received_at, st.now_ms, st.generation) for st, _ in steps]
            gc.collect()
            gc.freeze()
            events, per_step = 0, []
            for st in mine:
                c0 = time.process_time()
                rep = pipeline.step(st)
                pipeline.finish_writes()
                per_step.append(time.process_time() - c0)
                events += rep.applied + rep.late + rep.duplicates
            gc.unfreeze()
            pipeline.close()
        finally:
            delete_namespace(s)
        cpu = sum(per_step)
        print(f"round {rnd + 1}: {events:,} events, {cpu / max(events, 1) * 1e6:.2f} µs of CPU per event in-process "
              f"(live: {live_cpu / max(events, 1) * 1e6:.2f})", flush=True)
        sizes = np.array([len(st.messages) for st in mine], float)
        busy = sizes > 0
        if busy.sum() >= 2 and np.ptp(sizes[busy]) > 0:
            fixed, per_msg = np.polyfit(sizes[busy], np.array(per_step)[busy], 1)[::-1]
            print(f"  fit: {fixed * 1e3:.2f} ms per step + {per_msg * 1e6:.1f} µs per message "
                  f"({busy.sum():,} steps with messages, {sizes[busy].mean():.0f} messages on average)", flush=True)


if __name__ == "__main__":
    main()
