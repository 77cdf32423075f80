"""stream/live/faust_compat.py reads Faust's and aiokafka's internals: pin that they are there.

An upgrade of faust-streaming or aiokafka that moves one of them fails here, not in a live worker
(where the generation would silently stay 0, or idle detection and the commit floor degrade).
"""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace

import aiokafka
import faust
import mode
import pytest
from aiokafka.consumer.group_coordinator import GroupCoordinator
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.app import AppT

from stream.live import faust_compat


def test_the_checked_versions_are_installed():
    # the docstrings of faust_compat name these; re-check the internals below when they change
    assert faust.__version__ == "0.15.3"
    assert aiokafka.__version__ == "0.14.0"


def test_the_generation_of_an_assignment_is_published_on_the_app_before_the_callbacks_run():
    assert AppT.consumer_generation_id == 0  # declared, with its default
    listener = inspect.getsource(faust_aiokafka.ConsumerRebalanceListener.on_partitions_assigned)
    set_at = listener.index("app.consumer_generation_id = generation")
    assert "_coordinator.generation" in listener[:set_at]
    assert set_at < listener.index("on_partitions_assigned(", set_at)  # before the callbacks
    assert "self.generation" in inspect.getsource(GroupCoordinator.__init__)
    assert "self.generation, self.member_id, protocol" in inspect.getsource(GroupCoordinator._do_rejoin_group)


def test_assignment_generation_reads_the_app_and_treats_unknown_as_zero():
    assert faust_compat.assignment_generation(SimpleNamespace(consumer_generation_id=7)) == 7
    assert faust_compat.assignment_generation(SimpleNamespace(consumer_generation_id=-1)) == 0
    assert faust_compat.assignment_generation(SimpleNamespace()) == 0


def test_the_aiokafka_consumer_is_reachable_through_the_consumer_thread():
    assert hasattr(faust_aiokafka.AIOKafkaConsumerThread, "_ensure_consumer")
    assert "_thread" in inspect.getsource(faust_aiokafka.ThreadDelegateConsumer.__init__)
    assert hasattr(aiokafka.AIOKafkaConsumer, "last_poll_timestamp")
    aio = object()
    app = SimpleNamespace(consumer=SimpleNamespace(_thread=SimpleNamespace(_ensure_consumer=lambda: aio)))
    assert faust_compat.aiokafka_consumer(app) is aio
    assert faust_compat.aiokafka_consumer(SimpleNamespace(consumer=object())) is None


def test_faust_keeps_its_committed_offsets_per_partition():
    src = inspect.getsource(FaustConsumer)
    assert "self._committed_offset = defaultdict(" in src
    assert "self._committed_offset.pop(tp, None)" in src  # revoked partitions leave it
    assert faust_compat.committed_offsets(SimpleNamespace(consumer=SimpleNamespace(_committed_offset={1: 2}))) == {1: 2}
    assert faust_compat.committed_offsets(SimpleNamespace(consumer=object())) == {}


def test_the_agent_queue_is_what_the_stream_iterator_awaits_and_stops_on():
    from faust.agents.actor import Actor
    from faust.channels import Channel
    from faust.streams import Stream
    from mode.utils.queues import FlowControlQueue, ThrowableQueue

    assert "await self.queue.get()" in inspect.getsource(Channel.__anext__)
    assert "_throw(StopAsyncIteration())" in inspect.getsource(Actor.cancel)
    for method in (ThrowableQueue.get, ThrowableQueue.get_nowait):  # errors thrown in are raised
        assert "self._errors.popleft()" in inspect.getsource(method)
    assert "maybe_endorse_pressure_drop" in inspect.getsource(FlowControlQueue.get_nowait)  # fetching resumes
    q = object()
    assert faust_compat.agent_queue(SimpleNamespace(channel=SimpleNamespace(queue=q))) is q
    # the iterator's skip test, which current_generation repeats
    src = inspect.getsource(Stream._py_aiter)
    assert "not self.app.flow_control.is_active()" in src
    assert "message.generation_id != self.app.consumer_generation_id" in src
    assert "generation_id=self.app.consumer_generation_id" in inspect.getsource(faust_aiokafka.Consumer._to_message)


def test_current_generation_is_none_while_flow_control_is_off():
    def app(active: bool) -> SimpleNamespace:
        return SimpleNamespace(consumer_generation_id=4, flow_control=SimpleNamespace(is_active=lambda: active))
    assert faust_compat.current_generation(app(True)) == 4
    assert faust_compat.current_generation(app(False)) is None


# -- install_fast_delivery --------------------------------------------------------------------------
def test_faust_delivers_each_message_through_its_consumers_wait_first_with_the_flow_suspension():
    drain = inspect.getsource(FaustConsumer._drain_messages)
    assert "await self.wait_first(" in drain and "callback(message), self.suspend_flow.wait()" in drain
    assert "self.wait_first(" not in inspect.getsource(FaustConsumer).replace(drain, "")  # its only caller here


class _Service(mode.Service):
    """A mode service standing in for Faust's consumer: the same ``wait_first`` and events."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()
        self.calls = 0
        original = self.wait_first

        async def counting(*coros, timeout=None):  # type: ignore[no-untyped-def]
            self.calls += 1
            return await original(*coros, timeout=timeout)

        self.wait_first = counting  # type: ignore[method-assign]


def test_a_delivery_that_does_not_wait_returns_without_the_services_wait_first():
    async def main() -> None:
        svc = _Service()
        assert faust_compat.install_fast_delivery(svc)
        assert faust_compat.install_fast_delivery(svc)  # idempotent

        async def deliver(x: int) -> int:
            return x * 2

        tasks_before = len(asyncio.all_tasks())
        res = await svc.wait_first(deliver(21), svc.suspend_flow.wait())
        assert res.done[0] is not None and res.results == [42] and not res.stopped
        assert svc.calls == 0 and len(asyncio.all_tasks()) == tasks_before

        async def broken() -> None:
            raise KeyError("boom")

        with pytest.raises(KeyError):
            await svc.wait_first(broken(), svc.suspend_flow.wait())

    asyncio.run(main())


def test_a_delivery_that_waits_is_finished_by_the_services_wait_first_as_a_task_would():
    async def main() -> None:
        svc = _Service()
        faust_compat.install_fast_delivery(svc)
        room = asyncio.Event()
        log: list[str] = []

        async def deliver() -> str:
            log.append("start")
            await room.wait()
            await asyncio.sleep(0)  # a bare yield after the first suspension
            log.append("end")
            return "put"

        waiting = asyncio.ensure_future(svc.wait_first(deliver(), svc.suspend_flow.wait()))
        await asyncio.sleep(0.01)
        assert log == ["start"] and not waiting.done() and svc.calls == 1
        room.set()
        res = await waiting
        assert log == ["start", "end"] and res.results == ["put"]

    asyncio.run(main())


def test_a_suspended_flow_abandons_a_waiting_delivery_which_sees_the_cancellation():
    async def main() -> None:
        svc = _Service()
        faust_compat.install_fast_delivery(svc)
        log: list[str] = []

        async def deliver() -> None:
            try:
                await asyncio.Event().wait()  # a full queue that never drains
            except asyncio.CancelledError:
                log.append("cleaned up")  # as a task's coroutine would be told (not just closed later)
                raise

        waiting = asyncio.ensure_future(svc.wait_first(deliver(), svc.suspend_flow.wait()))
        await asyncio.sleep(0.01)
        svc.suspend_flow.set()  # a rebalance
        res = await asyncio.wait_for(waiting, 5)
        assert log == ["cleaned up"] and res.results == [True] and not res.stopped

        async def never_started() -> None:
            log.append("ran")

        await svc.wait_first(never_started(), svc.suspend_flow.wait())  # suspended: the service's own path
        assert svc.calls == 2 and log == ["cleaned up", "ran"]

    asyncio.run(main())
