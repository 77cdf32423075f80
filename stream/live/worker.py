"""The live worker: one Faust agent over the co-partitioned input topics, the detector behind it.

The Faust side (this module) consumes, tracks the inputs and acks; the detector side
(:mod:`stream.live.pipeline`: decode, reorder, detect, publish, persist) runs in a child process by
default, so that the two use both cores instead of taking turns on the GIL (with
``RISKSTREAM_PIPELINES`` > 1 in several, the input partitions sharded across them:
:class:`~stream.live.link.ShardedLink`).

The agent takes its messages off its channel's queue (not through Faust's stream iterator, which
costs a loop iteration per message) and cuts micro-batches: live, a batch is what Faust has queued
when the queue runs empty (so it is small when the input is
slow, larger when it is fast); while a backlog of ``BACKLOG_BATCHES`` full batches or more is left,
batches are filled to ``batch_size`` (or ``batch_wait_s``). Each batch goes to the pipeline as one
:class:`~stream.live.pipeline.Step` at once; the agent goes on consuming while it runs and waits only
once ``STEPS_AHEAD`` steps are outstanding. The step's :class:`~stream.live.pipeline.Report` says which messages are
completely done, and only those are acked. An event whose tick is not yet decided stays un-acked
(so it is redelivered after a crash, and the tick is decided by whoever owns the partition then);
buffered events are never acked. Faust commits the contiguous acked offsets.

A timer marks caught-up, idle topic-partitions idle (docs/semantics.md §3, KIP-695's idea): when both inputs of
a partition are idle the watermark moves to the end of the newest event's tick and the tail is
decided as the offline scorer decides it at end of file. When a reorder buffer is full, the input
running ahead is paused until it half drains (with nothing running ahead, the pipeline forces the
oldest events out instead: :mod:`stream.core.ordering`).

Failures: a bad event never stops the agent. Redis and Kafka errors are retried with bounded
backoff; past the bound the process exits non-zero (``EXIT_UNAVAILABLE``) instead of idling alive;
so does a worker whose pipeline process died. SIGTERM stops the Faust worker and then the pipeline
process; an unfinished batch is not acked, hence not committed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import KafkaException
from faust.types import TP
from prometheus_client import CollectorRegistry

from stream.errors import BrokerUnavailableError, SecurityError, StoreUnavailableError
from stream.live import faust_compat
from stream.live.app import create_app
from stream.live.link import PipelineLink, open_link
from stream.live.protocol import (
    BufferState,
    Report,
    Step,
    TopicPartition,
    WireId,
    WireMessage,
)
from stream.metrics import Metrics
from stream.retry import START_ATTEMPTS, retry
from stream.settings import Settings

__all__ = [
    "InputProgress",
    "BACKLOG_BATCHES",
    "BACKLOG_RECHECK_S",
    "EXIT_SECURITY",
    "EXIT_UNAVAILABLE",
    "FETCH_FRESH_MS",
    "KAFKA_PROBE_S",
    "Engine",
    "create_worker_app",
    "run_worker",
]

log = logging.getLogger("riskstream.worker")

EXIT_UNAVAILABLE = 75  # EX_TEMPFAIL: a supervisor should restart us
EXIT_SECURITY = 77  # EX_NOPERM: credentials or TLS trust refused; a restart alone will not help
BACKLOG_BATCHES = 4  # a backlog this many full batches long is a catch-up: fill batches to batch_size
# Steps handed to the pipeline that the agent does not wait for. The pipeline answers a step only
# after it has computed the next one (its state write settles meanwhile: link.serve), so with one
# step ahead the agent waited for that answer instead of gathering, and the pipeline then waited for
# the next batch; with two ahead one is always queued while the agent gathers the next.
STEPS_AHEAD = 2
FETCH_FRESH_MS = 5_000  # an input is caught up only if its leader answered a fetch this recently
KAFKA_PROBE_S = 5.0  # a metadata request this often (waiting at most this long) tells whether Kafka answers
REDIS_MEMORY_S = 15.0  # Redis' INFO memory is sampled this often into riskstream_redis_used_memory_bytes
BACKLOG_RECHECK_S = 0.005  # the backlog estimate reads fetch metadata of every input partition: not per message


class Unacked:
    """One input topic-partition's messages handed to the pipeline and not acked yet, acked in
    offset order: a message reported done waits until every earlier one is done too.

    Faust (0.15) commits over a single un-acked message at the head of a partition, and over any
    number of them before the partition's first commit (faust-streaming #606). Acked out of order,
    a message whose events still wait in a reorder buffer was committed: lost after a restart.
    """

    __slots__ = ("done", "queue")

    def __init__(self) -> None:
        self.queue: deque[tuple[int, Any]] = deque()  # (offset, Faust event), ascending offsets
        self.done: set[int] = set()  # reported done, an earlier one is not

    def add(self, off: int, fe: Any) -> None:
        """Queue a message handed to the pipeline. One at or below the newest queued (never within
        an assignment) is kept once, in order."""
        q = self.queue
        if not q or off > q[-1][0]:
            q.append((off, fe))
            return
        by_offset = dict(q)
        by_offset[off] = fe
        self.queue = deque(sorted(by_offset.items(), key=lambda x: x[0]))

    def done_with(self, offsets: list[int]) -> None:
        """Messages reported done: ack the run at the head of the queue that is done."""
        q, done = self.queue, self.done
        if not q:
            return
        lo, hi = q[0][0], q[-1][0]
        done.update(o for o in offsets if lo <= o <= hi)  # others: not queued (any more)
        while q and q[0][0] in done:
            off, fe = q.popleft()
            done.discard(off)
            fe.ack()
        if not q:
            done.clear()

    def __len__(self) -> int:
        return len(self.queue)


@dataclass(slots=True)
class InputProgress:
    last_offset: int = -1
    last_seen: float = field(default_factory=time.monotonic)
    paused: bool = False


class Engine:
    """The Faust side of a worker: cuts batches, hands them to the pipeline, acks what is done."""

    # The consumer group generation of the current assignment (0 before the first one): every step
    # carries it, and the pipeline fences the state writes of users it loads with it
    # (docs/state-layout.md §2). Revoked partitions not assigned again since: their messages (one the
    # agent held across the rebalance, a batch being gathered) are never handed to the pipeline.
    generation: int = 0
    revoked: frozenset[int] = frozenset()

    def __init__(self, settings: Settings, app: faust.App, metrics: Metrics, link: PipelineLink) -> None:
        self.s = settings
        self.app = app
        self.metrics = metrics
        self.link = link
        self.inputs = settings.input_kinds
        self.tps: dict[tuple[str, int], InputProgress] = defaultdict(InputProgress)
        # handed to the pipeline, not yet acked: per input topic-partition, the Faust events to ack
        self.unacked: dict[tuple[str, int], Unacked] = {}
        self._gathered: list[Any] = []  # the batch being filled
        self._gathered_at = 0.0
        self._backlog_at, self._backlog_cached = -1.0, 0
        self._admin: Any = None
        self._kafka_ok_at = time.monotonic()
        self._kafka_probe: asyncio.Future[None] | None = None
        self._redis: Any = None
        self.redis_ok_at = -float("inf")  # the Faust side pings Redis too, for readiness only
        self._redis_memory_at = -float("inf")
        self.fatal: BaseException | None = None
        self._model_version: str | None = None
        self._model_reloads = 0  # the most any pipeline process reported
        self._lag_labels: set[tuple[str, str]] = set()

    # -- consuming ----------------------------------------------------------------------------------
    def submit(self, batch: Sequence[Any]) -> asyncio.Future[None]:
        """Hand a batch to the pipeline; the returned task is done when its report is applied.

        The agent does not wait for it before its next message: Faust's stream stays blocked while
        the agent's loop body runs, so awaiting the step there would stop consumption meanwhile.
        Steps run one at a time, in the order they were sent.
        """
        now = time.monotonic()
        received_at = now
        messages: list[WireMessage] = []
        partitions: set[int] = set()
        tps, unacked = self.tps, self.unacked
        revoked = self.revoked
        for fe in batch:
            msg = fe.message
            if msg.partition in revoked:
                continue  # not ours any more: redelivered to the owner
            t_in = getattr(msg, "time_in", None)
            if t_in is not None and t_in < received_at:
                received_at = t_in
            topic, p, off = msg.topic, msg.partition, msg.offset
            st = tps[(topic, p)]
            if off > st.last_offset:
                st.last_offset = off
            st.last_seen = now
            raw = msg.value if isinstance(msg.value, bytes) else bytes(msg.value or b"")
            key = msg.key if isinstance(msg.key, bytes) or msg.key is None else bytes(msg.key)
            messages.append((topic, p, off, key, raw))  # plain tuples: see protocol.WireMessage
            u = unacked.get((topic, p))
            if u is None:
                u = unacked[(topic, p)] = Unacked()
            u.add(off, fe)
            partitions.add(p)
        self.metrics.messages.inc(len(batch))
        # An alert is decidable once the message that moved the watermark past its tick has arrived;
        # the batch's first arrival bounds that moment from below (so latency is not understated by
        # the time a message waited in the micro-batch).
        sent = self._send(messages, sorted(partitions), None, received_at=received_at)
        task = asyncio.ensure_future(self._finish(sent))
        task.add_done_callback(self._check)
        return task

    def _check(self, task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("step failed", exc_info=exc)
            self._die(exc)  # type: ignore[arg-type]

    async def consume(self, queue: Any) -> None:
        """The agent's loop: take what Faust queued for the agent, hand it to the pipeline in batches.

        Every batch that is ready is handed over before anything is awaited: the idle timer hands
        over the batch being gathered, which must not overtake an earlier one (offsets per
        partition reach the pipeline in order). At most ``STEPS_AHEAD`` steps are awaited at a time
        beyond that.
        """
        get, empty = queue.get_nowait, queue.empty
        pending: deque[asyncio.Future[None]] = deque()
        while True:
            received = [await queue.get()]
            while not empty():
                received.append(get())
            for ready in self.receive(received, more=not empty()):
                pending.append(self.submit(ready))
            while len(pending) > STEPS_AHEAD:  # see STEPS_AHEAD; Faust consumes meanwhile
                await pending.popleft()

    def receive(self, received: Sequence[Any], more: bool) -> list[list[Any]]:
        """Messages taken off the agent's queue together: ``add`` those fetched in the current
        consumer generation. Others were fetched before a rebalance: not handed over and not acked
        (the assignment fetches them again from the commit), as Faust's stream iterator skips them
        (it acks them, though)."""
        generation = faust_compat.current_generation(self.app)
        if generation is None:  # a rebalance is under way
            return []
        return self.add([fe for fe in received if fe.message.generation_id == generation], more)

    def add(self, received: Sequence[Any], more: bool) -> list[list[Any]]:
        """Add messages received together; return the batches that are ready (maybe none yet).

        ``more``: Faust has further messages queued for the agent right now. A batch is ready when
        it is full; or, when nothing more is queued, unless a backlog of ``BACKLOG_BATCHES`` full
        batches is left on unpaused inputs (catching up, not live) and the batch is younger than
        ``batch_wait_s`` (the idle timer flushes it if nothing comes). Live, a batch is thus what
        arrived while the previous step ran: small when the input is slow, larger when it is fast.
        """
        ready: list[list[Any]] = []
        size = self.s.batch_size
        gathered = self._gathered
        i, n = 0, len(received)
        while i < n:
            if not gathered:
                self._gathered_at = time.monotonic()
            j = min(n, i + size - len(gathered))
            gathered.extend(received[i:j])
            i = j
            if len(gathered) >= size:
                ready.append(gathered)
                gathered = self._gathered = []
        if gathered and not more and (time.monotonic() - self._gathered_at >= self.s.batch_wait_s
                                      or self._backlog() < BACKLOG_BATCHES * size):
            ready.append(gathered)
            self._gathered = []
        return ready

    def _backlog(self) -> int:
        """Messages on unpaused input partitions beyond the last one received (from fetch metadata;
        recomputed at most every ``BACKLOG_RECHECK_S``)."""
        now = time.monotonic()
        if now - self._backlog_at < BACKLOG_RECHECK_S:
            return self._backlog_cached
        total = 0
        for (topic, p), st in self.tps.items():
            if st.paused or st.last_offset < 0:
                continue
            hw = self._highwater(topic, p)
            if hw is not None:
                total += max(0, hw - st.last_offset - 1)
        self._backlog_at, self._backlog_cached = now, total
        return total

    async def on_timer(self) -> None:
        """Idle detection: a caught-up input with nothing new for idle_ms stops holding the watermark."""
        await self.link.connect()
        if self._gathered and time.monotonic() - self._gathered_at >= self.s.batch_wait_s:
            ready, self._gathered = self._gathered, []
            await self.submit(ready)
        if not self.tps:
            return
        now = time.monotonic()
        idle_s = self.s.idle_ms / 1000
        flags: dict[tuple[int, str], bool] = {}
        for p in sorted({p for _, p in list(self.tps)}):
            for topic, kind in self.inputs.items():
                st = self.tps[(topic, p)]
                hw = self._highwater(topic, p)
                if hw is None:  # nothing fetched from it yet (e.g. all committed before a restart)
                    hw = await self._end_offset(topic, p)
                pos = st.last_offset + 1 if st.last_offset >= 0 else await self._position(topic, p)
                caught_up = (hw is not None and pos is not None and pos >= hw
                             and self._fetched_lately(topic, p, int(time.time() * 1000)))
                flags[(p, kind)] = caught_up and now - st.last_seen >= idle_s
        await self._finish(self._send([], [], flags))

    async def on_checkpoint_timer(self) -> None:
        """Messages done but not acked wait for a checkpoint, which the pipeline takes in a step:
        while some are outstanding, send an empty step every half interval, so an input that went
        quiet still gets its acks within about the interval (``RISKSTREAM_CHECKPOINT_MS``)."""
        if any(u.queue for u in self.unacked.values()):
            await self.link.connect()
            await self._finish(self._send([], [], {}))

    def export_gauges(self) -> None:
        """Offset lag per input partition (high watermark - committed offset) and pipeline liveness.

        The committed offset is the group's (what a restart resumes from): Faust reads it at
        assignment and updates it as it commits; a partition with none yet, or not fetched yet, has
        no value. Runs on the Kafka probe timer.
        """
        m = self.metrics
        m.pipeline_up.set(1 if self.link.alive() else 0)
        committed = faust_compat.committed_offsets(self.app)
        seen: set[tuple[str, str]] = set()
        for tp in self.app.consumer.assignment():
            if tp.topic not in self.inputs:
                continue
            high, done = self._highwater(tp.topic, tp.partition), committed.get(tp)
            if high is None or done is None:  # unknown until the first fetch and the first commit
                continue
            key = (tp.topic, str(tp.partition))
            seen.add(key)
            m.consumer_lag.labels(topic=key[0], partition=key[1]).set(max(0, high - done))
        for key in self._lag_labels - seen:  # revoked: not ours to report any more
            m.consumer_lag.remove(*key)
        self._lag_labels = seen

    def watch_kafka(self) -> None:
        """Exit (75) once Kafka has not answered a metadata request for ``produce_timeout_s``.

        Faust's consumer reconnects forever, and a worker with nothing to publish would otherwise
        idle alive through a broker outage; probes run in a thread every ``KAFKA_PROBE_S``.
        """
        now = time.monotonic()
        if now - self._kafka_ok_at > self.s.produce_timeout_s:
            self._die(BrokerUnavailableError(
                f"Kafka at {self.s.kafka_bootstrap} has not answered for {now - self._kafka_ok_at:.0f} s"))
        if self._kafka_probe is None or self._kafka_probe.done():
            self._kafka_probe = asyncio.get_running_loop().run_in_executor(None, self._probe_services)

    def _probe_services(self) -> None:
        self._probe_kafka()
        if self.s.http_addr or self.s.metrics_port:
            self._probe_redis()

    def _probe_redis(self) -> None:
        import redis

        from stream.state import redis_client

        try:
            if self._redis is None:
                self._redis = redis_client(self.s)
            self._redis.ping()
        except redis.RedisError as e:
            log.warning("Redis ping failed (%s)", e)
            return
        self.redis_ok_at = now = time.monotonic()
        if now - self._redis_memory_at >= REDIS_MEMORY_S:
            self._redis_memory_at = now
            try:
                if self.s.redis_cluster:  # one answer per primary, keyed by node
                    info = self._redis.info("memory", target_nodes=redis.RedisCluster.PRIMARIES)
                else:
                    info = self._redis.info("memory")
            except redis.RedisError as e:
                log.warning("Redis INFO memory failed (%s)", e)
                return
            self.metrics.redis_memory.set(used_memory(info))

    @property
    def kafka_ok_at(self) -> float:
        """Monotonic time of Kafka's last answer to the worker's metadata probe."""
        return self._kafka_ok_at

    def assigned(self) -> tuple[bool, str]:
        """Readiness: the worker is in its group and holds input partitions."""
        if getattr(self.app, "rebalancing", False):
            return False, "rebalancing"
        try:
            n = len([tp for tp in self.app.consumer.assignment() if tp.topic in self.inputs])
        except Exception as e:  # noqa: BLE001 - no consumer yet
            return False, f"not joined yet ({type(e).__name__})"
        return n > 0, f"{n} input partition(s) assigned"

    def _probe_kafka(self) -> None:
        from stream.topics import admin_client

        if self._admin is None:
            self._admin = admin_client(self.s)
        try:
            self._admin.list_topics(self.s.clicks_topic, timeout=KAFKA_PROBE_S)
        except KafkaException as e:
            log.warning("Kafka metadata request failed (%s); giving up %.0f s after the last answer",
                        e.args[0], self.s.produce_timeout_s)
            return
        self._kafka_ok_at = time.monotonic()

    def _fetched_lately(self, topic: str, p: int, now_ms: int) -> bool:
        """Whether the partition's leader answered a fetch in the last ``FETCH_FRESH_MS``.

        The highwater is the one of the last fetch response: with a hung or unreachable leader it
        stays where it was, and an input would look caught up and then idle while its data waits
        on the broker. aiokafka records when a fetch for the partition last succeeded; Faust
        long-polls every 1.5 s, so a healthy caught-up input is always fresh.
        """
        try:
            consumer = faust_compat.aiokafka_consumer(self.app)
        except Exception:  # noqa: BLE001 - not started (any more)
            return False
        if consumer is None:  # not Faust's aiokafka driver: no such signal, as before
            return True
        try:
            ts = consumer.last_poll_timestamp(TP(topic, p))
        except Exception:  # noqa: BLE001 - not assigned (any more): not ours to call idle
            return False
        return ts is not None and now_ms - ts <= FETCH_FRESH_MS

    async def _end_offset(self, topic: str, p: int) -> int | None:
        tp = TP(topic, p)
        try:
            ends = await self.app.consumer.highwaters(tp)
        except Exception:  # noqa: BLE001 - broker unreachable for a moment: not caught up
            return None
        end = ends.get(tp)
        return None if end is None else int(end)

    async def _position(self, topic: str, p: int) -> int | None:
        """Where the consumer stands on a topic-partition it has not received anything from yet."""
        try:
            pos = await self.app.consumer.position(TP(topic, p))
        except Exception:  # noqa: BLE001 - not assigned (any more)
            return None
        return None if pos is None or pos < 0 else int(pos)

    def _highwater(self, topic: str, p: int) -> int | None:
        try:
            hw = self.app.consumer.highwater(TP(topic, p))
        except Exception:  # noqa: BLE001 - not assigned / not fetched yet
            return None
        return None if hw is None or hw < 0 else int(hw)

    def _unidle(self, partitions: Sequence[int]) -> dict[tuple[int, str], bool]:
        """Inputs with unread data hold the watermark again at once (no waiting for the idle timer:
        releasing past their data would make it late)."""
        flags: dict[tuple[int, str], bool] = {}
        for p in partitions:
            for topic, kind in self.inputs.items():
                st = self.tps.get((topic, p))
                hw = self._highwater(topic, p)
                if st is not None and hw is not None and st.last_offset + 1 < hw:
                    flags[(p, kind)] = False
        return flags

    def _commit_floor(self) -> dict[TopicPartition, int]:
        committed = faust_compat.committed_offsets(self.app)
        return {TopicPartition(tp.topic, tp.partition): off for tp, off in list(committed.items())
                if off is not None}

    # -- one step in the pipeline, then acks ----------------------------------------------------------
    def _send(self, messages: list[WireMessage], partitions: list[int], idle: dict[tuple[int, str], bool] | None,
              received_at: float | None = None) -> asyncio.Future[Report]:
        """Send one step now (the link answers in order); the future gets its report."""
        step = Step(messages, partitions, idle if idle is not None else self._unidle(partitions),
                    self._commit_floor(), received_at if received_at is not None else time.monotonic(),
                    int(time.time() * 1000), self.generation)
        return self.link.step(step)

    async def _finish(self, sent: asyncio.Future[Report]) -> None:
        try:
            report = await sent
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - unavailable services, a stale owner, a dead pipeline
            self._die(e)
            return
        self._apply(report)

    def _apply(self, rep: Report) -> None:
        self._ack_in_order(rep.done)
        for p, state in rep.buffers.items():
            self._flow_control(p, state)
        m = self.metrics
        m.events.labels(outcome="applied").inc(rep.applied)
        m.events.labels(outcome="late").inc(rep.late)
        m.events.labels(outcome="duplicate").inc(rep.duplicates)
        for reason, n in rep.dlq.items():
            m.dlq.labels(reason=reason).inc(n)
        for (kind, level), n in rep.alerts.items():
            m.alerts.labels(kind=kind, level=level).inc(n)
        for seconds in rep.latencies:
            m.decidable_to_ack.observe(seconds)
        if rep.redis_retries:
            m.redis_retries.inc(rep.redis_retries)
        if rep.forced_releases:
            m.forced_releases.inc(rep.forced_releases)
        if rep.dlq_failed:
            m.dlq_failed.inc(rep.dlq_failed)
        if rep.model_reloads > self._model_reloads:  # cumulative, of the pipeline that reloaded most
            m.model_reloads.inc(rep.model_reloads - self._model_reloads)
            self._model_reloads = rep.model_reloads
        if (rep.model_version is not None and rep.model_version != self._model_version
                and rep.model_reloads >= self._model_reloads):  # not a pipeline yet to reload
            self._model_version = rep.model_version
            m.model.info({"version": rep.model_version})
        m.batch_seconds.observe(rep.seconds)
        now = time.time()
        for p, wm in rep.watermarks.items():
            m.watermark_lag.labels(partition=str(p)).set(max(0.0, now - wm / 1000))

    def _ack_in_order(self, done: list[WireId]) -> None:
        """Ack the messages reported done, each once every earlier one of its partition is acked."""
        by_tp: dict[tuple[str, int], list[int]] = {}
        for topic, p, off in done:
            offs = by_tp.get((topic, p))
            if offs is None:
                by_tp[(topic, p)] = [off]
            else:
                offs.append(off)
        unacked = self.unacked
        for tp, offs in by_tp.items():
            u = unacked.get(tp)
            if u is not None:  # else revoked meanwhile: not ours to ack
                u.done_with(offs)

    def _flow_control(self, p: int, buffer: BufferState) -> None:
        """Pause the input running ahead when the reorder buffer is full; resume when it half drains."""
        full, behind, size = buffer
        consumer = self.app.consumer
        for topic, kind in self.inputs.items():
            st = self.tps[(topic, p)]
            tp = TP(topic, p)
            if full and kind not in behind and not st.paused:
                consumer.pause_partitions([tp])
                st.paused = True
                self.metrics.paused.inc()
                log.info("paused %s:%d (reorder buffer full, %d events)", topic, p, size)
            elif st.paused and size < self.s.buffer_max_events // 2:
                consumer.resume_partitions([tp])
                st.paused = False

    async def on_revoked(self, revoked: set[Any]) -> None:
        """Drop everything of revoked partitions: it is not acked, so the new owner gets it again."""
        gone = sorted({tp.partition for tp in revoked if tp.topic in self.inputs})
        self.revoked = self.revoked | set(gone)
        for p in gone:
            for topic in self.inputs:
                self.tps.pop((topic, p), None)
        for tp in [tp for tp in self.unacked if tp[1] in gone]:
            del self.unacked[tp]
        # a batch being gathered may hold their messages: they must not reach the pipeline after the
        # partition is assigned here again (the new assignment redelivers them from the commit)
        self._gathered = [fe for fe in self._gathered if fe.message.partition not in self.revoked]
        await self.link.connect()
        try:
            await self.link.drop(gone)  # after the steps sent before it: their reports came first
        except Exception as e:  # noqa: BLE001 - its last write refused (a zombie), Redis unavailable, a dead pipeline
            self._die(e)  # as a failed step: exit 75, the uncommitted offsets go to the owner

    def on_assigned(self, assigned: set[Any]) -> None:
        """Take the generation of the new assignment: the steps sent from now on carry it."""
        mine = {tp.partition for tp in assigned if tp.topic in self.inputs}
        self.revoked = self.revoked - mine
        # 0: reset by a failed heartbeat meanwhile (a new join follows). Keeping the previous one is
        # safe: a copy labelled with a generation at or below the one it was loaded under never
        # replaces anything its owner's commits depend on; it may only be refused.
        self.generation = faust_compat.assignment_generation(self.app) or self.generation
        log.info("assigned partitions %s in generation %d", sorted(mine), self.generation)

    def _die(self, e: BaseException) -> None:
        log.critical("giving up: %s: %s; exiting with %d so a supervisor restarts the worker",
                     type(e).__name__, e, EXIT_UNAVAILABLE)
        self.fatal = e
        logging.shutdown()
        os._exit(EXIT_UNAVAILABLE)


def _child_pid(link: PipelineLink, child: int) -> int | None:
    return link.pids()[child]


def used_memory(info: dict[str, Any]) -> int:
    """Bytes Redis uses (``used_memory`` of INFO memory), summed over the primaries of a cluster."""
    if "used_memory" in info:
        return int(info["used_memory"])
    return sum(int(node["used_memory"]) for node in info.values())


def create_worker_app(settings: Settings, model_path: Path | None, *,
                      registry: CollectorRegistry | None = None) -> tuple[faust.App, Engine]:
    """The worker's Faust app with its agent and idle timer attached."""
    app = create_app(settings, broker_commit_interval=settings.commit_interval_s)
    engine: Engine
    link = open_link(settings, model_path, on_death=lambda e: engine._die(e))
    # the pipeline children's pids (none: in a thread), for riskstream_pipeline_process_*
    metrics = Metrics(registry, child_pids=[partial(_child_pid, link, c) for c in range(len(link.pids()))])
    engine = Engine(settings, app, metrics, link)
    topic = app.topic(settings.clicks_topic, settings.views_topic, value_serializer="raw",
                      key_serializer="raw")

    @app.agent(topic, name="riskstream.detect")
    async def detect(stream: Any) -> None:
        # The agent drains its channel's queue itself instead of iterating the stream: Faust's
        # stream iterator costs a trip around the event loop, sensor calls and an ack decision per
        # message (the no-op agent drained 16 % faster this way: docs/perf-profile.md), and batches
        # are cut here anyway (Faust's takes block their buffer while the loop body runs). What the
        # iterator did that matters here is kept: messages fetched before a rebalance are dropped
        # (not acked: the new assignment fetches them again from the commit), and errors thrown
        # into the channel are raised by the queue's get (StopAsyncIteration when the agent stops).
        await engine.link.connect()
        if not faust_compat.install_fast_delivery(app.consumer):
            log.warning("Faust's consumer is not as expected: messages are delivered the slow way")
        try:
            await engine.consume(faust_compat.agent_queue(stream))
        except StopAsyncIteration:
            return  # thrown into the channel by Faust when the agent stops (the iterator's end)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - a dead agent must not leave a live process
            log.exception("agent crashed")
            engine._die(e)

    @app.timer(interval=max(settings.idle_ms / 4000, 0.05), name="riskstream.idle")  # type: ignore[untyped-decorator]
    async def idle() -> None:
        try:
            await engine.on_timer()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001
            log.exception("idle timer crashed")
            engine._die(e)

    if settings.checkpoint_ms:
        @app.timer(interval=max(settings.checkpoint_ms / 2000, 0.05), name="riskstream.checkpoint")  # type: ignore[untyped-decorator]
        async def checkpoint() -> None:
            try:
                await engine.on_checkpoint_timer()
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # noqa: BLE001
                log.exception("checkpoint timer crashed")
                engine._die(e)

    @app.timer(interval=KAFKA_PROBE_S, name="riskstream.kafka_watch")  # type: ignore[untyped-decorator]
    async def kafka_watch() -> None:
        engine.watch_kafka()
        engine.export_gauges()

    if settings.http_addr:
        from stream.live.http import HealthServer, recent
        from stream.settings import host_port

        host, port = host_port(settings.http_addr)
        within = 3 * KAFKA_PROBE_S
        server = HealthServer(host, port, metrics.registry, alive=lambda: engine.link.alive(), checks={
            "partitions": engine.assigned,
            "kafka": recent(lambda: engine.kafka_ok_at, within, "Kafka"),
            "redis": recent(lambda: engine.redis_ok_at, within, "Redis"),
            "pipeline": lambda: (engine.link.alive(), "running" if engine.link.alive() else "dead"),
        })

        @app.task  # type: ignore[untyped-decorator]
        async def serve_http() -> None:
            await server.start()
            log.info("HTTP endpoints on http://%s:%d (/livez, /readyz, /metrics)", host, port)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: faust.App, revoked: set[Any], **_: Any) -> None:
        await engine.on_revoked(revoked)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(app: faust.App, assigned: set[Any], **_: Any) -> None:
        engine.on_assigned(assigned)

    return app, engine


def run_worker(settings: Settings, model_path: Path | None, *, loglevel: str = "INFO") -> None:
    """Run until SIGTERM/SIGINT (exit 0) or until a service stays unavailable (exit 75)."""
    import mode.loop
    from faust import Worker

    from stream.logconfig import log_config

    mode.loop.use("uvloop")  # the one Faust setting that measurably lowers per-message cost (docs/runtime-notes.md §1)
    try:
        _check_topics(settings)
        app, engine = create_worker_app(settings, model_path)
    except (StoreUnavailableError, BrokerUnavailableError, SecurityError) as e:
        code = EXIT_SECURITY if isinstance(e, SecurityError) else EXIT_UNAVAILABLE
        if settings.log_format == "json":
            log.critical("giving up: %s; exiting with %d", e, code)
        else:
            print(f"riskstream: error: {e}", file=sys.stderr)
        sys.exit(code)
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr="127.0.0.1", registry=engine.metrics.registry)
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False,
                    logging_config=log_config(loglevel, settings.log_format))
    gc.freeze()  # what exists now lives as long as the worker: full collections need not walk it
    try:
        worker.execute_from_commandline()
    finally:
        engine.link.close()


def _check_topics(settings: Settings) -> None:
    """Fail (after bounded retries) when Kafka or the topics are not there at start-up."""
    from stream.kafka_conf import metadata
    from stream.topics import admin_client

    admin = admin_client(settings)

    def topics_ready() -> None:  # SecurityError (credentials, TLS) at once: not retried
        md = metadata(admin, getattr(admin, "security_watch", None), settings, timeout_s=5)
        missing = [t for t in (settings.clicks_topic, settings.views_topic, settings.alerts_topic,
                               settings.levels_topic, settings.dlq_topic) if t not in md.topics]
        if missing:
            raise BrokerUnavailableError(f"missing topics {missing}: run `riskstream topics create`")

    retry("kafka metadata", topics_ready, attempts=START_ATTEMPTS, base_s=0.25,
          retriable=(BrokerUnavailableError,))
