"""Every use of Faust's and aiokafka's internals, in one place.

The worker needs four things neither library offers as a documented API: the consumer group
generation of an assignment, when a partition's leader last answered a fetch, the offsets Faust
committed, and its agent's queue of messages (taken off directly, without Faust's stream
iterator). Each function below says which attribute it reads and the versions it was checked
against (faust-streaming 0.15.3 with aiokafka 0.14.0, the driver ``faust.transport.drivers.aiokafka``);
``tests/unit/test_faust_compat.py`` pins that those attributes exist in the installed versions, so an
upgrade that moves one fails there first instead of silently degrading the worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["agent_queue", "aiokafka_consumer", "assignment_generation", "committed_offsets", "current_generation"]


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
