"""Several pipeline processes (RISKSTREAM_PIPELINES): a step split per child by partition, the
children's reports merged, the setting and its default, the children's process metrics; and that
pipelines fed the split steps decide exactly what one pipeline fed the whole steps decides."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter

import orjson
import pytest
from prometheus_client import CollectorRegistry

from stream.core.detector import Detector
from stream.core.events import encode_event
from stream.core.policy import AlertPolicy, load_policy_config
from stream.core.windows import MemoryWindowStore
from stream.errors import ConfigError, PipelineDiedError
from stream.live.link import _all_of, merge_reports, shard_of, split_drop, split_step
from stream.live.pipeline import Pipeline
from stream.live.protocol import (
    BufferState,
    Drop,
    MsgId,
    RawMessage,
    Report,
    Step,
    TopicPartition,
)
from stream.metrics import Metrics
from stream.settings import (
    MAX_DEFAULT_PIPELINES,
    available_cores,
    default_pipelines,
    load_settings,
)
from tests.eventgen import at, ev
from tests.unit.test_pipeline import FakeProducer

C, V = "t.events.clicks", "t.events.views"


def _msg(topic: str, p: int, off: int) -> RawMessage:
    return RawMessage(topic, p, off, f"u{p}".encode(), b"{}")


def test_a_partition_belongs_to_one_child_whatever_the_topic():
    assert [shard_of(p, 3) for p in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert {shard_of(p, 1) for p in range(10)} == {0}


def test_a_step_is_split_per_child_with_its_own_messages_flags_and_floor_in_order():
    msgs = [_msg(C, 0, 5), _msg(V, 1, 3), _msg(C, 2, 9), _msg(V, 0, 4), _msg(C, 1, 6), _msg(C, 0, 6)]
    idle = {(0, "view"): False, (1, "click"): True, (2, "click"): False}
    floor = {TopicPartition(C, 0): 5, TopicPartition(V, 1): 3, TopicPartition(C, 2): 1}
    step = Step(msgs, [0, 1, 2], idle, floor, 12.5, 99, generation=7)
    parts = split_step(step, 2)
    assert sorted(parts) == [0, 1]
    a, b = parts[0], parts[1]
    assert a.messages == [_msg(C, 0, 5), _msg(C, 2, 9), _msg(V, 0, 4), _msg(C, 0, 6)]  # arrival order kept
    assert b.messages == [_msg(V, 1, 3), _msg(C, 1, 6)]
    assert (a.partitions, b.partitions) == ([0, 2], [1])
    assert a.idle == {(0, "view"): False, (2, "click"): False} and b.idle == {(1, "click"): True}
    assert a.floor == {TopicPartition(C, 0): 5, TopicPartition(C, 2): 1} and b.floor == {TopicPartition(V, 1): 3}
    for part in (a, b):
        assert (part.received_at, part.now_ms, part.generation) == (12.5, 99, 7)
    # nothing lost, nothing doubled
    assert sorted(a.messages + b.messages) == sorted(msgs)


def test_only_children_with_something_to_do_get_a_step_but_an_empty_step_goes_to_all():
    step = Step([_msg(C, 3, 0)], [3], {}, {TopicPartition(C, 0): 1}, 0.0, 1)
    assert sorted(split_step(step, 3)) == [0]  # only the owner of partition 3; 0's floor waits for its next step
    empty = Step([], [], {}, {TopicPartition(C, 1): 4}, 0.0, 1)
    parts = split_step(empty, 2)
    assert sorted(parts) == [0, 1] and parts[1].floor == {TopicPartition(C, 1): 4} and parts[0].floor == {}
    assert split_step(step, 1) == {0: step}  # one child: the step as it is


def test_a_drop_goes_to_every_child_with_its_own_partitions():
    assert split_drop([0, 1, 2, 5], 2) == {0: Drop([0, 2]), 1: Drop([1, 5])}
    assert split_drop([], 2) == {0: Drop([]), 1: Drop([])}


def test_reports_merge_done_buffers_watermarks_and_counters():
    a = Report(done=[MsgId(C, 0, 1)], buffers={0: BufferState(False, [], 3)}, watermarks={0: 100}, applied=5,
               late=1, duplicates=2, dlq=Counter({"malformed_json": 1}), alerts=Counter({("rule:x", "high"): 2}),
               latencies=[0.1], seconds=0.02, redis_retries=1, forced_releases=3, dlq_failed=0,
               model_version="m1", model_reloads=1)
    b = Report(done=[MsgId(V, 1, 4), MsgId(C, 1, 2)], buffers={1: BufferState(True, ["view"], 9)},
               watermarks={1: 90}, applied=7, late=0, duplicates=1, dlq=Counter({"malformed_json": 2, "schema": 1}),
               alerts=Counter({("rule:x", "high"): 1, ("ml", "elevated"): 1}), latencies=[0.2, 0.3],
               seconds=0.05, redis_retries=0, forced_releases=1, dlq_failed=2, model_version="m1", model_reloads=1)
    m = merge_reports([a, b])
    assert m.done == [MsgId(C, 0, 1), MsgId(V, 1, 4), MsgId(C, 1, 2)]
    assert m.buffers == {0: BufferState(False, [], 3), 1: BufferState(True, ["view"], 9)}
    assert m.watermarks == {0: 100, 1: 90}
    assert (m.applied, m.late, m.duplicates, m.redis_retries, m.forced_releases, m.dlq_failed) == (12, 1, 3, 1, 4, 2)
    assert m.dlq == Counter({"malformed_json": 3, "schema": 1})
    assert m.alerts == Counter({("rule:x", "high"): 3, ("ml", "elevated"): 1})
    assert sorted(m.latencies) == [0.1, 0.2, 0.3]
    assert m.seconds == 0.05  # the parts ran at the same time: the step took the longest one's
    assert (m.model_version, m.model_reloads) == ("m1", 1)  # both processes reloaded the one swap
    assert merge_reports([a]) is a
    assert merge_reports([Report(model_version=None), Report(model_version="m2")]).model_version == "m2"


def test_a_model_swap_counts_once_and_the_child_that_reloaded_most_names_the_model():
    # reload counts are cumulative per process; each child reloads at its own next step
    ahead, behind = Report(model_version="m2", model_reloads=3), Report(model_version="m1", model_reloads=2)
    for parts in ([ahead, behind], [behind, ahead]):
        assert (merge_reports(parts).model_version, merge_reports(parts).model_reloads) == ("m2", 3)
    assert (merge_reports([behind, Report(model_version="m1", model_reloads=2)]).model_reloads) == 2


def test_the_merged_future_waits_for_every_part_and_fails_with_the_first_error():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        f1, f2 = loop.create_future(), loop.create_future()
        out = _all_of([f1, f2], lambda rs: sum(rs))
        f2.set_result(2)
        await asyncio.sleep(0)
        assert not out.done()  # child 1 answered, child 0 not yet
        f1.set_result(1)
        assert await out == 3
        g1, g2 = loop.create_future(), loop.create_future()
        out = _all_of([g1, g2], lambda rs: rs)
        g2.set_exception(PipelineDiedError("the pipeline process exited (code -9; child 1 of 2)"))
        with pytest.raises(PipelineDiedError, match="child 1 of 2"):
            await out  # at once: the worker exits without waiting for the other child
        g1.set_result(None)  # a late answer changes nothing
        await asyncio.sleep(0)
        one = loop.create_future()
        assert _all_of([one], lambda rs: rs) is one

    asyncio.run(main())


# -- sharded pipelines decide as one does --------------------------------------------------------------
def _pipeline() -> tuple[Pipeline, FakeProducer]:
    s = load_settings(namespace="t", lateness_ms=60_000)
    producer = FakeProducer()
    detector = Detector(MemoryWindowStore(keep_outbox=False), AlertPolicy(load_policy_config(None)))
    return Pipeline(s, detector, producer), producer  # type: ignore[arg-type]


def _steps(seed: int, partitions: int) -> list[Step]:
    """Heavy evening use of 12 users (half of them under 13) over 6 hours, each user's events in its partition (as the
    producers' key partitioner puts them), in micro-batches of random size, with idle ticks."""
    rng = random.Random(seed)
    users = [f"user{i}" for i in range(12)]
    part_of = {u: i % partitions for i, u in enumerate(users)}
    events = []
    for u in users:
        t = at(0, 18) + rng.randrange(600_000)
        while t < at(0, 24):
            kind = rng.choice(("click", "view", "view"))
            events.append(ev(u, t, kind, dwell_ms=rng.randrange(5_000, 90_000), category="social",
                             age_band="u13" if int(u[4:]) % 2 else None))  # children: curfew alerts
            t += rng.randrange(5_000, 120_000)
    events.sort(key=lambda e: e.ts_ms)
    offsets: Counter[tuple[str, int]] = Counter()
    msgs = []
    for e in events:
        topic, p = (C if e.type == "click" else V), part_of[e.user_id]
        msgs.append(RawMessage(topic, p, offsets[(topic, p)], e.user_id.encode(), encode_event(e)))
        offsets[(topic, p)] += 1
    steps, i, now = [], 0, at(1)
    while i < len(msgs):
        n = rng.randrange(1, 200)
        batch = msgs[i:i + n]
        i += n
        steps.append(Step(batch, sorted({m.partition for m in batch}), {}, {}, 0.0, now))
    every = {(p, k): True for p in range(partitions) for k in ("click", "view")}
    steps.append(Step([], [], every, {}, 0.0, now))  # all inputs idle: the tail is decided
    return steps


@pytest.mark.parametrize("n", [2, 3])
def test_pipelines_fed_the_split_steps_decide_what_one_pipeline_decides(n):
    one, one_out = _pipeline()
    shards = [_pipeline() for _ in range(n)]
    whole, merged = [], []
    for step in _steps(7, partitions=6):
        whole.append(one.step(step))
        parts = split_step(step, n)
        merged.append(merge_reports([shards[c][0].step(part) for c, part in parts.items()]))
    assert sum(r.applied for r in whole) > 1000
    for w, m in zip(whole, merged):
        assert sorted(w.done) == sorted(m.done)
        assert (w.applied, w.late, w.duplicates, w.alerts, w.watermarks) == (m.applied, m.late, m.duplicates,
                                                                            m.alerts, m.watermarks)
        assert w.buffers == m.buffers
    alerts = sorted(v for t, _, v in one_out.records if t.endswith("risk.alerts"))
    assert alerts, "the scenario should alert"
    sharded = sorted(v for _, out in shards for t, _, v in out.records if t.endswith("risk.alerts"))
    assert [orjson.loads(a)["alert_id"] for a in alerts] == [orjson.loads(a)["alert_id"] for a in sharded]
    # a user lives in one child only
    seen = [set(s.detector.store.users()) for s, _ in shards]  # type: ignore[attr-defined]
    assert all(not (seen[i] & seen[j]) for i in range(n) for j in range(i + 1, n))


# -- the setting ---------------------------------------------------------------------------------------
def test_the_default_is_one_pipeline_per_core_beyond_the_faust_process():
    assert [default_pipelines(c) for c in (1, 2, 3, 4, 8, 64)] == [1, 1, 2, 3, 7, MAX_DEFAULT_PIPELINES]
    assert load_settings().pipelines == default_pipelines(available_cores())


def test_the_cores_are_capped_by_a_container_cpu_limit(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("max 100000\n")  # cgroup v2, no limit
    assert available_cores(tmp_path) == affinity
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: 2 cores' worth, rounded up
    assert available_cores(tmp_path) == min(affinity, 2)
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert available_cores(tmp_path) == 1
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")  # cgroup v1: 1 CPU
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cores(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1, no limit
    assert available_cores(tmp_path) == affinity
    assert available_cores(tmp_path / "absent") == affinity


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_pipelines_setting_is_one_config_error(monkeypatch, value):
    monkeypatch.setenv("RISKSTREAM_PIPELINES", value)
    with pytest.raises(ConfigError, match=r"RISKSTREAM_PIPELINES"):
        load_settings()


def test_several_pipelines_need_the_pipeline_in_a_process(monkeypatch):
    monkeypatch.setenv("RISKSTREAM_DETECTOR_PROCESS", "false")
    assert load_settings(pipelines=1).pipelines == 1
    load_settings()  # the default (from the core count) is not an error: one thread, whatever it says
    with pytest.raises(ConfigError, match="RISKSTREAM_PIPELINES=3 needs RISKSTREAM_DETECTOR_PROCESS=true"):
        load_settings(pipelines=3)


# -- the children's process metrics --------------------------------------------------------------------
def _sample(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name)


def test_process_metrics_of_several_children_keep_their_names_and_add_up():
    me = os.getpid()
    one, two = CollectorRegistry(), CollectorRegistry()
    Metrics(one, child_pids=[lambda: me])
    Metrics(two, child_pids=[lambda: me, lambda: me, lambda: None])  # the third cannot be read: adds nothing
    rss1 = _sample(one, "riskstream_pipeline_process_resident_memory_bytes")
    rss2 = _sample(two, "riskstream_pipeline_process_resident_memory_bytes")
    assert rss1 is not None and rss2 is not None and 1.5 * rss1 < rss2 < 2.5 * rss1
    cpu1 = _sample(one, "riskstream_pipeline_process_cpu_seconds_total")
    cpu2 = _sample(two, "riskstream_pipeline_process_cpu_seconds_total")
    assert cpu1 is not None and cpu2 is not None and cpu2 >= 2 * cpu1 - 0.05
    assert _sample(two, "riskstream_pipeline_process_start_time_seconds") == \
        _sample(one, "riskstream_pipeline_process_start_time_seconds")
    assert _sample(two, "riskstream_pipeline_process_max_fds") == _sample(one, "riskstream_pipeline_process_max_fds")
    none = CollectorRegistry()
    Metrics(none)
    assert _sample(none, "riskstream_pipeline_process_resident_memory_bytes") is None
