"""``riskstream replay``: publish a historical event log into the input topics (docs/semantics.md §11).

Each valid event goes to ``events.clicks`` or ``events.views`` by its type, keyed by user id, with
its event time as the Kafka timestamp. Single-event lines are published byte for byte (unknown
fields survive); ``--envelope N`` groups up to N consecutive events of one user and type into one
batch-envelope message (docs/contracts.md §2), which is what mobile SDKs do and what lifts a Faust worker past
its per-message cost. Invalid lines are counted by reason and skipped; they never stop a replay.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from confluent_kafka import Producer
from tqdm import tqdm

from stream.core.events import Event, decode_message, encode_event
from stream.errors import BrokerUnavailableError, ConfigError
from stream.kafka_conf import librdkafka_config, metadata, watch_of
from stream.logs import iter_lines, open_log
from stream.settings import Settings
from stream.topics import admin_client, input_retention_ms

__all__ = ["ReplaySummary", "expiry_warning", "parse_types", "replay"]


@dataclass(slots=True)
class ReplaySummary:
    lines: int = 0
    events: int = 0
    messages: Counter[str] = field(default_factory=Counter)
    invalid: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    expiring: int = 0  # events older than the input topics' retention: Kafka deletes them soon
    retention_ms: int = -1

    def lines_out(self) -> list[str]:
        rate = self.events / self.seconds if self.seconds > 0 else 0.0
        return [
            f"lines: {self.lines}  events: {self.events}  ({rate:,.0f} events/s, {self.seconds:.1f} s)",
            "messages: " + ", ".join(f"{t}={n}" for t, n in sorted(self.messages.items())),
            f"invalid lines: {sum(self.invalid.values())}"
            + (" (" + ", ".join(f"{k}={v}" for k, v in sorted(self.invalid.items())) + ")" if self.invalid else ""),
        ] + ([expiry_warning(self.expiring, self.retention_ms)] if self.expiring else [])


def expiry_warning(n: int, retention_ms: int) -> str:
    return (f"warning: {n} events are older than the input topics' retention ({retention_ms / 86_400_000:.1f} "
            "days): Kafka deletes them at its next retention check, possibly before a worker reads them. "
            "Replay history into a namespace whose topics keep it: RISKSTREAM_INPUT_RETENTION_MS=<ms> "
            "riskstream topics create --namespace <ns>")


class _Pacer:
    """Sleeps to hold a rate (events/s) or a speed factor over event time."""

    def __init__(self, rate: float | None, speed: float | None) -> None:
        self.rate, self.speed = rate, speed
        self.t0 = time.monotonic()
        self.ev0: int | None = None
        self.n = 0

    def wait(self, ts_ms: int) -> None:
        self.n += 1
        if self.rate:
            due = self.t0 + self.n / self.rate
        elif self.speed:
            if self.ev0 is None:
                self.ev0 = ts_ms
            due = self.t0 + max(0, ts_ms - self.ev0) / 1000 / self.speed
        else:
            return
        delay = due - time.monotonic()
        if delay > 0.002:
            time.sleep(delay)


def _groups(lines: Iterator[bytes], summary: ReplaySummary, envelope: int,
            types: set[str]) -> Iterator[tuple[str, str, int, bytes]]:
    """(type, user, ts_ms, value) messages to publish, in log order."""
    now = int(time.time() * 1000)
    pending: list[Event] = []

    def flush() -> Iterator[tuple[str, str, int, bytes]]:
        if not pending:
            return
        if len(pending) == 1:
            e = pending[0]
            yield e.type, e.user_id, e.ts_ms, encode_event(e)
        else:
            body = b'{"v":1,"events":[' + b",".join(encode_event(e) for e in pending) + b"]}"
            yield pending[0].type, pending[0].user_id, pending[0].ts_ms, body
        pending.clear()

    for line in lines:
        summary.lines += 1
        good, bad = decode_message(line, topic_type=None, key=None, now_ms=now)
        for r in bad:
            summary.invalid[str(r.reason)] += 1
        good = [e for e in good if e.type in types]
        if envelope <= 1 and len(good) == 1 and not line.lstrip().startswith(b'{"v":1,"events"'):
            e = good[0]
            summary.events += 1
            yield e.type, e.user_id, e.ts_ms, line
            continue
        for e in good:
            summary.events += 1
            if pending and (e.user_id != pending[0].user_id or e.type != pending[0].type
                            or len(pending) >= envelope):
                yield from flush()
            pending.append(e)
            if envelope <= 1:
                yield from flush()
    yield from flush()


def _sorted_lines(lines: Iterator[bytes]) -> Iterator[bytes]:
    """The whole log in event-time order (for logs written user by user, like the simulator's)."""
    keyed = []
    for line in lines:
        try:
            ts = orjson.loads(line).get("ts")
        except (orjson.JSONDecodeError, AttributeError):
            ts = None
        keyed.append((ts if isinstance(ts, int) else 0, line))
    keyed.sort(key=lambda p: p[0])
    return (line for _, line in keyed)


def replay(path: str | Path, settings: Settings, *, rate: float | None = None, speed: float | None = None,
           envelope: int = 1, types: tuple[str, ...] = ("click", "view"), progress: bool = False,
           flush_timeout_s: float = 60.0, sort: bool = False,
           warn: Callable[[str], None] | None = None) -> ReplaySummary:
    if rate is not None and speed is not None:
        raise ConfigError("--rate and --speed are exclusive")
    if (rate is not None and rate <= 0) or (speed is not None and speed <= 0):
        raise ConfigError("--rate and --speed must be > 0")
    topics = {"click": settings.clicks_topic, "view": settings.views_topic}
    errors: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    conf = librdkafka_config(settings, **{
        "enable.idempotence": True, "acks": "all",
        "linger.ms": 20, "batch.num.messages": 10_000, "compression.type": "lz4",
        "queue.buffering.max.messages": 500_000, "on_delivery": on_delivery,
    })
    producer = Producer(conf)
    metadata(producer, watch_of(conf), settings, topics["click"], timeout_s=10)
    summary = ReplaySummary()
    # Kafka's time-based retention looks at record timestamps, i.e. the event times: history older
    # than the retention is deleted within log.retention.check.interval.ms of being published.
    summary.retention_ms = input_retention_ms(admin_client(settings), settings)
    cutoff = int(time.time() * 1000) - summary.retention_ms if summary.retention_ms >= 0 else None
    pacer = _Pacer(rate, speed)
    t0 = time.perf_counter()
    with open_log(path) as f:
        bar = tqdm(desc="replay", unit=" ev", disable=not progress, mininterval=0.5)
        lines = _sorted_lines(iter_lines(f)) if sort else iter_lines(f)
        for kind, user, ts, value in _groups(lines, summary, envelope, set(types)):
            if cutoff is not None and ts < cutoff:
                if not summary.expiring and warn is not None:
                    warn(expiry_warning(1, summary.retention_ms).replace("1 events are", "events are", 1))
                summary.expiring += 1
            pacer.wait(ts)
            while True:
                try:
                    producer.produce(topics[kind], key=user.encode(), value=value, timestamp=ts)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
            summary.messages[topics[kind]] += 1
            bar.update(1)
        bar.close()
    left = producer.flush(flush_timeout_s)
    summary.seconds = time.perf_counter() - t0
    if left or errors:
        raise BrokerUnavailableError(
            f"{left} messages not acknowledged, {len(errors)} refused by Kafka"
            + (f" (first: {errors[0]})" if errors else ""))
    return summary


def parse_types(skew: str | None) -> list[tuple[str, ...]]:
    """Publishing passes: normal, or all views then all clicks (a forced skew for parity tests)."""
    if skew is None:
        return [("click", "view")]
    if skew == "views-first":
        return [("view",), ("click",)]
    if skew == "clicks-first":
        return [("click",), ("view",)]
    raise ConfigError(f"unknown --skew {skew!r}: use views-first or clicks-first")
