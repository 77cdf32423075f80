"""What crosses the link between the Faust process and the pipeline: steps, reports, message ids."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from stream.core.events import MAX_BATCH_EVENTS

POSITION_STRIDE = 1024  # fence position = offset * stride + index inside a batch envelope
assert MAX_BATCH_EVENTS < POSITION_STRIDE

MsgId = tuple[str, int, int]  # topic, partition, offset
RawMessage = tuple[str, int, int, "bytes | None", bytes]  # topic, partition, offset, key, value


@dataclass(slots=True)
class Step:
    """One micro-batch, as the Faust side hands it over."""

    messages: list[RawMessage]
    partitions: list[int]  # those of the messages: released after the pushes
    # (partition, input kind) -> idle (DESIGN §8), set after the pushes; a partition whose watermark
    # this moves is released too. The idle timer sends every input's state; a batch only un-idles
    # inputs that have unread data again (releasing past that data would make it late).
    idle: dict[tuple[int, str], bool]
    floor: dict[str, int]  # "topic:partition" -> committed position: the fence below it is settled
    received_at: float  # monotonic arrival of the batch's first message (decidable→ack latency)
    now_ms: int


@dataclass(slots=True)
class Report:
    """What a step did: messages to ack, flow-control state, counters for the metrics."""

    done: list[MsgId] = field(default_factory=list)
    buffers: dict[int, tuple[bool, list[str], int]] = field(default_factory=dict)  # p -> (full, behind, size)
    watermarks: dict[int, int] = field(default_factory=dict)
    applied: int = 0
    late: int = 0
    duplicates: int = 0
    dlq: Counter[str] = field(default_factory=Counter)
    alerts: Counter[tuple[str, str]] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # decidable→acknowledged, seconds, per alert
    seconds: float = 0.0
    redis_retries: int = 0
    forced_releases: int = 0  # events a reorder buffer over its cap released ahead of the watermark
