"""Embedded offline mode: the whole detector in-process over an event log (``riskstream score``).

No Kafka, no Redis: the memory window store, the same window kernel, features, model and policy as
the live worker. The log may be unsorted: it is read whole, decoded and put in canonical order, and
fed to the detector in chunks (no reorder buffer: nothing is late in a sorted log), so alerts equal
what the live pipeline publishes for a log whose disorder per input topic stays within the lateness
bound (docs/semantics.md §10, §11).
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tqdm import tqdm

from stream.core.alerts import Alert, alert_to_json
from stream.core.detector import Detector, Stats
from stream.core.events import Event, EventLists, Reason, decode_message_into
from stream.core.levels import LevelsRecord, LevelsUpdate, levels_to_json
from stream.core.ordering import canonical_order, tick_ceil
from stream.core.policy import AlertPolicy, PolicyConfig
from stream.core.scoring import Scorer
from stream.core.windows import EventColumns, MemoryWindowStore
from stream.logs import iter_lines, open_log

__all__ = ["CHUNK_EVENTS", "Summary", "build_detector", "decode_log", "final_levels", "run_detector", "score_log"]

CHUNK_EVENTS = 20_000


@dataclass(slots=True)
class Summary:
    lines: int = 0
    events: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    users: int = 0
    stats: Stats = field(default_factory=Stats)
    seconds: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def lines_out(self) -> list[str]:
        out = [
            f"lines: {self.lines}  events: {self.events}  users: {self.users}  "
            f"events/s: {self.events_per_s:,.0f}  ({self.seconds:.2f} s)",
            f"invalid: {sum(self.invalid.values())}"
            + ("  (" + ", ".join(f"{k}={v}" for k, v in sorted(self.invalid.items())) + ")" if self.invalid else ""),
            f"late: {self.stats.late}  evaluations: {self.stats.evaluations}  scored: {self.stats.scored}",
            "alerts: " + (", ".join(f"{k}={v}" for k, v in sorted(self.stats.alerts.items())) or "none"),
        ]
        return out


def decode_log(path: str | Path, summary: Summary, *, now_ms: int | None = None,
               progress: bool = False) -> EventColumns:
    """Decode a log into event columns; invalid lines are counted in ``summary.invalid``."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    events = EventLists()
    invalid = summary.invalid
    lines = 0
    # Decoding allocates millions of small acyclic objects; the cyclic garbage collector would
    # rescan all of them again and again (measured: a third of the decode time). Pause it here,
    # and freeze what survives so later collections skip it.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with open_log(path) as f:
            for line in tqdm(iter_lines(f), desc="decode", unit=" lines", disable=not progress,
                             mininterval=0.5, leave=False):
                lines += 1
                _, bad = decode_message_into(line, topic_type=None, key=None, now_ms=now, out=events)
                for r in bad:
                    invalid[str(r.reason)] += 1
        summary.lines += lines
        cols = EventColumns.from_lists(events)
        del events
    finally:
        if was_enabled:
            gc.enable()
    gc.freeze()
    return cols


def run_detector(events: EventColumns | Sequence[Event], detector: Detector, emit: Callable[[Alert], None],
                 summary: Summary, *, progress: bool = False,
                 emit_levels: Callable[[LevelsUpdate], None] | None = None) -> None:
    """Put events (any order) in canonical order and feed them to the detector; emit every alert.

    A sorted log needs no reorder buffer: each chunk is released with the watermark at the next
    chunk's first event time, and the end of the log drains like an idle partition (the watermark
    moves to the end of the newest event's tick). The determinism tests pin that this equals the
    live path through :class:`ReorderBuffer` for any arrival order within the lateness bound.
    Events travel as columns (:class:`EventColumns`) through the detector's offline fast path.
    ``emit_levels`` gets every ``risk.levels`` write the live worker would make, in order.
    """
    n = len(events)
    if n == 0:
        return
    cols = events if isinstance(events, EventColumns) else EventColumns.from_events(events)
    order = canonical_order(cols.ts, cols.view, cols.event_ids)
    ts = cols.ts
    bar = tqdm(total=n, desc="score", unit=" ev", disable=not progress, mininterval=0.5, leave=False)
    for start in range(0, n, CHUNK_EVENTS):
        stop = min(start + CHUNK_EVENTS, n)
        wm = int(ts[order[stop]]) if stop < n else tick_ceil(int(ts[order[-1]]))
        out, too_late = detector.process_columns(cols.take(order[start:stop]), wm)
        if len(too_late):
            summary.invalid[str(Reason.TOO_LATE)] += len(too_late)
        for a in out.alerts:
            emit(a)
        if emit_levels is not None:
            for lv in out.levels:
                emit_levels(lv)
        detector.commit(out)
        summary.stats.add(out)
        bar.update(stop - start)
    bar.close()


def build_detector(policy_config: PolicyConfig, scorer: Scorer | None) -> tuple[Detector, MemoryWindowStore]:
    policy = AlertPolicy(policy_config, model_thresholds=None if scorer is None else scorer.info.thresholds)
    # Every release is decided and committed before the next and nothing is redelivered: no outbox,
    # and the policy state stays in the detector.
    store = MemoryWindowStore(keep_outbox=False)
    return Detector(store, policy, scorer, resident_policy=True), store


def final_levels(updates: Sequence[LevelsUpdate]) -> dict[str, LevelsRecord]:
    """What a compacted ``risk.levels`` holds after these writes: the latest record per user, none
    for a user whose latest write is a tombstone."""
    last: dict[str, LevelsRecord | None] = {}
    for u in updates:
        last[u.user_id] = u.record
    return {k: v for k, v in last.items() if v is not None}


def score_log(path: str | Path, out: IO[bytes], *, policy_config: PolicyConfig,
              scorer: Scorer | None, progress: bool = False, now_ms: int | None = None,
              levels_out: IO[bytes] | None = None) -> Summary:
    """Score a log offline, writing one alert JSON per line to ``out``; with ``levels_out``, also
    the users' final levels (the risk.levels value per user that has any, sorted by user id)."""
    summary = Summary()
    t0 = time.perf_counter()
    events = decode_log(path, summary, now_ms=now_ms, progress=progress)
    summary.events = len(events)
    summary.stage_s["decode"] = time.perf_counter() - t0
    detector, store = build_detector(policy_config, scorer)

    def emit(a: Alert) -> None:
        out.write(alert_to_json(a))
        out.write(b"\n")

    updates: list[LevelsUpdate] = []
    t1 = time.perf_counter()
    run_detector(events, detector, emit, summary, progress=progress,
                 emit_levels=None if levels_out is None else updates.append)
    if levels_out is not None:
        for _, rec in sorted(final_levels(updates).items()):
            levels_out.write(levels_to_json(rec) or b"")
            levels_out.write(b"\n")
    summary.stage_s["detect"] = time.perf_counter() - t1
    summary.users = len(store)
    summary.seconds = time.perf_counter() - t0
    return summary
