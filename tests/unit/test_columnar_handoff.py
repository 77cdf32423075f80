"""The columnar hand-off (issue #17 item 1, plan steps 1-4) equals the per-event one it replaced, on
random inputs: the columnar reorder buffer releases what the heap releases (same rows, same order,
same lateness, forced releases and watermarks), and the pipeline built on it reports the same done
messages, counters, flow-control state and watermarks, and produces the same alerts, levels and DLQ
records as the previous pipeline (kept as ``tests/unit/reference_pipeline.py``), step by step."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core import ordering
from stream.core.detector import Detector
from stream.core.events import Event
from stream.core.ordering import ColumnReorderBuffer, ReorderBuffer
from stream.core.policy import AlertPolicy, load_policy_config
from stream.core.windows import EventColumns, MemoryWindowStore
from stream.live.pipeline import Pipeline
from stream.live.protocol import Step
from stream.settings import load_settings
from tests.eventgen import at
from tests.unit import reference_pipeline
from tests.unit.test_pipeline import FakeProducer

T0 = at(1, 9)

# -- the reorder buffer ---------------------------------------------------------------------------------
_push = st.tuples(st.sampled_from(("click", "view")),
                  st.lists(st.tuples(st.integers(0, 3), st.integers(-30_000, 30_000), st.integers(0, 4)),
                           min_size=1, max_size=12))
_op = st.one_of(
    st.tuples(st.just("push"), _push),
    st.tuples(st.just("advance"), st.integers(0, 20_000)),
    st.tuples(st.just("idle"), st.tuples(st.sampled_from(("click", "view")), st.booleans())),
    st.tuples(st.just("release"), st.one_of(st.none(), st.integers(-40_000, 40_000))),
    st.tuples(st.just("now"), st.one_of(st.none(), st.integers(-60_000, 60_000))),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_op, max_size=40), lateness=st.sampled_from((0, 5_000, 20_000)),
       cap=st.sampled_from((3, 8, 1000)))
def test_the_column_buffer_releases_what_the_heap_releases(ops: list, lateness: int, cap: int) -> None:
    _same_releases(ops, lateness, cap)


# pushes of few distinct times and ids: equal canonical keys, whose order is the arrival order
_push_ties = st.tuples(st.sampled_from(("click", "view")),
                       st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 1)),
                                min_size=1, max_size=12))
_op_ties = st.one_of(
    st.tuples(st.just("push"), _push_ties),
    st.tuples(st.just("advance"), st.integers(0, 3)),
    st.tuples(st.just("idle"), st.tuples(st.sampled_from(("click", "view")), st.booleans())),
    st.tuples(st.just("release"), st.one_of(st.none(), st.integers(-2, 2))),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.one_of(_op, _op_ties), max_size=40), lateness=st.sampled_from((0, 2, 5_000, 20_000)),
       cap=st.sampled_from((3, 8, 1000)))
def test_the_column_buffer_merging_its_chunks_releases_what_the_heap_releases(ops: list, lateness: int,
                                                                              cap: int) -> None:
    """The same with the buffer merging its waiting chunks whenever more than one waits (in
    production only past 64, which these short runs rarely reach)."""
    before = ordering._MAX_CHUNKS
    ordering._MAX_CHUNKS = 1
    try:
        _same_releases(ops, lateness, cap)
    finally:
        ordering._MAX_CHUNKS = before


def _same_releases(ops: list, lateness: int, cap: int) -> None:
    heap: ReorderBuffer[int] = ReorderBuffer(("click", "view"), lateness_ms=lateness, max_events=cap)
    cols = ColumnReorderBuffer(("click", "view"), lateness_ms=lateness, max_events=cap)
    t = T0
    row = 0
    for op, arg in ops:
        if op == "push":
            kind, spec = arg
            # equal canonical keys (same time, type and id) happen: arrival order must break the tie
            evs = [Event(f"u{u}", t + dt, kind, f"e{e}", "other", 0, None, None, None, None) for u, dt, e in spec]
            metas = list(range(row, row + len(evs)))
            row += len(evs)
            late_heap = heap.push_many(kind, evs, metas)
            late_cols = cols.push(kind, EventColumns.from_events(evs), np.array([metas], np.int64))
            assert late_cols.tolist() == late_heap
        elif op == "advance":
            t += arg
        elif op == "idle":
            heap.set_idle(*arg)
            cols.set_idle(*arg)
        elif op == "now":
            heap.now_ms = cols.now_ms = None if arg is None else t + arg
        else:
            force_to = None if arg is None else t + arg
            out, wm = heap.release(force_to)
            c, meta, wm_c = cols.release(force_to)
            assert wm_c == wm
            assert meta[0].tolist() == [m for _, m in out]
            assert c.ts.tolist() == [e.ts_ms for e, _ in out]
            assert c.user_ids.tolist() == [e.user_id for e, _ in out] and c.event_ids.tolist() == [e.event_id for e, _ in out]
        assert (cols.released_to, cols.forced, len(cols), cols.full) == (heap.released_to, heap.forced, len(heap),
                                                                          heap.full)
        assert cols.watermark() == heap.watermark() and cols.behind() == heap.behind()


# -- the pipeline ----------------------------------------------------------------------------------------
def _pipelines(**overrides: Any) -> tuple[tuple[Pipeline, FakeProducer], tuple[Any, FakeProducer]]:
    cap = overrides.pop("buffer_max_events")
    # a cap below the setting's minimum (100): forced releases and the overtaken bound, with few events
    s = load_settings(namespace="t", **overrides).model_copy(update={"buffer_max_events": cap})
    out = []
    for cls in (Pipeline, reference_pipeline.Pipeline):
        producer = FakeProducer()
        det = Detector(MemoryWindowStore(keep_outbox=False), AlertPolicy(load_policy_config(None)))
        out.append((cls(s, det, producer), producer))
    return out[0], out[1]


def _body(user: str, kind: str, spec: list[tuple[int, int, bool]], envelope: bool, k: int) -> bytes:
    items = []
    for i, (dt, e, bad) in enumerate(spec):
        obj = {"v": 1, "event_id": f"e{e}" if e < 5 else f"m{k}-{i}", "user_id": user, "ts": T0 + dt,
               "type": kind, "category": "social"}
        if kind == "view":
            obj["dwell_ms"] = 20_000
        if bad:
            obj["dwell_ms" if kind == "view" else "ts"] = "x"  # invalid element: the DLQ with its index
        items.append(obj)
    if not envelope:
        return orjson.dumps(items[0])
    return orjson.dumps({"v": 1, "events": items})


_msg = st.tuples(
    st.integers(0, 1),  # partition
    st.sampled_from(("click", "view")),
    st.integers(0, 2),  # user
    st.lists(st.tuples(st.one_of(st.integers(-600_000, 3_600_000),  # event time offset; rarely, far too old
                                 st.integers(-40 * 86_400_000, -30 * 86_400_000)),
                       st.integers(0, 30), st.integers(0, 9).map(lambda b: b == 0)),  # 1 in 10 invalid
             min_size=1, max_size=30),
    st.booleans(),  # an envelope
    st.integers(-3, 1),  # offset step: < 0 seeks back (a redelivery)
)
_step = st.tuples(st.lists(_msg, max_size=12),
                  st.dictionaries(st.tuples(st.integers(0, 1), st.sampled_from(("click", "view"))), st.booleans(),
                                  max_size=4),
                  st.integers(0, 1_200_000))


def _records(producer: FakeProducer) -> list[tuple[str, bytes | None, Any]]:
    out = []
    for topic, key, value in producer.records:
        if value is None:  # a tombstone
            out.append((topic, key, None))
            continue
        rec = orjson.loads(value)
        for k in ("failed_at", "created_at", "emitted_at", "updated_at"):
            rec.pop(k, None)
        out.append((topic, key, rec))
    return out


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_step, min_size=1, max_size=10), lateness=st.sampled_from((0, 60_000, 600_000)),
       cap=st.sampled_from((5, 30, 100_000)))
def test_the_columnar_pipeline_reports_and_produces_what_the_per_event_one_did(steps: list, lateness: int,
                                                                              cap: int) -> None:
    (new, new_prod), (old, old_prod) = _pipelines(lateness_ms=lateness, buffer_max_events=cap)
    offsets = {(p, kind): 0 for p in (0, 1) for kind in ("click", "view")}
    now = T0 + 600_000
    k = 0
    sent: Counter[tuple[str, int, int]] = Counter()
    done: Counter[tuple[str, int, int]] = Counter()
    for msgs, idle, dt in steps:
        now += dt
        raw = []
        for p, kind, u, spec, envelope, jump in msgs:
            off = offsets[(p, kind)] = max(0, offsets[(p, kind)] + jump)
            offsets[(p, kind)] += 1 if jump >= 0 else 0
            topic = new.s.clicks_topic if kind == "click" else new.s.views_topic
            raw.append((topic, p, off, f"u{u}".encode(), _body(f"u{u}", kind, spec, envelope, k)))
            k += 1
        parts = sorted({m[1] for m in raw})
        a = new.step(Step(raw, parts, idle, {}, 0.0, now))
        b = old.step(Step(raw, parts, idle, {}, 0.0, now))
        assert sorted(a.done) == sorted(b.done)
        assert (a.applied, a.late, a.duplicates, a.forced_releases) == (b.applied, b.late, b.duplicates,
                                                                       b.forced_releases)
        assert a.buffers == b.buffers and a.watermarks == b.watermarks and a.dlq == b.dlq
        assert _records(new_prod) == _records(old_prod)
        sent.update((t, p, off) for t, p, off, _, _ in raw)
        done.update(a.done)
    # every message is done exactly once or still in flight (the table of numbered messages), and
    # nothing done stays in the table
    assert sent == done + Counter(m.id for m in new._msgs.values())
