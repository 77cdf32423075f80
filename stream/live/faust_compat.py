"""Every use of Faust's and aiokafka's internals, in one place.

The worker needs four things neither library offers as a documented API: the consumer group
generation of an assignment, when a partition's leader last answered a fetch, the offsets Faust
committed, and its agent's queue of messages (taken off directly, without Faust's stream
iterator); and it shortens one per-message path of Faust's consumer (:func:`install_fast_delivery`).
Each function below says which attribute it reads and the versions it was checked
against (faust-streaming 0.15.3 with aiokafka 0.14.0, the driver ``faust.transport.drivers.aiokafka``);
``tests/unit/test_faust_compat.py`` pins that those attributes exist in the installed versions, so an
upgrade that moves one fails there first instead of silently degrading the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator, Mapping
from typing import Any

from mode.services import WaitResults

__all__ = ["agent_queue", "aiokafka_consumer", "assignment_generation", "committed_offsets", "current_generation",
           "install_fast_delivery"]


def assignment_generation(app: Any) -> int:
    """The consumer group generation of the assignment being handled; 0 when none is known.

    Call it from an ``on_partitions_assigned`` handler: faust-streaming's aiokafka driver
    (``ConsumerRebalanceListener.on_partitions_assigned``) copies aiokafka's
    ``GroupCoordinator.generation`` into ``app.consumer_generation_id`` before it runs the assignment
    callbacks, and no later join can complete while they run, so there it is the generation under
    which these partitions were assigned. (Reading the coordinator itself there would be wrong: a
    failed heartbeat resets it to -1 meanwhile.) Checked against faust-streaming 0.15.3 and
    aiokafka 0.14.0.
    """
    gen = getattr(app, "consumer_generation_id", 0)
    return gen if isinstance(gen, int) and gen > 0 else 0


def aiokafka_consumer(app: Any) -> Any | None:
    """The ``aiokafka.AIOKafkaConsumer`` behind Faust's consumer, or None (another driver).

    Reads ``app.consumer._thread._ensure_consumer()`` (faust-streaming 0.15.3: the consumer runs in
    ``AIOKafkaConsumerThread``; ``_ensure_consumer`` returns its ``AIOKafkaConsumer``). Its public
    methods (``last_poll_timestamp``) are aiokafka's; checked against aiokafka 0.14.0.
    """
    ensure = getattr(getattr(app.consumer, "_thread", None), "_ensure_consumer", None)
    return None if ensure is None else ensure()


def committed_offsets(app: Any) -> Mapping[Any, int | None]:
    """Faust's record of the offsets it committed, per ``TP`` (``Consumer._committed_offset``,
    faust-streaming 0.15.3; revoked partitions are removed from it); {} when absent."""
    return getattr(app.consumer, "_committed_offset", {})


def agent_queue(stream: Any) -> Any:
    """The queue Faust's conductor puts an agent's events on, in the order they were fetched.

    ``stream.channel.queue``: a ``mode.utils.queues.ThrowableQueue`` (faust-streaming 0.15.3, mode
    0.4); its ``get``/``get_nowait`` also signal fetch back-pressure (``maybe_endorse_pressure_drop``)
    and raise what is thrown into the channel, ``StopAsyncIteration`` when the agent stops
    (``faust.agents.actor.Actor.cancel``). It is what ``Channel.__anext__`` awaits.
    """
    return stream.channel.queue


def current_generation(app: Any) -> int | None:
    """The consumer generation whose fetched messages may be processed now; None while a rebalance
    is under way (Faust's flow control off).

    Faust's stream iterator skips a message when ``app.flow_control.is_active()`` is false or
    ``message.generation_id`` (stamped by the aiokafka driver's ``_to_message`` from
    ``app.consumer_generation_id``) differs from ``app.consumer_generation_id``: the same test, for
    an agent that takes its queue directly. Checked against faust-streaming 0.15.3.
    """
    return app.consumer_generation_id if app.flow_control.is_active() else None


def install_fast_delivery(consumer: Any) -> bool:
    """Deliver each fetched message without four asyncio tasks when nothing has to wait.

    Faust's consumer hands every fetched message to the conductor with
    ``await self.wait_first(callback(message), self.suspend_flow.wait())`` (``Consumer._drain_messages``,
    faust-streaming 0.15.3): ``mode.Service.wait_first`` wraps the delivery, the flow-suspension wait
    and the service's stopped and crashed events in four tasks and an ``asyncio.wait``, so that a
    delivery blocked on a full agent queue can be abandoned when a rebalance suspends the flow. That
    costs ≈ 19 % of the Faust process's CPU at one event per message (docs/perf-profile.md, session 16),
    while a delivery almost never waits.

    This sets an instance attribute ``wait_first`` on ``consumer`` that first runs the delivery
    coroutine up to its first suspension, in place. If it finishes there (the queue had room), its
    result is returned as ``wait_first`` would have returned it, without a task. If it has to wait,
    the started delivery — continued exactly as a task would continue it — and the other awaitables
    go to the service's own ``wait_first``, unchanged. Calls of any other shape, and every call
    while the flow is suspended or the service is stopping, go there directly. Returns False (and
    changes nothing) when the consumer does not look as expected.
    """
    original: Any = getattr(consumer, "wait_first", None)
    if getattr(original, "_riskstream_fast", False):
        return True  # installed already (the agent restarted)
    suspend: Any = getattr(consumer, "suspend_flow", None)
    stopped: Any = getattr(consumer, "_stopped", None)
    crashed: Any = getattr(consumer, "_crashed", None)
    if original is None or not all(hasattr(e, "is_set") for e in (suspend, stopped, crashed)):
        return False

    async def wait_first(*coros: Any, timeout: Any = None) -> Any:
        if (timeout is not None or len(coros) != 2 or not asyncio.iscoroutine(coros[0])
                or suspend.is_set() or stopped.is_set() or crashed.is_set()):
            return await original(*coros, timeout=timeout)
        delivery, other = coros
        try:
            signal = delivery.send(None)
        except StopIteration as done:
            if asyncio.iscoroutine(other):
                other.close()  # never started: nothing to clean up
            return WaitResults([delivery], [done.value], False)
        except BaseException:
            if asyncio.iscoroutine(other):
                other.close()
            raise
        return await original(_Started(delivery, signal), other)

    wait_first._riskstream_fast = True  # type: ignore[attr-defined]
    consumer.wait_first = wait_first
    return True


class _Started:
    """A coroutine already run up to its first suspension, awaitable as if it had not been: the
    awaiting task is handed what the coroutine yielded (the future it waits for) and sends or throws
    into it what the task sends or throws (its wake-up, a cancellation)."""

    __slots__ = ("_coro", "_signal")

    def __init__(self, coro: Coroutine[Any, Any, Any], signal: Any) -> None:
        self._coro, self._signal = coro, signal

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, signal = self._coro, self._signal
        while True:
            try:
                value = yield signal
            except BaseException as e:  # noqa: BLE001 - thrown in by the task (cancellation): passed on
                try:
                    signal = coro.throw(e)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    signal = coro.send(value)
                except StopIteration as done:
                    return done.value
