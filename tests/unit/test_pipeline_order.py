"""The live pipeline's ordering guarantees under load (issue #12 items 3-5): the offset fence never
skips an unapplied position, the reorder buffer cap holds, a producer clock ahead of the wall clock
does not make other users late."""

from __future__ import annotations

from typing import Any

from stream.core.detector import Detector
from stream.core.events import encode_event
from stream.core.policy import AlertPolicy, load_policy_config
from stream.core.windows import MemoryWindowStore
from stream.live.pipeline import Pipeline
from stream.live.protocol import Step, TopicPartition
from stream.settings import load_settings
from tests.eventgen import at, ev
from tests.unit.test_pipeline import FakeProducer

NOW = at(30)
BOTH_IDLE = {(0, "click"): True, (0, "view"): True}


def pipeline(**overrides: Any) -> Pipeline:
    s = load_settings(namespace="t", **overrides)
    detector = Detector(MemoryWindowStore(keep_outbox=False), AlertPolicy(load_policy_config(None)))
    return Pipeline(s, detector, FakeProducer())  # type: ignore[arg-type]


def run(p: Pipeline, messages: list, idle: dict | None = None, now_ms: int = NOW) -> Any:
    return p.step(Step(messages, sorted({m[1] for m in messages}), idle or {}, {}, 0.0, now_ms))


def envelope(p: Pipeline, user: str, offset: int, times: list[int], kind: str = "view") -> tuple:
    body = b'{"v":1,"events":[' + b",".join(encode_event(ev(user, t, kind)) for t in times) + b"]}"
    topic = p.s.views_topic if kind == "view" else p.s.clicks_topic
    return (topic, 0, offset, user.encode(), body)


# -- item 3: the offset fence ----------------------------------------------------------------------
def test_more_than_max_fence_offsets_applied_out_of_offset_order_are_never_skipped():
    """D5 through the pipeline: offset 10 holds the newest events, offsets 11-22 older ones (100 s
    of disorder, inside L): 4,800 older positions are applied first; none of offset 10's is then
    a duplicate."""
    p = pipeline()
    t0 = at(1, 9)
    msgs = [envelope(p, "v", 10, [t0 + 100_000 + i for i in range(400)])]
    msgs += [envelope(p, "v", 10 + k, [t0 + i * 20 + k for i in range(400)]) for k in range(1, 13)]
    r1 = run(p, msgs, {(0, "click"): True})  # clicks idle: views alone lead; 100 s < L: all buffered
    r2 = run(p, [], BOTH_IDLE)
    assert not r1.dlq and r1.applied == 0
    assert r2.duplicates == 0 and r2.applied == 5200


def test_the_fence_settles_up_to_the_lowest_unapplied_position():
    """Without a commit (unit tests have no Kafka) the fence still stays small: everything below
    the lowest position not yet applied is settled."""
    p = pipeline(lateness_ms=0)
    t0 = at(1, 9)
    for k in range(60):
        run(p, [envelope(p, "w", k, [t0 + (k * 100 + i) * 100 for i in range(100)])], {(0, "click"): True})
    store = p.detector.store
    frontier, kept = store.table.rows(["w"]).fences[0][f"{p.s.views_topic}:0"]  # type: ignore[attr-defined,index]
    assert len(kept) <= 100 and frontier >= 58 * 1024


def test_a_commit_above_a_waiting_position_does_not_settle_it():
    """A consumer that commits past an un-acked message (faust-streaming #606) must not make the
    fence skip the waiting event: for a topic-partition it received from, the pipeline's floor is
    the lowest position it has not applied, whatever the commit says."""
    p = pipeline()
    t0 = at(1, 9)
    topic = p.s.clicks_topic
    msgs = [(topic, 0, 0, b"x", encode_event(ev("x", t0 + 100_000, "click"))),
            (topic, 0, 1, b"y", encode_event(ev("y", t0, "click"))),
            (topic, 0, 2, b"z", encode_event(ev("z", t0 + 190_000, "click"))),
            (p.s.views_topic, 0, 0, b"w", encode_event(ev("w", t0 + 200_000, "view")))]
    r1 = run(p, msgs)
    assert r1.applied == 1 and (topic, 0, 1) in r1.done  # y released and decided; x waits
    ahead = {TopicPartition(topic, 0): 2}  # "committed" past x
    r2 = p.step(Step([], [0], BOTH_IDLE, ahead, 0.0, NOW))
    assert r2.duplicates == 0 and r2.applied == 3


def test_a_position_waiting_while_too_much_is_applied_above_it_is_forced_out():
    """The fence's hard bound: a partition never has more than buffer_max_events positions applied
    above one still waiting; past that, the waiting one is forced out (counted), so no user's fence
    holds more than that plus one step above its frontier."""
    p = pipeline(buffer_max_events=100, lateness_ms=10_000)
    t0 = at(1, 9)
    view = p.s.views_topic
    msgs = [(view, 0, 0, b"v", encode_event(ev("v", t0 + 100_000, "view")))]  # waits: 100 s ahead of the rest
    msgs += [(view, 0, i, b"v", encode_event(ev("v", t0 + i * 200, "view"))) for i in range(1, 500)]
    r1 = run(p, msgs, {(0, "click"): True})
    assert r1.forced_releases == 0 and r1.applied > 400  # the watermark (99.8 s - L) passed them
    r2 = run(p, [(view, 0, 500, b"v", encode_event(ev("v", t0 + 100_100, "view")))])
    assert r2.forced_releases > 0 and len(p.parts[0].buffer) == 1  # offset 0 (and what precedes it) forced
    r3 = run(p, [(view, 0, 501, b"v", encode_event(ev("v", t0 + 100_200, "view")))], BOTH_IDLE)
    assert r1.applied + r2.applied + r3.applied == 502 and r1.duplicates + r2.duplicates + r3.duplicates == 0
    store = p.detector.store
    frontier, kept = store.table.rows(["v"]).fences[0][f"{view}:0"]  # type: ignore[attr-defined,index]
    assert frontier == 500 * 1024 - 1 and kept == {500 * 1024, 501 * 1024}


# -- item 4: the reorder buffer cap ----------------------------------------------------------------
def click(p: Pipeline, user: str, ts: int, offset: int) -> tuple:
    return (p.s.clicks_topic, 0, offset, user.encode(), encode_event(ev(user, ts, "click")))


def test_a_buffer_over_its_cap_with_nothing_to_pause_forces_its_oldest_events_out():
    """D6: views idle, 300 clicks inside one lateness window against a cap of 100: nothing runs
    ahead, so the pipeline forces the oldest 200 out (applied, counted) and the buffer holds 100."""
    p = pipeline(buffer_max_events=100)
    t0 = at(1, 9)
    r = run(p, [click(p, f"u{i % 7}", t0 + i * 10, i) for i in range(300)], {(0, "view"): True})
    full, behind, size = r.buffers[0]
    assert size == 100 and behind == ["click"]
    assert not full  # nothing to pause: the idle views input holds nothing back
    assert r.forced_releases == 200 and r.applied == 200
    r = run(p, [click(p, "x", t0 + 5, 300)])  # behind the forced watermark: late, not lost
    assert r.late == 1 and r.applied == 1


def test_the_worker_counts_forced_releases():
    from prometheus_client import CollectorRegistry

    from stream.live.protocol import Report
    from stream.live.worker import Engine
    from stream.metrics import Metrics

    e = Engine(load_settings(), app=None, metrics=Metrics(CollectorRegistry()), link=None)  # type: ignore[arg-type]
    e._apply(Report(forced_releases=42))
    assert e.metrics.registry.get_sample_value("riskstream_buffer_forced_releases_total") == 42


# -- item 5: a producer clock ahead of the wall clock ----------------------------------------------
def test_a_producer_clock_ahead_does_not_make_other_users_late_and_its_event_is_applied():
    p = pipeline()
    now = at(30, 12)
    skewed = [click(p, "skewed", now + 4 * 60_000, 0)]  # 4 min ahead: valid (limit 5 min)
    skewed.append((p.s.views_topic, 0, 0, b"skewed", encode_event(ev("skewed", now + 4 * 60_000, "view"))))
    r = run(p, skewed, now_ms=now)
    assert not r.dlq and r.applied == 0
    late = applied = 0
    for i in range(60):  # a minute of other users' on-time clicks and views, one step a second
        t = now + i * 1000
        r = run(p, [click(p, f"user{i}", t, 1 + i), (p.s.views_topic, 0, 1 + i, f"user{i}".encode(),
                                                    encode_event(ev(f"user{i}", t, "view")))], now_ms=t)
        late, applied = late + r.late, applied + r.applied
    assert late == 0
    for k in range(1, 8):  # the clock moves on; inputs idle: the future events are applied, not dropped
        r = run(p, [], BOTH_IDLE, now_ms=now + k * 60_000)
        late, applied = late + r.late, applied + r.applied
    assert late == 0 and applied == 122 and len(p.parts[0].buffer) == 0
