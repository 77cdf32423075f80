"""The live worker: one Faust agent over the co-partitioned input topics, the detector behind it.

Per micro-batch (``noack_take`` every ``batch_poll_s``; while a backlog drains, takes are gathered up to
``batch_size`` messages or ``batch_wait_s``):

1. decode and validate every message (orjson, DESIGN §3); invalid ones are queued for the DLQ;
2. push valid events into the reorder buffer of their partition (one buffer spans the clicks and
   the views topic-partition of that partition number) and release what its watermark passed;
3. in a worker thread: ``Detector.process`` (the core's window kernel on the worker's copy of each
   touched user's state, loaded from Redis on first touch; one ONNX run), publish alerts and DLQ
   records with an idempotent ``acks=all`` producer and wait for the acknowledgements, then write
   the changed users' window and policy state to Redis (one fenced Lua call per user, pipelined);
4. ack the messages that are completely done. An event whose tick is not yet decided stays un-acked
   (so it is redelivered after a crash, and the tick is decided by whoever owns the partition then);
   buffered events are never acked. Faust commits the contiguous acked offsets.

A timer marks caught-up, idle topic-partitions idle (DESIGN §8, KIP-695's idea): when both inputs of
a partition are idle the watermark moves to the end of the newest event's tick and the tail is
decided as the offline scorer decides it at end of file.

Failures: a bad event never stops the agent. Redis and Kafka errors are retried with bounded
backoff; past the bound the process exits non-zero (``EXIT_UNAVAILABLE``) instead of idling alive.
SIGTERM stops the Faust worker; an unfinished batch is not acked, hence not committed.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import faust
import orjson
import redis
from confluent_kafka import KafkaException, Producer
from prometheus_client import CollectorRegistry

from stream.app import create_app
from stream.core.alerts import alert_to_json
from stream.core.detector import Detector, Outcome, Release
from stream.core.events import MAX_BATCH_EVENTS, Event, Rejection, decode_message
from stream.core.ordering import ReorderBuffer, tick_ceil
from stream.core.policy import AlertPolicy, load_policy_config
from stream.core.windows import warm_up
from stream.core.scoring import Scorer
from stream.errors import BrokerUnavailableError, StaleStateError, StoreUnavailableError
from stream.metrics import Metrics
from stream.redis_store import RedisWindowStore
from stream.settings import Settings

log = logging.getLogger("riskstream.worker")

EXIT_UNAVAILABLE = 75  # EX_TEMPFAIL: a supervisor should restart us
START_ATTEMPTS = 7  # ≈ 0.25 + 0.5 + … ≈ 15 s of backoff before giving up at start-up
POSITION_STRIDE = 1024  # fence position = offset * stride + index inside a batch envelope
BACKLOG_BATCHES = 4  # a backlog this many full batches long is a catch-up: gather takes into full batches
assert MAX_BATCH_EVENTS < POSITION_STRIDE

T = TypeVar("T")


@dataclass(slots=True)
class _Msg:
    """One Kafka message in flight: acked when all its events are done."""

    fe: Any  # faust EventT
    remaining: int
    raw: bytes
    key: bytes | None

    def done(self, n: int = 1) -> bool:
        self.remaining -= n
        if self.remaining <= 0:
            self.fe.ack()
            return True
        return False


@dataclass(slots=True)
class _Meta:
    msg: _Msg
    tp: str
    position: int
    received_at: float


@dataclass(slots=True)
class _TpState:
    last_offset: int = -1
    last_seen: float = field(default_factory=time.monotonic)
    paused: bool = False


@dataclass(slots=True)
class _Partition:
    buffer: ReorderBuffer[_Meta]
    held: list[tuple[int, _Meta]] = field(default_factory=list)  # (tick end, meta): applied, undecided
    watermark: int = -(2**62)


def _position(meta: _Meta) -> tuple[str, int]:
    return meta.tp, meta.position


def retry(what: str, fn: Callable[[], T], *, attempts: int, base_s: float, retriable: tuple[type[BaseException], ...],
          on_retry: Callable[[], None] | None = None) -> T:
    """Call fn with bounded exponential backoff; re-raise the last error after the last attempt."""
    delay = base_s
    for i in range(attempts):
        try:
            return fn()
        except retriable as e:
            if i == attempts - 1:
                raise
            log.warning("%s failed (%s); retry %d/%d in %.1fs", what, e, i + 1, attempts - 1, delay)
            if on_retry:
                on_retry()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


class Engine:
    """Everything a worker does besides consuming: buffers, detector, producer, acks."""

    def __init__(self, settings: Settings, app: faust.App, detector: Detector, producer: Producer,
                 metrics: Metrics, *, retry_attempts: int = 8) -> None:
        self.s = settings
        self.app = app
        self.detector = detector
        self.producer = producer
        self.metrics = metrics
        self.retry_attempts = retry_attempts
        self.inputs = {settings.clicks_topic: "click", settings.views_topic: "view"}
        self.parts: dict[int, _Partition] = {}
        self.tps: dict[tuple[str, int], _TpState] = defaultdict(_TpState)
        self.lock = asyncio.Lock()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="riskstream-batch")
        self._gathered: list[Any] = []  # messages of short takes waiting for a fuller batch
        self._gathered_at = 0.0
        self.fatal: BaseException | None = None

    # -- consuming ----------------------------------------------------------------------------------
    def _partition(self, p: int) -> _Partition:
        part = self.parts.get(p)
        if part is None:
            part = self.parts[p] = _Partition(ReorderBuffer(
                ("click", "view"), lateness_ms=self.s.lateness_ms, max_events=self.s.buffer_max_events))
        return part

    async def on_batch(self, batch: Sequence[Any]) -> None:
        now_ms = int(time.time() * 1000)
        now = time.monotonic()
        dlq: list[tuple[Rejection, str, int, int, _Msg]] = []
        late: dict[int, list[tuple[Event, _Meta]]] = defaultdict(list)
        touched: set[int] = set()
        for fe in batch:
            msg = fe.message
            topic, p, off = msg.topic, msg.partition, msg.offset
            st = self.tps[(topic, p)]
            st.last_offset = max(st.last_offset, off)
            st.last_seen = now
            kind = self.inputs.get(topic)
            raw = msg.value if isinstance(msg.value, bytes) else bytes(msg.value or b"")
            key = msg.key if isinstance(msg.key, bytes) or msg.key is None else bytes(msg.key)
            events, bad = decode_message(raw, topic_type=kind, key=key, now_ms=now_ms)
            m = _Msg(fe, len(events) + len(bad), raw, key)
            for r in bad:
                dlq.append((r, topic, p, off, m))
            if not events:
                continue
            part = self._partition(p)
            tp = f"{topic}:{p}"
            base = off * POSITION_STRIDE
            for i, ev in enumerate(events):
                meta = _Meta(m, tp, base + i, now)
                if not part.buffer.push(kind or "click", ev, meta):
                    late[p].append((ev, meta))
            touched.add(p)
        self.metrics.messages.inc(len(batch))
        arrivals = [t for fe in batch if (t := getattr(fe.message, "time_in", None)) is not None]
        await self._run(touched, late, dlq, received_at=min(arrivals, default=now))

    def gather(self, batch: list[Any]) -> list[Any]:
        """Add a take's messages; return what is ready to process (maybe nothing yet).

        Messages wait only while a backlog of ``BACKLOG_BATCHES`` full batches is left on unpaused
        inputs (catching up, not live), and at most ``batch_wait_s`` (the idle timer flushes them if
        no take comes).
        """
        if not self._gathered:
            self._gathered_at = time.monotonic()
        self._gathered.extend(batch)
        if (len(self._gathered) >= self.s.batch_size or time.monotonic() - self._gathered_at >= self.s.batch_wait_s
                or self._backlog() < BACKLOG_BATCHES * self.s.batch_size):
            ready, self._gathered = self._gathered, []
            return ready
        return []

    def _backlog(self) -> int:
        """Messages on unpaused input partitions beyond the last one received (from fetch metadata)."""
        total = 0
        for (topic, p), st in self.tps.items():
            if st.paused or st.last_offset < 0:
                continue
            hw = self._highwater(topic, p)
            if hw is not None:
                total += max(0, hw - st.last_offset - 1)
        return total

    async def on_timer(self) -> None:
        """Idle detection: a caught-up input with nothing new for idle_ms stops holding the watermark."""
        if self._gathered and time.monotonic() - self._gathered_at >= self.s.batch_wait_s:
            ready, self._gathered = self._gathered, []
            await self.on_batch(ready)
        if not self.parts:
            return
        now = time.monotonic()
        idle_s = self.s.idle_ms / 1000
        changed: set[int] = set()
        for p, part in list(self.parts.items()):
            for topic, kind in self.inputs.items():
                st = self.tps[(topic, p)]
                hw = self._highwater(topic, p)
                if hw is None:  # nothing fetched from it yet (e.g. all committed before a restart)
                    hw = await self._end_offset(topic, p)
                pos = st.last_offset + 1 if st.last_offset >= 0 else await self._position(topic, p)
                caught_up = hw is not None and pos is not None and pos >= hw
                idle = caught_up and now - st.last_seen >= idle_s
                before = part.buffer.watermark()
                part.buffer.set_idle(kind, idle)
                if part.buffer.watermark() != before:
                    changed.add(p)
        if changed:
            await self._run(changed, {}, [])

    async def _end_offset(self, topic: str, p: int) -> int | None:
        tp = faust.types.TP(topic, p)
        try:
            ends = await self.app.consumer.highwaters(tp)
        except Exception:  # noqa: BLE001 - broker unreachable for a moment: not caught up
            return None
        end = ends.get(tp)
        return None if end is None else int(end)

    async def _position(self, topic: str, p: int) -> int | None:
        """Where the consumer stands on a topic-partition it has not received anything from yet."""
        try:
            pos = await self.app.consumer.position(faust.types.TP(topic, p))
        except Exception:  # noqa: BLE001 - not assigned (any more)
            return None
        return None if pos is None or pos < 0 else int(pos)

    def _highwater(self, topic: str, p: int) -> int | None:
        try:
            hw = self.app.consumer.highwater(faust.types.TP(topic, p))
        except Exception:  # noqa: BLE001 - not assigned / not fetched yet
            return None
        return None if hw is None or hw < 0 else int(hw)

    def _refresh_idle(self, p: int, part: _Partition) -> None:
        """An input marked idle that has unread data again holds the watermark again (no waiting
        for the next timer tick: releasing past its data would make that data late)."""
        for topic, kind in self.inputs.items():
            if part.buffer.is_idle(kind):
                st = self.tps[(topic, p)]
                hw = self._highwater(topic, p)
                if hw is not None and st.last_offset + 1 < hw:
                    part.buffer.set_idle(kind, False)

    def _commit_floor(self) -> dict[str, int]:
        committed = getattr(self.app.consumer, "_committed_offset", {})  # Faust 0.15 bookkeeping
        return {f"{tp.topic}:{tp.partition}": off * POSITION_STRIDE
                for tp, off in list(committed.items()) if off is not None}

    # -- one step: release, detect, publish, confirm, ack ---------------------------------------------
    async def _run(self, touched: set[int], late: dict[int, list[tuple[Event, _Meta]]],
                   dlq: list[tuple[Rejection, str, int, int, _Msg]], received_at: float | None = None) -> None:
        async with self.lock:
            # An alert is decidable once the message that moved the watermark past its tick has
            # arrived; the batch's arrival time bounds that moment from below (so latency is not
            # understated by the time a message waited in the micro-batch).
            t_release = received_at if received_at is not None else time.monotonic()
            floor = self._commit_floor()
            releases: list[Release] = []
            for p in sorted(touched | set(late)):
                part = self._partition(p)
                self._refresh_idle(p, part)
                released, wm = part.buffer.release()
                part.watermark = max(part.watermark, wm)
                releases.append(Release(released, part.watermark, late.get(p, ()), floor, group=p))
                self._flow_control(p, part)
            loop = asyncio.get_running_loop()
            try:
                outcome = await loop.run_in_executor(self.pool, self._blocking_step, releases, dlq, t_release)
            except (StoreUnavailableError, BrokerUnavailableError, StaleStateError) as e:
                self._die(e)
                return
            self._ack(releases, outcome, dlq)

    def _blocking_step(self, releases: list[Release], dlq: list[Any], t_release: float) -> Outcome:
        t0 = time.perf_counter()
        if releases:
            outcome = retry("redis", lambda: self.detector.process(releases, _position),
                            attempts=self.retry_attempts, base_s=0.1,
                            retriable=(StoreUnavailableError,), on_retry=self.metrics.redis_retries.inc)
        else:
            outcome = Outcome()
        now_ms = int(time.time() * 1000)
        for a in outcome.alerts:
            self.producer.produce(self.s.alerts_topic, key=a.user_id.encode(),
                                  value=alert_to_json(a.stamped(now_ms)))
        for rej, topic, p, off, m in dlq:
            self._produce_dlq(m.raw, rej.reason, rej.detail, rej.index, topic, p, off, m.key)
        for ev, meta, reason in outcome.rejected:
            topic, _, p = meta.tp.rpartition(":")
            self._produce_dlq(meta.msg.raw, reason, "older than the user's newest event minus the longest window",
                              meta.position % POSITION_STRIDE, topic, int(p), meta.position // POSITION_STRIDE,
                              meta.msg.key)
        self._flush()
        t_acked = time.monotonic()
        for a in outcome.alerts:
            self.metrics.alerts.labels(kind=a.kind, level=a.level).inc()
            self.metrics.decidable_to_ack.observe(t_acked - t_release)
        if releases:  # also without decisions: applied events changed the state, and it is written now
            retry("redis write", lambda: self.detector.commit(outcome), attempts=self.retry_attempts,
                  base_s=0.1, retriable=(StoreUnavailableError,), on_retry=self.metrics.redis_retries.inc)
        self.metrics.events.labels(outcome="applied").inc(outcome.applied)
        self.metrics.events.labels(outcome="late").inc(outcome.late)
        self.metrics.events.labels(outcome="duplicate").inc(outcome.duplicates)
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)
        return outcome

    def _produce_dlq(self, raw: bytes, reason: str, detail: str, index: int | None, topic: str, p: int,
                     off: int, key: bytes | None) -> None:
        rec: dict[str, Any] = {
            "v": 1, "reason": str(reason), "detail": detail, "index": index,
            "topic": topic, "partition": p, "offset": off,
            "original_b64": base64.b64encode(raw).decode(),
            "failed_at": int(time.time() * 1000),
        }
        self.producer.produce(self.s.dlq_topic, key=key, value=orjson.dumps(rec))
        self.metrics.dlq.labels(reason=str(reason)).inc()

    def _flush(self) -> None:
        remaining = self.producer.flush(self.s.produce_timeout_s)
        if remaining:
            raise BrokerUnavailableError(
                f"{remaining} alert/DLQ records not acknowledged by Kafka within {self.s.produce_timeout_s} s")
        if self._delivery_error is not None:
            err, self._delivery_error = self._delivery_error, None
            raise BrokerUnavailableError(f"Kafka refused an alert/DLQ record: {err}")

    _delivery_error: Any = None

    def on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._delivery_error = err

    def _ack(self, releases: list[Release], outcome: Outcome,
             dlq: list[tuple[Rejection, str, int, int, _Msg]]) -> None:
        """Count events done; a message is acked when all of its events are."""
        for *_, m in dlq:
            m.done()
        rejected = {id(meta) for _, meta, _ in outcome.rejected}
        for _, meta, _ in outcome.rejected:
            meta.msg.done()
        for rel in releases:
            part = self.parts.get(rel.group)  # type: ignore[call-overload]
            if part is None:  # revoked meanwhile: its messages stay un-acked for the new owner
                continue
            wm = rel.watermark_ms
            for _, meta in rel.late:
                if id(meta) not in rejected:
                    meta.msg.done()
            keep: list[tuple[int, _Meta]] = []
            for tick_end, meta in part.held:
                if tick_end <= wm:
                    meta.msg.done()
                else:
                    keep.append((tick_end, meta))
            for ev, meta in rel.released:
                if id(meta) in rejected:
                    continue
                tick_end = tick_ceil(ev.ts_ms)
                if tick_end <= wm:
                    meta.msg.done()
                else:
                    keep.append((tick_end, meta))
            part.held = keep
            if wm > 0:
                self.metrics.watermark_lag.labels(partition=str(rel.group)).set(max(0.0, time.time() - wm / 1000))

    def _flow_control(self, p: int, part: _Partition) -> None:
        """Pause the input running ahead when the reorder buffer is full; resume when it drains."""
        consumer = self.app.consumer
        behind = set(part.buffer.behind())
        for topic, kind in self.inputs.items():
            st = self.tps[(topic, p)]
            tp = faust.types.TP(topic, p)
            if part.buffer.full and kind not in behind and not st.paused:
                consumer.pause_partitions([tp])
                st.paused = True
                self.metrics.paused.inc()
                log.info("paused %s:%d (reorder buffer full, %d events)", topic, p, len(part.buffer))
            elif st.paused and len(part.buffer) < part.buffer.max_events // 2:
                consumer.resume_partitions([tp])
                st.paused = False

    def on_revoked(self, revoked: set[Any]) -> None:
        """Drop everything of revoked partitions: it is not acked, so the new owner gets it again."""
        for p in {tp.partition for tp in revoked if tp.topic in self.inputs}:
            self.parts.pop(p, None)
            self.detector.drop_group(p)
            for topic in self.inputs:
                self.tps.pop((topic, p), None)
        invalidate = getattr(self.detector.store, "invalidate", None)
        if invalidate is not None:
            invalidate()  # cached window state may belong to partitions another worker owns now

    def _die(self, e: BaseException) -> None:
        log.critical("giving up: %s; exiting with %d so a supervisor restarts the worker", e, EXIT_UNAVAILABLE)
        self.fatal = e
        logging.shutdown()
        os._exit(EXIT_UNAVAILABLE)


def build_engine(settings: Settings, app: faust.App, scorer: Scorer | None, metrics: Metrics) -> Engine:
    log.info("kernels ready in %.2f s", warm_up())  # not while the first batch waits
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5,
                                  socket_connect_timeout=5, health_check_interval=30)
    store = retry("redis", lambda: RedisWindowStore(client, key_prefix=settings.key_prefix,
                                                    ttl_s=settings.state_ttl_s,
                                                    max_cached_users=settings.state_cache_users,
                                                    keep_outbox=False),
                  attempts=START_ATTEMPTS, base_s=0.25, retriable=(StoreUnavailableError,))
    cfg = load_policy_config(settings.policy_config)
    if scorer is not None:
        cfg = cfg.with_model_thresholds(scorer.info.thresholds)
    detector = Detector(store, AlertPolicy(cfg), scorer)
    engine: Engine
    producer = Producer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": int(settings.produce_timeout_s * 1000),
        "on_delivery": lambda err, msg: engine.on_delivery(err, msg),
    })
    engine = Engine(settings, app, detector, producer, metrics)
    return engine


def create_worker_app(settings: Settings, scorer: Scorer | None, *,
                      registry: CollectorRegistry | None = None) -> tuple[faust.App, Engine]:
    """The worker's Faust app with its agent and idle timer attached."""
    app = create_app(settings, broker_commit_interval=settings.commit_interval_s)
    metrics = Metrics(registry)
    engine = build_engine(settings, app, scorer, metrics)
    topic = app.topic(settings.clicks_topic, settings.views_topic, value_serializer="raw",
                      key_serializer="raw")

    @app.agent(topic, name="riskstream.detect")
    async def detect(stream: Any) -> None:
        try:
            # Short takes; while a backlog drains they are gathered up to batch_size (or batch_wait_s),
            # once caught up each is processed at once: latency live, large batches when behind.
            async for batch in stream.noack_take(settings.batch_size, within=min(settings.batch_poll_s,
                                                                                 settings.batch_wait_s)):
                ready = engine.gather(batch)
                if ready:
                    await engine.on_batch(ready)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - a dead agent must not leave a live process
            log.exception("agent crashed")
            engine._die(e)

    @app.timer(interval=max(settings.idle_ms / 4000, 0.05), name="riskstream.idle")  # type: ignore[untyped-decorator]
    async def idle() -> None:
        try:
            await engine.on_timer()
            if scorer is not None and hasattr(scorer, "maybe_reload"):
                scorer.maybe_reload()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001
            log.exception("idle timer crashed")
            engine._die(e)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: faust.App, revoked: set[Any], **_: Any) -> None:
        async with engine.lock:
            engine.on_revoked(revoked)

    return app, engine


def run_worker(settings: Settings, scorer: Scorer | None, *, loglevel: str = "INFO") -> None:
    """Run until SIGTERM/SIGINT (exit 0) or until a service stays unavailable (exit 75)."""
    import mode.loop
    from faust import Worker

    mode.loop.use("uvloop")  # the one Faust setting that measurably lowers per-message cost (NOTES)
    try:
        app, engine = create_worker_app(settings, scorer)
        _check_topics(settings)
    except (StoreUnavailableError, BrokerUnavailableError) as e:
        print(f"riskstream: error: {e}", file=sys.stderr)
        sys.exit(EXIT_UNAVAILABLE)
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr="127.0.0.1", registry=engine.metrics.registry)
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def _check_topics(settings: Settings) -> None:
    """Fail (after bounded retries) when Kafka or the topics are not there at start-up."""
    from stream.topics import admin_client

    admin = admin_client(settings)

    def topics_ready() -> None:
        try:
            md = admin.list_topics(timeout=5)
        except KafkaException as e:
            raise BrokerUnavailableError(f"Kafka at {settings.kafka_bootstrap}: {e.args[0]}") from e
        missing = [t for t in (settings.clicks_topic, settings.views_topic, settings.alerts_topic,
                               settings.dlq_topic) if t not in md.topics]
        if missing:
            raise BrokerUnavailableError(f"missing topics {missing}: run `riskstream topics create`")

    retry("kafka metadata", topics_ready, attempts=START_ATTEMPTS, base_s=0.25,
          retriable=(BrokerUnavailableError,))
