"""Offline detector benchmark: events/s end to end and µs per event per stage.

    python bench/offline_bench.py [--events 1000000] [--users 10000] [--log PATH]

Generates a synthetic contract-v1 log (or reads PATH), then runs the same path as
``riskstream score`` with a GBT-sized ONNX model, timing each stage by wrapping the stage
functions. Prints figures; asserts nothing (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream.core import detector as det_mod  # noqa: E402
from stream.core import features as F  # noqa: E402
from stream.core.events import CATEGORIES, Event, encode_event  # noqa: E402
from stream.core.policy import load_policy_config  # noqa: E402
from stream.core.scoring import OnnxScorer, load_scorer  # noqa: E402
from stream.core.warmup import warm_up  # noqa: E402
from stream.offline import Summary, build_detector, decode_log, run_detector  # noqa: E402


def synth_log(path: Path, n_events: int, n_users: int, seed: int = 1) -> None:
    """Users with bursts of views/clicks over ~2 days; written in rough time order."""
    rng = np.random.default_rng(seed)
    per_user = n_events // n_users
    t0 = 1_735_689_600_000  # 2025-01-01
    users = np.repeat(np.arange(n_users), per_user)
    steps = np.where(rng.random(users.size) < 0.85, rng.exponential(15_000, users.size),
                     rng.exponential(1_800_000, users.size)).astype(np.int64)
    steps = steps.reshape(n_users, per_user)
    ts = (t0 + rng.integers(0, 6 * 3_600_000, n_users)[:, None] + np.cumsum(steps, axis=1)).ravel()
    kinds = rng.random(users.size) < 0.7
    dwell = rng.lognormal(9.5, 1.0, users.size).astype(np.int64)
    cats = rng.integers(0, len(CATEGORIES), users.size)
    bands = np.array(["13-15", "16-17", "adult", "adult", "u13"])
    tzs = np.array([0, 60, -300, 330, 120])
    order = np.argsort(ts, kind="stable")
    with gzip.open(path, "wb", compresslevel=1) as f:
        for i in order.tolist():
            u = int(users[i])
            view = bool(kinds[i])
            f.write(encode_event(Event(
                user_id=f"user-{u:06d}", ts_ms=int(ts[i]), type="view" if view else "click",
                event_id=f"ev-{i:09d}", category=CATEGORIES[int(cats[i])],
                dwell_ms=int(min(dwell[i], 3_600_000)) if view else 0,
                tz_offset_min=int(tzs[u % 5]), age_band=str(bands[u % 5]),
                item_id=None, session_id=None)) + b"\n")


def build_model(path: Path) -> OnnxScorer:
    """The shipped model when there is one, else a GBT of production size."""
    shipped = Path(__file__).resolve().parents[1] / "models" / "riskstream.onnx"
    if not shipped.exists():
        from tests.model_factory import build_model as build

        build(str(path), n_features=F.N_FEATURES, feature_names=list(F.FEATURE_NAMES),
              spec_hash=F.FEATURE_SPEC_HASH, kind="gbt", seed=0)
        shipped = path
    return load_scorer(shipped)


class Timer:
    def __init__(self) -> None:
        self.s: dict[str, float] = defaultdict(float)
        self.rows: dict[str, int] = defaultdict(int)

    def wrap(self, name: str, fn, rows=None):  # type: ignore[no-untyped-def]
        def inner(*a, **k):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.s[name] += time.perf_counter() - t
                if rows is not None:
                    self.rows[name] += rows(*a)
        return inner


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--log", type=Path)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--sort", default="cumulative", help="profile sort key (cumulative, tottime, ...)")
    ap.add_argument("--model", type=Path, help="ONNX model (default: the shipped one)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rsbench-"))
    log = a.log or tmp / "events.jsonl.gz"
    if a.log is None:
        t = time.perf_counter()
        synth_log(log, a.events, a.users)
        print(f"generated {a.events:,} events of {a.users:,} users in {time.perf_counter() - t:.1f} s -> {log}")
    scorer = (load_scorer(a.model)
              if a.model else build_model(tmp / "bench.onnx"))
    print(f"model: {scorer.info.path} ({scorer.info.metadata.get('model_kind', scorer.info.model_version)})")
    # Load (or compile, on a fresh checkout) the numba kernels once, outside the timed run.
    print(f"kernel warm-up (numba cache load or compile): {warm_up():.2f} s")
    tm = Timer()
    summary = Summary()
    t0 = time.perf_counter()
    events = decode_log(log, summary)
    t_decode = time.perf_counter() - t0
    # Score every evaluation (the synthetic log is shorter than the 7-day history the default
    # policy asks for), so the ONNX stage is measured at its production batch sizes.
    cfg = load_policy_config(None)
    cfg = cfg.model_copy(update={"ml": cfg.ml.model_copy(update={"min_history_days": 0})})
    det, store = build_detector(cfg, scorer)
    store.apply_columns = tm.wrap("window update", store.apply_columns)  # type: ignore[method-assign]
    det_mod.F.compute_arrays = tm.wrap("features", F.compute_arrays,  # type: ignore[assignment]
                                       rows=lambda rings, *_: len(rings))
    scorer.score = tm.wrap("scoring", scorer.score, rows=lambda x: len(x))  # type: ignore[method-assign]
    class TimedPolicy:
        def __init__(self, inner):  # type: ignore[no-untyped-def]
            self._inner = inner
            self.decide = tm.wrap("policy", inner.decide)

        def min_history_days(self) -> int:
            return self._inner.min_history_days()

    det.policy = TimedPolicy(det.policy)  # type: ignore[assignment]
    out: list = []
    t1 = time.perf_counter()
    if a.profile:
        import cProfile
        import pstats
        pr = cProfile.Profile()
        pr.enable()
    run_detector(events, det, out.append, summary)
    if a.profile:
        pr.disable()
        pstats.Stats(pr).sort_stats(a.sort).print_stats(30)
    t_detect = time.perf_counter() - t1
    n = len(events)
    total = t_decode + t_detect
    other = t_detect - sum(tm.s.values())
    print(f"events: {n:,}  users: {len(store):,}  evaluations: {summary.stats.evaluations:,}  "
          f"scored rows: {summary.stats.scored:,}  alerts: {len(out):,}")
    print(f"end to end: {n / total:,.0f} events/s  ({total:.1f} s; decode {t_decode:.1f} s, detect {t_detect:.1f} s)")
    print(f"{'stage':16s} {'µs/event':>9s} {'µs/row':>8s}")
    print(f"{'decode':16s} {t_decode / n * 1e6:9.2f}")
    for name in ("window update", "features", "scoring", "policy"):
        rows = tm.rows.get(name)
        per_row = f"{tm.s[name] / rows * 1e6:8.2f}" if rows else ""
        print(f"{name:16s} {tm.s[name] / n * 1e6:9.2f} {per_row}")
    print(f"{'other (sort, grouping, alerts)':16s} {other / n * 1e6:9.2f}")


if __name__ == "__main__":
    main()
