"""The worker acks in offset order per input partition, so Faust never commits past a message that
is not done (faust-streaming #606: Faust 0.15 commits over a single un-acked message at the head
of a partition, and over any number before the partition's first commit)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from stream.live.protocol import Report
from stream.live.worker import Engine
from stream.metrics import Metrics
from stream.settings import load_settings

S = load_settings()
CLICKS, VIEWS = S.clicks_topic, S.views_topic


class Link:
    """Answers each step with the report the test sets."""

    def __init__(self) -> None:
        self.steps: list[asyncio.Future[Report]] = []

    def step(self, step: Any) -> asyncio.Future[Report]:
        fut: asyncio.Future[Report] = asyncio.get_running_loop().create_future()
        self.steps.append(fut)
        return fut


def engine() -> tuple[Engine, Link, list[tuple[str, int, int]]]:
    link = Link()
    app = SimpleNamespace(consumer=SimpleNamespace(_committed_offset={}))
    e = Engine(S, app, Metrics(CollectorRegistry()), link)  # type: ignore[arg-type]
    return e, link, []


def msg(acked: list[tuple[str, int, int]], topic: str, p: int, off: int) -> SimpleNamespace:
    m = SimpleNamespace(topic=topic, partition=p, offset=off, value=b"{}", key=b"u", time_in=None)
    return SimpleNamespace(message=m, ack=lambda: acked.append((topic, p, off)))


async def hand(e: Engine, link: Link, batch: list[SimpleNamespace], done: list[tuple[str, int, int]]) -> None:
    task = e.submit(batch)
    link.steps[-1].set_result(Report(done=done))
    await task


def test_a_done_message_waits_for_the_earlier_ones_of_its_partition():
    async def go() -> None:
        e, link, acked = engine()
        batch = [msg(acked, CLICKS, 0, off) for off in range(3)] + [msg(acked, CLICKS, 1, 7)]
        await hand(e, link, batch, [(CLICKS, 0, 1), (CLICKS, 0, 2), (CLICKS, 1, 7)])
        assert acked == [(CLICKS, 1, 7)]  # partition 1 does not wait for partition 0
        await hand(e, link, [msg(acked, VIEWS, 0, 0)], [(VIEWS, 0, 0), (CLICKS, 0, 0)])
        assert sorted(acked[1:]) == [(CLICKS, 0, 0), (CLICKS, 0, 1), (CLICKS, 0, 2), (VIEWS, 0, 0)]
        assert [a for a in acked if a[:2] == (CLICKS, 0)] == [(CLICKS, 0, 0), (CLICKS, 0, 1), (CLICKS, 0, 2)]
        assert not any(e.unacked.values())

    asyncio.run(go())


def test_revoked_partitions_are_forgotten_and_their_gathered_messages_dropped():
    async def go() -> None:
        e, link, acked = engine()

        async def drop(partitions: list[int]) -> None:
            return None

        e.link.connect = lambda: asyncio.sleep(0)  # type: ignore[attr-defined]
        e.link.drop = drop  # type: ignore[attr-defined]
        await hand(e, link, [msg(acked, CLICKS, 0, 0), msg(acked, CLICKS, 0, 1)], [(CLICKS, 0, 1)])
        e._gathered = [msg(acked, CLICKS, 0, 2), msg(acked, CLICKS, 1, 0)]
        await e.on_revoked({TP(CLICKS, 0), TP(VIEWS, 0)})
        assert [fe.message.partition for fe in e._gathered] == [1]
        assert (CLICKS, 0) not in e.unacked and (VIEWS, 0) not in e.unacked
        e.on_assigned({TP(CLICKS, 0), TP(VIEWS, 0)})
        # redelivered from the commit: the old done report of offset 1 does not count
        await hand(e, link, [msg(acked, CLICKS, 0, 0), msg(acked, CLICKS, 0, 1)], [(CLICKS, 0, 1)])
        assert acked == []
        await hand(e, link, [], [(CLICKS, 0, 0)])
        assert acked == [(CLICKS, 0, 0), (CLICKS, 0, 1)]

    asyncio.run(go())


def faust_commit(committed: int | None, acked: list[int]) -> int | None:
    """What Faust's own bookkeeping commits for one partition, given the offsets acked so far."""
    tp = "tp"
    state = SimpleNamespace(_acked=defaultdict(list, {tp: sorted(acked)}), _gap=defaultdict(list),  # no gaps: falsy
                            _committed_offset=defaultdict(lambda: None, {tp: committed}),
                            _acked_index=defaultdict(set, {tp: set(acked)}))
    return FaustConsumer._new_offset(state, tp)  # type: ignore[arg-type]


def test_faust_commits_past_an_unacked_head_message():
    """Why the worker orders its acks (if a Faust upgrade fixes #606, this documents it)."""
    assert faust_commit(None, [1, 2]) == 3  # offset 0 not acked, committed anyway
    assert faust_commit(10, [11, 12]) == 13  # offset 10 not acked, committed anyway
    assert faust_commit(10, [12, 13]) is None


@hsettings(max_examples=200, deadline=None)
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(
    st.just(n), st.permutations(list(range(n))), st.lists(st.integers(1, 5), min_size=1, max_size=10))))
def test_whatever_order_messages_finish_in_faust_never_commits_one_not_done(case):
    """Messages finish in any order, reported in steps of any size; Faust commits between steps:
    its commit never passes a message that is not done."""
    n, finish_order, step_sizes = case

    async def go() -> None:
        e, link, acked = engine()
        await hand(e, link, [msg(acked, CLICKS, 0, off) for off in range(n)], [])
        done: set[int] = set()
        committed: int | None = None
        order, i, k = list(finish_order), 0, 0
        while i < n:
            chunk = order[i:i + step_sizes[k % len(step_sizes)]]
            i, k = i + len(chunk), k + 1
            done |= set(chunk)
            before = len(acked)
            await hand(e, link, [], [(CLICKS, 0, off) for off in chunk])
            new = [off for _, _, off in acked[before:]]
            commit = faust_commit(committed, new)
            if commit is not None:
                committed = commit
            not_done = [off for off in range(n) if off not in done]
            assert committed is None or not not_done or committed <= min(not_done)
        assert committed == n and sorted(off for _, _, off in acked) == list(range(n))

    asyncio.run(go())


def test_a_message_handed_again_or_below_the_newest_is_kept_once_in_order():
    from stream.live.worker import Unacked

    acked: list[str] = []
    u = Unacked()
    for off, name in ((5, "5"), (6, "6-first"), (4, "4"), (6, "6-again")):
        u.add(off, SimpleNamespace(ack=lambda n=name: acked.append(n)))
    assert [off for off, _ in u.queue] == [4, 5, 6]
    u.done_with([5, 6, 99])  # 99: never queued, ignored
    assert acked == [] and 99 not in u.done
    u.done_with([4])
    assert acked == ["4", "5", "6-again"] and not u.queue and not u.done


def test_a_model_swap_counts_once_and_the_served_version_never_goes_back():
    """Reports carry each pipeline process's reloads since it started; with several processes each
    reloads a swapped file at its own next step (RISKSTREAM_PIPELINES)."""
    reg = CollectorRegistry()
    app = SimpleNamespace(consumer=SimpleNamespace(_committed_offset={}))
    e = Engine(S, app, Metrics(reg), Link())  # type: ignore[arg-type]

    def seen() -> tuple[float | None, list[str]]:
        served = [s.labels["version"] for mf in reg.collect() if mf.name == "riskstream_model"
                  for s in mf.samples if s.name == "riskstream_model_info"]
        return reg.get_sample_value("riskstream_model_reloads_total"), served

    e._apply(Report(model_version="m1", model_reloads=0))
    assert seen() == (0.0, ["m1"])
    e._apply(Report(model_version="m2", model_reloads=1))  # one process reloaded the swapped file
    assert seen() == (1.0, ["m2"])
    e._apply(Report(model_version="m1", model_reloads=0))  # another has not reached its next step yet
    assert seen() == (1.0, ["m2"])
    e._apply(Report(model_version="m2", model_reloads=1))  # now it has: the same swap
    assert seen() == (1.0, ["m2"])
    e._apply(Report(model_version="m3", model_reloads=2))
    assert seen() == (2.0, ["m3"])
