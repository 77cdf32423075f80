"""Every use of Faust's and aiokafka's internals, in one place.

The worker needs three things neither library offers as a documented API: the consumer group
generation of an assignment, when a partition's leader last answered a fetch, and the offsets Faust
committed. Each function below says which attribute it reads and the versions it was checked
against (faust-streaming 0.15.3 with aiokafka 0.14.0, the driver ``faust.transport.drivers.aiokafka``);
``tests/unit/test_faust_compat.py`` pins that those attributes exist in the installed versions, so an
upgrade that moves one fails there first instead of silently degrading the worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["aiokafka_consumer", "assignment_generation", "committed_offsets"]


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
