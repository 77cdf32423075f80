"""The detector side of a live worker: decode, reorder, detect, publish, persist. No Faust here.

A worker's Faust process consumes and acks; everything that costs CPU per event runs here, by
default in a child process (``RISKSTREAM_DETECTOR_PROCESS``). In one process the two sides would
take turns on the GIL, i.e. on one core, while the second core idles (README, "Where the time goes").

The Faust side sends a :class:`Step` (the raw messages of a micro-batch, the idle flags of the
inputs, the commit floor) and gets a :class:`Report` back: the messages that are completely done
(to ack), what the reorder buffers ask of flow control, and counters for the metrics. One step at a
time; a step is:

1. decode and validate every message (orjson, DESIGN §3); invalid ones go to the DLQ;
2. push valid events into the reorder buffer of their partition (one buffer spans the clicks and the
   views topic-partition of that partition number) and release what its watermark passed;
3. ``Detector.process`` (the core's window kernel on this process's copy of each touched user's
   state, loaded from Redis on first touch; one ONNX run), publish alerts and DLQ records with an
   idempotent ``acks=all`` producer and wait for the acknowledgements, then write the changed users'
   window and policy state to Redis (one fenced Lua call per user, pipelined);
4. count events done. A message is done when all its events are: decided, late, or rejected. An
   event whose tick is not yet decided keeps its message un-acked (redelivered after a crash, and
   decided by whoever owns the partition then); buffered events are never done.

Redis errors are retried with bounded backoff here; what stays unavailable is raised to the Faust
side, which exits non-zero.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import multiprocessing
import pickle
import select
import signal
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import redis
from confluent_kafka import Producer

from stream.core.alerts import alert_to_json
from stream.core.detector import Detector, Outcome, Release
from stream.core.events import MAX_BATCH_EVENTS, Event, decode_message
from stream.core.ordering import ReorderBuffer, tick_ceil
from stream.core.policy import AlertPolicy, load_policy_config
from stream.core.scoring import Scorer
from stream.core.windows import warm_up
from stream.errors import BrokerUnavailableError, PipelineDiedError, StoreUnavailableError
from stream.redis_store import RedisWindowStore
from stream.settings import Settings

log = logging.getLogger("riskstream.pipeline")

START_ATTEMPTS = 7  # ≈ 0.25 + 0.5 + … ≈ 15 s of backoff before giving up at start-up
POSITION_STRIDE = 1024  # fence position = offset * stride + index inside a batch envelope
assert MAX_BATCH_EVENTS < POSITION_STRIDE

MsgId = tuple[str, int, int]  # topic, partition, offset
RawMessage = tuple[str, int, int, "bytes | None", bytes]  # topic, partition, offset, key, value

T = TypeVar("T")


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


@dataclass(slots=True)
class _Msg:
    """One Kafka message in flight: done when all its events are."""

    id: MsgId
    remaining: int
    raw: bytes
    key: bytes | None


@dataclass(slots=True)
class _Meta:
    msg: _Msg
    tp: str
    position: int


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


class Pipeline:
    """Reorder buffers, detector and producer of the partitions a worker owns."""

    def __init__(self, settings: Settings, detector: Detector, producer: Producer, *,
                 retry_attempts: int = 8) -> None:
        self.s = settings
        self.detector = detector
        self.producer = producer
        self.retry_attempts = retry_attempts
        self.inputs = {settings.clicks_topic: "click", settings.views_topic: "view"}
        self.kinds = tuple(self.inputs.values())
        self.parts: dict[int, _Partition] = {}
        self._done: list[MsgId] = []
        self._report = Report()
        self._delivery_error: Any = None

    def _partition(self, p: int) -> _Partition:
        part = self.parts.get(p)
        if part is None:
            part = self.parts[p] = _Partition(ReorderBuffer(
                self.kinds, lateness_ms=self.s.lateness_ms, max_events=self.s.buffer_max_events))
        return part

    def _finish(self, m: _Msg, n: int = 1) -> None:
        m.remaining -= n
        if m.remaining <= 0:
            self._done.append(m.id)

    # -- one step -----------------------------------------------------------------------------------
    def step(self, step: Step) -> Report:
        t0 = time.perf_counter()
        self._done = []
        rep = self._report = Report()
        scorer = self.detector.scorer
        if scorer is not None and hasattr(scorer, "maybe_reload"):
            scorer.maybe_reload()
        dlq: list[tuple[Any, str, int, int, _Msg]] = []
        late: dict[int, list[tuple[Event, _Meta]]] = {}
        for topic, p, off, key, raw in step.messages:
            kind = self.inputs.get(topic)
            events, bad = decode_message(raw, topic_type=kind, key=key, now_ms=step.now_ms)
            m = _Msg((topic, p, off), len(events) + len(bad), raw, key)
            for r in bad:
                dlq.append((r, topic, p, off, m))
            if not events:
                continue
            buffer = self._partition(p).buffer
            tp = f"{topic}:{p}"
            base = off * POSITION_STRIDE
            for i, ev in enumerate(events):
                meta = _Meta(m, tp, base + i)
                if not buffer.push(kind or "click", ev, meta):
                    late.setdefault(p, []).append((ev, meta))
        moved: set[int] = set()
        for (p, kind), idle in step.idle.items():
            part = self.parts.get(p)
            if part is not None:
                before = part.buffer.watermark()
                part.buffer.set_idle(kind, idle)
                if part.buffer.watermark() != before:
                    moved.add(p)
        releases: list[Release] = []
        for p in sorted(set(step.partitions) | set(late) | moved):
            part = self.parts.get(p)
            if part is None:
                continue
            released, wm = part.buffer.release()
            part.watermark = max(part.watermark, wm)
            releases.append(Release(released, part.watermark, late.get(p, ()), step.floor, group=p))
            rep.buffers[p] = (part.buffer.full, part.buffer.behind(), len(part.buffer))
        outcome = self._detect_publish_persist(releases, dlq, step.received_at)
        self._account(releases, outcome, dlq)
        rep.done = self._done
        rep.applied, rep.late, rep.duplicates = outcome.applied, outcome.late, outcome.duplicates
        rep.seconds = time.perf_counter() - t0
        return rep

    def _retried(self) -> None:
        self._report.redis_retries += 1

    def _detect_publish_persist(self, releases: list[Release], dlq: list[Any], t_release: float) -> Outcome:
        if releases:
            outcome = retry("redis", lambda: self.detector.process(releases, _position),
                            attempts=self.retry_attempts, base_s=0.1,
                            retriable=(StoreUnavailableError,), on_retry=self._retried)
        else:
            outcome = Outcome()
        now_ms = int(time.time() * 1000)
        for a in outcome.alerts:
            self.producer.produce(self.s.alerts_topic, key=a.user_id.encode(),
                                  value=alert_to_json(a.stamped(now_ms)))
        for rej, topic, p, off, m in dlq:
            self._produce_dlq(m.raw, rej.reason, rej.detail, rej.index, topic, p, off, m.key)
        for _ev, meta, reason in outcome.rejected:
            topic, _, p = meta.tp.rpartition(":")
            self._produce_dlq(meta.msg.raw, reason, "older than the user's newest event minus the longest window",
                              meta.position % POSITION_STRIDE, topic, int(p), meta.position // POSITION_STRIDE,
                              meta.msg.key)
        self._flush()
        t_acked = time.monotonic()  # CLOCK_MONOTONIC: comparable with the Faust process's arrival times
        rep = self._report
        for a in outcome.alerts:
            rep.alerts[(a.kind, a.level)] += 1
            rep.latencies.append(t_acked - t_release)
        self.finish_writes()  # the previous step's (Redis ran it while this one was computed)
        if releases:  # also without decisions: applied events changed the state, and it is written now
            retry("redis write", lambda: self.detector.commit(outcome), attempts=self.retry_attempts,
                  base_s=0.1, retriable=(StoreUnavailableError,), on_retry=self._retried)
        return outcome

    def finish_writes(self) -> None:
        """Settle a deferred state write (a store with ``defer_writes``): until then, the messages of
        the step that sent it are not done, and its report must not go out."""
        finish = getattr(self.detector.store, "finish_write", None)
        if finish is not None:
            retry("redis write", finish, attempts=self.retry_attempts, base_s=0.1,
                  retriable=(StoreUnavailableError,), on_retry=self._retried)

    def _produce_dlq(self, raw: bytes, reason: str, detail: str, index: int | None, topic: str, p: int,
                     off: int, key: bytes | None) -> None:
        rec: dict[str, Any] = {
            "v": 1, "reason": str(reason), "detail": detail, "index": index,
            "topic": topic, "partition": p, "offset": off,
            "original_b64": base64.b64encode(raw).decode(),
            "failed_at": int(time.time() * 1000),
        }
        self.producer.produce(self.s.dlq_topic, key=key, value=orjson.dumps(rec))
        self._report.dlq[str(reason)] += 1

    def _flush(self) -> None:
        remaining = self.producer.flush(self.s.produce_timeout_s)
        if remaining:
            raise BrokerUnavailableError(
                f"{remaining} alert/DLQ records not acknowledged by Kafka within {self.s.produce_timeout_s} s")
        if self._delivery_error is not None:
            err, self._delivery_error = self._delivery_error, None
            raise BrokerUnavailableError(f"Kafka refused an alert/DLQ record: {err}")

    def on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._delivery_error = err

    def _account(self, releases: list[Release], outcome: Outcome, dlq: list[tuple[Any, str, int, int, _Msg]]) -> None:
        """Count events done; a message is done when all of its events are."""
        for *_, m in dlq:
            self._finish(m)
        rejected = {id(meta) for _, meta, _ in outcome.rejected}
        for _, meta, _ in outcome.rejected:
            self._finish(meta.msg)
        for rel in releases:
            part = self.parts[rel.group]  # type: ignore[index]
            wm = rel.watermark_ms
            for _, meta in rel.late:
                if id(meta) not in rejected:
                    self._finish(meta.msg)
            keep: list[tuple[int, _Meta]] = []
            for tick_end, meta in part.held:
                if tick_end <= wm:
                    self._finish(meta.msg)
                else:
                    keep.append((tick_end, meta))
            for ev, meta in rel.released:
                if id(meta) in rejected:
                    continue
                tick_end = tick_ceil(ev.ts_ms)
                if tick_end <= wm:
                    self._finish(meta.msg)
                else:
                    keep.append((tick_end, meta))
            part.held = keep
            if wm > 0:
                self._report.watermarks[rel.group] = wm  # type: ignore[index]

    def drop(self, partitions: Iterable[Hashable]) -> None:
        """Forget revoked partitions (nothing of them was acked: the new owner gets it all again)
        and the cached window state, which may belong to partitions another worker owns now."""
        self.finish_writes()  # the new owner must find every write of ours done
        for p in partitions:
            self.parts.pop(p, None)  # type: ignore[call-overload]
            self.detector.drop_group(p)
        invalidate = getattr(self.detector.store, "invalidate", None)
        if invalidate is not None:
            invalidate()


def build_pipeline(settings: Settings, model_path: Path | None, scorer: Scorer | None = None, *,
                   defer_writes: bool = False) -> Pipeline:
    """Everything a pipeline needs, connected; ``StoreUnavailableError`` after bounded retries."""
    log.info("kernels ready in %.2f s", warm_up())  # not while the first batch waits
    if scorer is None and model_path is not None:
        from stream.core.features import FEATURE_NAMES, FEATURE_SPEC_HASH
        from stream.core.scoring import OnnxScorer

        scorer = OnnxScorer(model_path, expected_spec_hash=FEATURE_SPEC_HASH, expected_feature_names=FEATURE_NAMES)
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5,
                                  socket_connect_timeout=5, health_check_interval=30)
    store = retry("redis", lambda: RedisWindowStore(client, key_prefix=settings.key_prefix,
                                                    ttl_s=settings.state_ttl_s,
                                                    max_cached_users=settings.state_cache_users,
                                                    keep_outbox=False, defer_writes=defer_writes),
                  attempts=START_ATTEMPTS, base_s=0.25, retriable=(StoreUnavailableError,))
    cfg = load_policy_config(settings.policy_config)
    if scorer is not None:
        cfg = cfg.with_model_thresholds(scorer.info.thresholds)
    detector = Detector(store, AlertPolicy(cfg), scorer)
    pipeline: Pipeline
    producer = Producer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": int(settings.produce_timeout_s * 1000),
        "on_delivery": lambda err, msg: pipeline.on_delivery(err, msg),
    })
    pipeline = Pipeline(settings, detector, producer)
    return pipeline


# -- the link between the Faust side and its pipeline -------------------------------------------------
_PIPELINE: Pipeline | None = None


def _op_step(step: Step) -> Report:
    assert _PIPELINE is not None
    return _PIPELINE.step(step)


def _op_drop(partitions: list[int]) -> None:
    assert _PIPELINE is not None
    _PIPELINE.drop(partitions)


_OPS: dict[str, Callable[[Any], Any]] = {"step": _op_step, "drop": _op_drop}
_HEADER = struct.Struct("!Q")


def _send(sock: socket.socket, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=5)
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise EOFError("the other side closed the link")
        got += k
    return bytes(buf)


def _recv(sock: socket.socket) -> Any:
    (n,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
    return pickle.loads(_recv_exactly(sock, n))


def _reply(sock: socket.socket, ok: bool, value: Any) -> None:
    try:
        _send(sock, (ok, value))
    except (pickle.PicklingError, TypeError, AttributeError):  # an exception that does not pickle
        _send(sock, (False, RuntimeError(f"{type(value).__name__}: {value}")))


def serve(sock: socket.socket, settings: Settings, model_path: Path | None, loglevel: int = logging.WARNING) -> None:
    """The pipeline process: build the pipeline, then answer calls in order until the worker goes.

    State writes are deferred: a step's report (which messages are done) goes out once its write
    is settled — in the next step, after that one published its alerts, or at once when no call
    is waiting. So Redis executes a step's writes while the next step is computed.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the Faust side's to handle
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    global _PIPELINE
    try:
        _PIPELINE = pipeline = build_pipeline(settings, model_path, defer_writes=True)
    except Exception as e:  # noqa: BLE001 - reported to the Faust side, which exits with it
        _reply(sock, False, e)
        return
    gc.freeze()  # the long-lived objects (kernels, model, modules): full collections skip them (60 → 5 ms)
    _reply(sock, True, None)
    held: Report | None = None  # answered once its write is settled
    while True:
        try:
            if held is not None and not select.select([sock], [], [], 0)[0]:  # nothing waits: settle now
                pipeline.finish_writes()
                _reply(sock, True, held)
                held = None
            op, arg = _recv(sock)
        except (EOFError, ConnectionError):
            return  # the worker is gone (also when it was SIGKILLed): nothing here outlives it
        except Exception as e:  # noqa: BLE001 - settling failed: the worker exits with it
            _reply(sock, False, e)
            held = None
            continue
        try:
            if op == "step":
                report = pipeline.step(arg)  # settles the previous step's write after its publish
                if held is not None:
                    _reply(sock, True, held)
                held = report
                continue
            if held is not None:
                pipeline.finish_writes()
                _reply(sock, True, held)
                held = None
            result = _OPS[op](arg)
        except Exception as e:  # noqa: BLE001
            if held is not None:  # the oldest unanswered call gets the error; the worker exits
                _reply(sock, False, e)
                held = None
                continue
            _reply(sock, False, e)
        else:
            _reply(sock, True, result)


class PipelineLink:
    """How the Faust side calls its pipeline: calls are answered in the order they were sent.

    ``ProcessLink`` (the default) runs the pipeline in a child process and talks to it over a
    socket pair from the event loop itself: no helper threads in the Faust process, whose hand-offs
    would wait for the GIL. ``ThreadLink`` runs it in one thread of this process.
    """

    async def connect(self) -> None:
        """Attach to the running event loop (idempotent); before the first ``send``."""

    def send(self, op: str, arg: Any) -> asyncio.Future[Any]:
        """Send a call now; the future gets its answer (or its error)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class ThreadLink(PipelineLink):
    def __init__(self, settings: Settings, model_path: Path | None) -> None:
        global _PIPELINE
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="riskstream-pipeline")
        _PIPELINE = self._pool.submit(build_pipeline, settings, model_path).result()

    def send(self, op: str, arg: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._pool, _OPS[op], arg)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class ProcessLink(PipelineLink):
    def __init__(self, settings: Settings, model_path: Path | None,
                 on_death: Callable[[BaseException], None] | None = None) -> None:
        ours, theirs = socket.socketpair()
        # spawn, not fork: this process already runs threads (librdkafka, Faust's consumer thread)
        self.proc = multiprocessing.get_context("spawn").Process(
            target=serve, args=(theirs, settings, model_path, logging.getLogger().getEffectiveLevel()),
            name="riskstream-pipeline", daemon=True)
        self.proc.start()
        theirs.close()
        self._sock = ours
        self._on_death = on_death
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Future[None] | None = None
        self._dead: BaseException | None = None
        try:
            ok, value = _recv(ours)  # blocking: before the event loop runs
        except (EOFError, ConnectionError):
            self.proc.join(5)
            raise PipelineDiedError(f"the pipeline process exited at start (code {self.proc.exitcode})") from None
        if not ok:
            self.close()
            raise value

    async def connect(self) -> None:
        if self._writer is None:
            reader, self._writer = await asyncio.open_unix_connection(sock=self._sock, limit=2**20)
            self._reader_task = asyncio.ensure_future(self._read(reader))

    def send(self, op: str, arg: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._dead is not None:
            fut.set_exception(self._dead)
            return fut
        assert self._writer is not None, "connect() first"
        self._waiting.append(fut)
        data = pickle.dumps((op, arg), protocol=5)
        self._writer.write(_HEADER.pack(len(data)))
        self._writer.write(data)  # buffered by the transport, written as the socket takes it
        return fut

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (n,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                ok, value = pickle.loads(await reader.readexactly(n))
                fut = self._waiting.popleft()
                if not fut.done():
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError):
            await asyncio.get_running_loop().run_in_executor(None, self.proc.join, 5)
            self._dead = PipelineDiedError(f"the pipeline process exited (code {self.proc.exitcode})")
            while self._waiting:
                fut = self._waiting.popleft()
                if not fut.done():
                    fut.set_exception(self._dead)
            if self._on_death is not None:
                self._on_death(self._dead)

    def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            self._writer.close()
        else:
            self._sock.close()
        self.proc.join(10)  # it exits when it reads the end of the link, after its current step
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def open_link(settings: Settings, model_path: Path | None,
              on_death: Callable[[BaseException], None] | None = None) -> PipelineLink:
    """The pipeline, built and connected (its errors raised here), behind a link."""
    if settings.detector_process:
        return ProcessLink(settings, model_path, on_death)
    return ThreadLink(settings, model_path)
