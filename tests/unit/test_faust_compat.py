"""stream/live/faust_compat.py reads Faust's and aiokafka's internals: pin that they are there.

An upgrade of faust-streaming or aiokafka that moves one of them fails here, not in a live worker
(where the generation would silently stay 0, or idle detection and the commit floor degrade).
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import aiokafka
import faust
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
