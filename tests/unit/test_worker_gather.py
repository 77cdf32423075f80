"""The worker's batching: a batch is what is queued now when live, full batches when behind."""

from __future__ import annotations

import time

from stream.settings import load_settings
from stream.live.worker import BACKLOG_BATCHES, Engine


def engine(backlog: int, batch_size: int = 10, wait_s: float = 60.0) -> Engine:
    # no Faust app, pipeline or metrics: a test sets what it uses
    e = Engine(load_settings(batch_size=batch_size, batch_wait_s=wait_s), app=None, metrics=None,  # type: ignore[arg-type]
               link=None)  # type: ignore[arg-type]
    e._backlog = lambda: backlog  # type: ignore[method-assign]
    return e


def feed(e: Engine, items: list[int], more_after: bool = False) -> list[list[int]]:
    """Add items as Faust delivers them (more queued until the last); the batches that came out."""
    out = []
    for i, x in enumerate(items):
        out += e.add([x], more=more_after or i < len(items) - 1)
    return out


def test_live_a_batch_is_what_was_queued():
    e = engine(backlog=0)
    assert feed(e, [1, 2, 3]) == [[1, 2, 3]]
    assert feed(e, [4]) == [[4]]


def test_a_batch_never_exceeds_the_batch_size():
    e = engine(backlog=0, batch_size=4)
    assert feed(e, list(range(10))) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_behind_queue_gaps_do_not_cut_batches_short():
    e = engine(backlog=BACKLOG_BATCHES * 10)
    assert feed(e, [1, 2, 3]) == [] and feed(e, [4, 5, 6, 7]) == []
    assert feed(e, [8, 9, 10]) == [list(range(1, 11))]
    assert feed(e, [11]) == []


def test_behind_a_batch_never_waits_longer_than_the_batch_wait():
    e = engine(backlog=10**6, wait_s=0.05)
    assert feed(e, [1]) == []
    time.sleep(0.06)
    assert feed(e, [2]) == [[1, 2]]


class _Link:
    def __init__(self) -> None:
        self.steps: list = []

    async def connect(self) -> None:
        pass

    def step(self, step):  # type: ignore[no-untyped-def]
        import asyncio

        from stream.live.protocol import Report
        self.steps.append(step)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(Report())
        return fut


class _Aiokafka:
    def __init__(self, polled_ms: dict) -> None:
        self.polled_ms = polled_ms

    def last_poll_timestamp(self, tp):  # type: ignore[no-untyped-def]
        return self.polled_ms.get((tp.topic, tp.partition))


class _Consumer:
    """Faust's aiokafka consumer as the engine sees it: highwaters, and the thread's consumer."""

    def __init__(self, hw: dict, polled_ms: dict) -> None:
        self.hw = hw
        aio = _Aiokafka(polled_ms)
        self._thread = type("T", (), {"_ensure_consumer": lambda _self: aio})()

    def highwater(self, tp):  # type: ignore[no-untyped-def]
        return self.hw[(tp.topic, tp.partition)]


def test_an_input_whose_leader_stopped_answering_fetches_is_never_idle():
    """A hung leader leaves the last highwater in place: caught up by that, but not idle."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from stream.metrics import Metrics
    from stream.live.worker import InputProgress

    e = engine(backlog=0)
    e.s = load_settings(idle_ms=0)
    e.inputs = {e.s.clicks_topic: "click", e.s.views_topic: "view"}
    now_ms = int(time.time() * 1000)
    hw = {(e.s.clicks_topic, 0): 10, (e.s.views_topic, 0): 5}
    polled = {(e.s.clicks_topic, 0): now_ms - 100, (e.s.views_topic, 0): now_ms - 60_000}  # views: hung
    e.app = type("App", (), {"consumer": _Consumer(hw, polled)})()
    e.tps = {(e.s.clicks_topic, 0): InputProgress(last_offset=9, last_seen=0.0),
             (e.s.views_topic, 0): InputProgress(last_offset=4, last_seen=0.0)}
    e.link, e.metrics = _Link(), Metrics(CollectorRegistry())
    asyncio.run(e.on_timer())
    (step,) = e.link.steps
    assert step.idle == {(0, "click"): True, (0, "view"): False}


def test_steps_carry_the_generation_of_the_assignment_and_skip_revoked_partitions():
    """The generation fences the pipeline's state writes (docs/state-layout.md §2); a message of a
    partition revoked in the meantime (the agent held it across the rebalance) is not handed over."""
    import asyncio
    from collections import defaultdict

    from faust.types import TP
    from prometheus_client import CollectorRegistry

    from stream.live.worker import InputProgress
    from stream.metrics import Metrics

    e = engine(backlog=0)
    e.inputs = {e.s.clicks_topic: "click", e.s.views_topic: "view"}
    e.app = type("App", (), {"consumer_generation_id": 7})()
    e.link, e.metrics, e.tps = _Link(), Metrics(CollectorRegistry()), defaultdict(InputProgress)
    e._unidle = lambda partitions: {}  # type: ignore[method-assign]
    e._commit_floor = dict  # type: ignore[method-assign]

    def fe(p: int, off: int) -> object:
        msg = type("M", (), {"topic": e.s.clicks_topic, "partition": p, "offset": off, "key": b"u",
                             "value": b"{}", "time_in": None})()
        return type("E", (), {"message": msg})()

    async def run() -> None:
        await e.submit([fe(0, 1)])
        e.on_assigned({TP(e.s.clicks_topic, 0), TP(e.s.views_topic, 0), TP("other", 1)})
        await e.submit([fe(0, 2)])
        e.link.drop = lambda parts: asyncio.sleep(0)  # type: ignore[attr-defined]
        await e.on_revoked({TP(e.s.clicks_topic, 1), TP(e.s.views_topic, 1)})
        await e.submit([fe(1, 3), fe(0, 4)])  # partition 1 was revoked: its message stays out
        e.app.consumer_generation_id = 9
        e.on_assigned({TP(e.s.clicks_topic, 1)})
        await e.submit([fe(1, 5)])
        e.app.consumer_generation_id = -1  # reset by a failed heartbeat: the last known one stays
        e.on_assigned({TP(e.s.clicks_topic, 1)})
        await e.submit([fe(1, 6)])

    asyncio.run(run())
    got = [(s.generation, [(m[1], m[2]) for m in s.messages]) for s in e.link.steps]
    assert got == [(0, [(0, 1)]), (7, [(0, 2)]), (7, [(0, 4)]), (9, [(1, 5)]), (9, [(1, 6)])]


def test_messages_received_together_are_cut_into_full_batches_and_the_rest_waits_when_behind():
    e = engine(backlog=BACKLOG_BATCHES * 4, batch_size=4)
    assert e.add(list(range(10)), more=False) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert e.add([10, 11], more=False) == [[8, 9, 10, 11]]
    live = engine(backlog=0, batch_size=4)
    assert live.add(list(range(6)), more=False) == [[0, 1, 2, 3], [4, 5]]
    assert live.add([6], more=True) == [] and live.add([], more=False) == [[6]]


def test_messages_fetched_before_a_rebalance_are_not_handed_over():
    """Faust stamps each message with the consumer generation it was fetched in; while a rebalance
    runs its flow control is off. Neither kind of message reaches a batch (nor is acked)."""
    e = engine(backlog=0)
    flow = type("Flow", (), {"active": True, "is_active": lambda self: self.active})()
    e.app = type("App", (), {"consumer_generation_id": 3, "flow_control": flow})()

    def fe(gen: int, n: int) -> object:
        return type("E", (), {"message": type("M", (), {"generation_id": gen})(), "n": n})()

    got = e.receive([fe(2, 0), fe(3, 1), fe(2, 2), fe(3, 3)], more=False)
    assert [[x.n for x in b] for b in got] == [[1, 3]]
    flow.active = False
    assert e.receive([fe(3, 4)], more=False) == [] and e._gathered == []


def test_batches_ready_together_are_all_handed_over_before_the_idle_timer_can_flush():
    """The agent takes everything queued at once and may get several full batches; it awaits
    earlier steps only after handing all of them over. Otherwise the idle timer, flushing the batch
    being gathered while the agent waits, would hand later offsets to the pipeline first."""
    import asyncio
    from collections import defaultdict

    from prometheus_client import CollectorRegistry

    from stream.live.worker import STEPS_AHEAD, InputProgress
    from stream.metrics import Metrics

    e = engine(backlog=10**6, batch_size=2)  # behind: the rest waits for a full batch
    e.inputs = {e.s.clicks_topic: "click", e.s.views_topic: "view"}
    flow = type("Flow", (), {"is_active": lambda self: True})()
    e.app = type("App", (), {"consumer_generation_id": 1, "flow_control": flow})()
    e.metrics, e.tps = Metrics(CollectorRegistry()), defaultdict(InputProgress)
    e._unidle = lambda partitions: {}  # type: ignore[method-assign]
    e._commit_floor = dict  # type: ignore[method-assign]
    handed: list[int] = []

    class Stalled:  # a pipeline whose steps do not finish (Redis down, say)
        def step(self, step):  # type: ignore[no-untyped-def]
            handed.extend(m[2] for m in step.messages)
            return asyncio.get_running_loop().create_future()

    e.link = Stalled()  # type: ignore[assignment]

    def fe(off: int) -> object:
        msg = type("M", (), {"topic": e.s.clicks_topic, "partition": 0, "offset": off, "key": b"u",
                             "value": b"{}", "time_in": None, "generation_id": 1})()
        return type("E", (), {"message": msg})()

    n = 2 * (STEPS_AHEAD + 2) + 1  # more full batches than steps ahead, and one message over

    async def run() -> None:
        q: asyncio.Queue = asyncio.Queue()
        for off in range(n):
            q.put_nowait(fe(off))
        agent = asyncio.ensure_future(e.consume(q))
        await asyncio.sleep(0.05)  # the agent now waits for its first step
        assert handed == list(range(n - 1)) and [x.message.offset for x in e._gathered] == [n - 1]
        ready, e._gathered = e._gathered, []  # what the idle timer does with an old gathered batch
        e.submit(ready)
        agent.cancel()

    asyncio.run(run())
    assert handed == list(range(n))
