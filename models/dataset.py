"""Feature rows from an event log, computed by the stream's own detector (train/serve parity).

An event log is run through :func:`stream.offline.run_detector` with a detector from
:func:`stream.offline.build_detector`; a ``tap`` sees every evaluated batch ``(snapshots, X, rules)``
— exactly the rows the live worker would score — and keeps, per user and local day:

* the last evaluated tick of the day (the day's final state: used for metrics and thresholds);
* one tick drawn uniformly from the day's evaluated ticks (the stream scores every active minute,
  so the model must also see partial days: mornings with little of today in the windows).

The uniform draw is the tick with the smallest hash of (seed, user, tick), so it does not depend
on batch boundaries or on how users are sharded over processes. Users are independent in the
detector (per-user windows and policy state), so the log is split by user over worker processes;
each worker decodes only its users' lines with the stream's decoder.

With a scorer, the same run produces the alerts the offline scorer would publish (``riskstream
score``), which the evaluation needs for stream-level figures.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from stream.core.alerts import KIND_ML_RISK, Alert
from stream.core.events import Event, decode_message
from stream.core.features import N_FEATURES, RuleArrays
from stream.core.policy import PolicyConfig
from stream.core.windows import Snapshots
from stream.logs import line_blocks, open_log
from stream.offline import Summary, build_detector, run_detector

ROW_DAY_END: Final = 0
ROW_RANDOM: Final = 1
_USER_KEY: Final = b'"user_id":"'


@dataclass
class Rows:
    """Sampled feature rows; ``kind`` is ROW_DAY_END or ROW_RANDOM."""

    user_id: NDArray[np.str_]
    tick_end_ms: NDArray[np.int64]
    local_day: NDArray[np.int64]
    history_days: NDArray[np.int64]
    kind: NDArray[np.int64]
    x: NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.tick_end_ms)

    def select(self, mask: NDArray[Any]) -> Rows:
        """The rows picked by a boolean mask or an index array."""
        return Rows(self.user_id[mask], self.tick_end_ms[mask], self.local_day[mask],
                    self.history_days[mask], self.kind[mask], self.x[mask])

    @staticmethod
    def concat(parts: Sequence[Rows]) -> Rows:
        return Rows(
            np.concatenate([p.user_id for p in parts]) if parts else np.zeros(0, dtype=str),
            np.concatenate([p.tick_end_ms for p in parts]) if parts else np.zeros(0, dtype=np.int64),
            np.concatenate([p.local_day for p in parts]) if parts else np.zeros(0, dtype=np.int64),
            np.concatenate([p.history_days for p in parts]) if parts else np.zeros(0, dtype=np.int64),
            np.concatenate([p.kind for p in parts]) if parts else np.zeros(0, dtype=np.int64),
            np.concatenate([p.x for p in parts]) if parts else np.zeros((0, N_FEATURES), dtype=np.float32),
        )

    def sorted(self) -> Rows:
        """Canonical row order (user, day, kind): results never depend on sharding."""
        order = np.lexsort((self.kind, self.local_day, self.user_id))
        return self.select(order)


@dataclass
class UserSpan:
    """Per user: first tick scored by the ML layer (history >= min days) and last evaluated tick."""

    first_eligible_ms: dict[str, int] = field(default_factory=dict)
    last_tick_ms: dict[str, int] = field(default_factory=dict)
    first_tick_ms: dict[str, int] = field(default_factory=dict)


@dataclass
class ShardResult:
    rows: Rows
    span: UserSpan
    alerts: list[Alert]
    rule_alerts: Counter[str]
    events: int
    invalid: int
    seconds: float


class _DayTap:
    """The detector tap: keeps the day-end row and one uniformly drawn row per user-day."""

    def __init__(self, seed: int, min_history_days: int) -> None:
        self.seed = seed
        self.min_history = min_history_days
        self.last: dict[tuple[str, int], tuple[int, int, NDArray[np.float32]]] = {}
        self.pick: dict[tuple[str, int], tuple[int, int, int, NDArray[np.float32]]] = {}
        self.span = UserSpan()
        self._salt = str(seed).encode()

    def __call__(self, snaps: Snapshots, x: NDArray[np.float32], rules: RuleArrays) -> None:
        days = rules.local_day.tolist()
        hist = rules.history_days.tolist()
        span = self.span
        for i, (uid, tick) in enumerate(zip(snaps.user_ids, snaps.tick_end.tolist())):
            day = days[i]
            key = (uid, day)
            prev = self.last.get(key)
            if prev is None or tick > prev[0]:
                self.last[key] = (tick, hist[i], x[i].copy())
            h = zlib.crc32(b"%s:%s:%d" % (self._salt, uid.encode(), tick))
            cur = self.pick.get(key)
            if cur is None or h < cur[0]:
                self.pick[key] = (h, tick, hist[i], x[i].copy())
            if uid not in span.first_tick_ms or tick < span.first_tick_ms[uid]:
                span.first_tick_ms[uid] = tick
            if hist[i] >= self.min_history and (uid not in span.first_eligible_ms or tick < span.first_eligible_ms[uid]):
                span.first_eligible_ms[uid] = tick
            if tick > span.last_tick_ms.get(uid, -1):
                span.last_tick_ms[uid] = tick

    def rows(self) -> Rows:
        uid: list[str] = []
        tick: list[int] = []
        day: list[int] = []
        hist: list[int] = []
        kind: list[int] = []
        xs: list[NDArray[np.float32]] = []
        for (u, d), (t, h, x) in self.last.items():
            uid.append(u); tick.append(t); day.append(d); hist.append(h); kind.append(ROW_DAY_END); xs.append(x)  # noqa: E702
        for (u, d), (_, t, h, x) in self.pick.items():
            uid.append(u); tick.append(t); day.append(d); hist.append(h); kind.append(ROW_RANDOM); xs.append(x)  # noqa: E702
        return Rows(
            np.array(uid, dtype=str), np.array(tick, dtype=np.int64), np.array(day, dtype=np.int64),
            np.array(hist, dtype=np.int64), np.array(kind, dtype=np.int64),
            np.stack(xs).astype(np.float32) if xs else np.zeros((0, N_FEATURES), dtype=np.float32),
        )


def shard_of(user_id: bytes, n_shards: int) -> int:
    return zlib.crc32(user_id) % n_shards


def _user_of(line: bytes) -> bytes | None:
    """The raw user_id of a line in encode_event's layout, or None (then the line is decoded)."""
    k = line.find(_USER_KEY)
    if k < 0:
        return None
    k += len(_USER_KEY)
    e = line.find(b'"', k)
    if e < 0 or b"\\" in line[k:e]:
        return None
    return line[k:e]


def read_shard(path: str | Path, shard: int, n_shards: int, summary: Summary,
               now_ms: int | None = None) -> list[Event]:
    """Decode the events of the users in one shard (all events when ``n_shards`` is 1).

    Lines are pre-filtered on the raw ``"user_id":"…"`` bytes; a line where that is not found
    (another producer's key order or spacing) is decoded in full and filtered on the decoded id.
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    events: list[Event] = []
    mine: dict[bytes, bool] = {}
    with open_log(path) as f:
        for lines in line_blocks(f, 1 << 24):
            for line in lines:
                if n_shards > 1:
                    uid = _user_of(line)
                    if uid is not None:
                        ok = mine.get(uid)
                        if ok is None:
                            ok = mine[uid] = shard_of(uid, n_shards) == shard
                        if not ok:
                            continue
                line = line.strip()
                if not line:
                    continue
                summary.lines += 1
                good, bad = decode_message(line, topic_type=None, key=None, now_ms=now)
                for ev in good:
                    if n_shards == 1 or shard_of(ev.user_id.encode(), n_shards) == shard:
                        events.append(ev)
                for r in bad:
                    if n_shards == 1 or shard == 0:
                        summary.invalid[str(r.reason)] += 1
    return events


def run_shard(path: str, shard: int, n_shards: int, *, seed: int, policy: PolicyConfig,
              model_path: str | None) -> ShardResult:
    """Run the detector over one shard of users and return its sampled rows (and alerts)."""
    from stream.core.scoring import load_scorer

    t0 = time.perf_counter()
    summary = Summary()
    events = read_shard(path, shard, n_shards, summary)
    n_events = len(events)
    scorer = None
    if model_path is not None:
        scorer = load_scorer(model_path)
    detector, _ = build_detector(policy, scorer)
    tap = _DayTap(seed, detector.policy.min_history_days())
    detector.tap = tap
    alerts: list[Alert] = []
    rule_alerts: Counter[str] = Counter()

    def emit(a: Alert) -> None:
        # Only ml_risk alerts travel back whole; rule alerts (many for minors) are counted.
        if a.kind == KIND_ML_RISK:
            alerts.append(a)
        else:
            rule_alerts[f"{a.kind}/{a.level}"] += 1

    run_detector(events, detector, emit, summary)
    del events
    return ShardResult(tap.rows(), tap.span, alerts, rule_alerts, n_events,
                       sum(summary.invalid.values()), time.perf_counter() - t0)


@dataclass
class Extract:
    rows: Rows
    span: UserSpan
    alerts: list[Alert]  # ml_risk alerts only, ordered by (user, time)
    rule_alerts: Counter[str]
    events: int
    invalid: int
    seconds: float


def extract(path: str | Path, *, seed: int = 0, policy: PolicyConfig, model_path: str | Path | None = None,
            workers: int | None = None) -> Extract:
    """Run the detector over a whole log, split by user over ``workers`` processes."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"event log {p} does not exist")
    n = max(1, workers if workers is not None else min(2, os.cpu_count() or 1))
    t0 = time.perf_counter()
    mp = None if model_path is None else os.fspath(model_path)
    if n == 1:
        results = [run_shard(os.fspath(p), 0, 1, seed=seed, policy=policy, model_path=mp)]
    else:
        # spawn, not fork: the parent may already run ONNX Runtime / OpenMP threads.
        with ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn")) as ex:
            futs = [ex.submit(run_shard, os.fspath(p), i, n, seed=seed, policy=policy, model_path=mp)
                    for i in range(n)]
            results = [f.result() for f in futs]
    span = UserSpan()
    alerts: list[Alert] = []
    rule_alerts: Counter[str] = Counter()
    for r in results:
        rule_alerts.update(r.rule_alerts)
        span.first_eligible_ms.update(r.span.first_eligible_ms)
        span.last_tick_ms.update(r.span.last_tick_ms)
        span.first_tick_ms.update(r.span.first_tick_ms)
        alerts.extend(r.alerts)
    alerts.sort(key=lambda a: (a.user_id, a.event_time_ms, a.kind, a.level))
    return Extract(
        rows=Rows.concat([r.rows for r in results]).sorted(),
        span=span, alerts=alerts, rule_alerts=rule_alerts,
        events=sum(r.events for r in results), invalid=sum(r.invalid for r in results),
        seconds=time.perf_counter() - t0,
    )
