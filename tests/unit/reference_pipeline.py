"""REFERENCE ONLY (tests): the pipeline as it was before the columnar hand-off (an `Event`, a `_Meta`
and a heap entry per event, `_Unapplied` queues), kept verbatim so that property tests can check the
columnar `stream.live.pipeline.Pipeline` against it on random inputs. Not product code. It inherits
what did not change (producing alerts, levels and DLQ records, the delivery checks) from the
current pipeline instead of a copy.

The detector side of a live worker: decode, reorder, detect, publish, persist. No Faust here.

A worker's Faust process consumes and acks; everything that costs CPU per event runs here, by
default in a child process (``RISKSTREAM_DETECTOR_PROCESS``). In one process the two sides would
take turns on the GIL, i.e. on one core, while the second core idles (README, "Where the time goes").

The Faust side sends a :class:`Step` (the raw messages of a micro-batch, the idle flags of the
inputs, the commit floor) and gets a :class:`Report` back: the messages that are completely done
(to ack), what the reorder buffers ask of flow control, and counters for the metrics. One step at a
time; a step is:

1. decode and validate every message (orjson, docs/contracts.md §2); invalid ones go to the DLQ;
2. push valid events into the reorder buffer of their partition (one buffer spans the clicks and the
   views topic-partition of that partition number) and release what its watermark passed;
3. ``Detector.process`` (the core's window kernel on this process's copy of each touched user's
   state, loaded from Redis on first touch; one ONNX run), publish alerts and DLQ records with an
   idempotent ``acks=all`` producer (then the ``risk.levels`` records of users whose current levels
   changed, same producer) and wait for the acknowledgements, then write the changed users'
   window and policy state to Redis (one fenced Lua call per user, pipelined);
4. count events done. A message is done when all its events are: decided, late, or rejected. An
   event whose tick is not yet decided keeps its message un-acked (redelivered after a crash, and
   decided by whoever owns the partition then); buffered events are never done.

Redis errors while loading a step's users or writing state are retried with bounded backoff here
(never a half-applied ``Detector.process``); what stays unavailable is raised to the Faust side,
which exits non-zero. Any other error marks the step's messages suspect: after a restart they run
alone and one that keeps failing is quarantined to the DLQ (reason ``poison``). A DLQ record Kafka
refuses for good is counted and skipped; a full producer queue is drained, not an error.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import orjson
from confluent_kafka import Producer

from stream.core.alerts import alert_to_json
from stream.core.detector import Detector, Outcome, Release
from stream.core.events import Event, Reason, Rejection, decode_message
from stream.core.layout import TICK_MS
from stream.core.levels import levels_to_json
from stream.core.ordering import NO_WATERMARK, ReorderBuffer
from stream.core.windows import DeferredWriteStore
from stream.errors import (
    BrokerUnavailableError,
    StaleStateError,
    StoreUnavailableError,
)
from stream.live.pipeline import Pipeline as _Current
from stream.live.protocol import (
    BufferState,
    MsgId,
    RawMessage,
    Report,
    Step,
    TopicPartition,
    decode_position,
    encode_position,
)
from stream.retry import retry
from stream.settings import Settings

if TYPE_CHECKING:
    from stream.state.poison import PoisonLedger

__all__ = ["Pipeline"]

log = logging.getLogger("riskstream.pipeline")


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
    applied: bool = False  # handed to the detector (released or late): its fence has the position


@dataclass(slots=True)
class _Unapplied:
    """A topic-partition's positions in arrival order, to know the lowest one not yet applied: every
    position below it is applied (or not received by anyone: never this pipeline's), so the users'
    offset fences may settle it (docs/semantics.md §7). Applied entries leave from the front, and in a
    compaction once they are most of the queue, so it holds about twice the unapplied ones.

    ``overtaken()`` counts the positions applied above that lowest one: a bound on what any user's
    fence holds above its frontier. The pipeline keeps it below ``buffer_max_events`` by forcing the
    lowest one out of the reorder buffer (an overload, counted like the buffer cap's)."""

    queue: deque[tuple[int, int, _Meta]] = field(default_factory=deque)  # (arrival number, event time, meta)
    added: int = 0
    unapplied: int = 0
    applied: int = 0  # applied entries still in the queue
    last: int = -1
    low: int | None = None  # lowest position that arrived out of order (a seek back): a floor above it is unsafe

    def add(self, meta: _Meta, ts_ms: int) -> None:
        if meta.position <= self.last:
            self.low = meta.position if self.low is None else min(self.low, meta.position)
        self.last = max(self.last, meta.position)
        self.queue.append((self.added, ts_ms, meta))
        self.added += 1
        self.unapplied += 1

    def add_many(self, metas: list[_Meta], events: list[Event]) -> None:
        """:meth:`add` of one message's events (their positions ascend)."""
        if not metas:
            return
        first = metas[0].position
        if first <= self.last:
            self.low = first if self.low is None else min(self.low, first)
        self.last = max(self.last, metas[-1].position)
        n = self.added
        self.queue.extend(zip(range(n, n + len(metas)), [ev.ts_ms for ev in events], metas))
        self.added = n + len(metas)
        self.unapplied += len(metas)

    def settle(self, meta: _Meta) -> None:
        meta.applied = True
        self.applied += 1
        self.unapplied -= 1

    def floor(self) -> int:
        q = self.queue
        while q and q[0][2].applied:
            q.popleft()
            self.applied -= 1
        if self.applied > 1024 and self.applied * 2 > len(q):
            self.queue = q = deque(e for e in q if not e[2].applied)
            self.applied = 0
        f = q[0][2].position if q else self.last + 1
        return f if self.low is None else min(f, self.low)

    def overtaken(self) -> int:
        """Positions applied above the lowest one not yet applied (call after ``floor``)."""
        return self.added - self.queue[0][0] - self.unapplied if self.queue else 0


@dataclass(slots=True)
class _Partition:
    buffer: ReorderBuffer[_Meta]
    held: list[tuple[int, _Meta]] = field(default_factory=list)  # (tick end, meta): applied, undecided
    watermark: int = NO_WATERMARK
    unapplied: dict[str, _Unapplied] = field(default_factory=dict)  # fence key -> positions


_Bad = tuple[Rejection, _Msg]  # an element the decoder refused, and its message
_NO_KEY = Rejection(Reason.MISSING_KEY, "the message has no key (input messages are keyed by user_id)",
                    None, None, None)


_position = attrgetter("tp", "position")  # an event's (fence key, position): one C call, not a Python one


class Pipeline(_Current):
    """Reorder buffers, detector and producer of the partitions a worker owns."""

    def __init__(self, settings: Settings, detector: Detector, producer: Producer, *,
                 store: DeferredWriteStore | None = None, retry_attempts: int = 12,
                 ledger: PoisonLedger | None = None) -> None:
        """``store``: the detector's store when it writes asynchronously and caches users (live);
        ``ledger``: attempt counts of suspect messages (poison quarantine), none: no quarantine."""
        self.ledger = ledger
        self._suspects: dict[tuple[str, int], dict[int, int]] = {}  # per input topic-partition, loaded once
        self._involved: set[MsgId] = set()  # messages of the current run, and those it released events of
        self.s = settings
        self.detector = detector
        self.store = store
        self.producer = producer
        self.retry_attempts = retry_attempts
        self.inputs = settings.input_kinds
        self.kinds = tuple(self.inputs.values())
        self.parts: dict[int, _Partition] = {}
        self._done: list[MsgId] = []
        self._model_reloads = 0  # model files hot-reloaded since this process started
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
        """Process a step: its messages in one run, except suspects of an earlier failure
        (poison quarantine, see :mod:`stream.state.poison`), which run alone, in order."""
        t0 = time.perf_counter()
        self._done = []
        rep = self._report = Report()
        self._model_reloads += int(self.detector.refresh_model())
        rep.model_reloads = self._model_reloads  # cumulative: N processes count one swap once
        scorer = self.detector.scorer
        rep.model_version = None if scorer is None else str(scorer.info.model_version)
        if self.store is not None:
            self.store.set_generation(step.generation)  # fences the writes of users loaded from now on
        if self.ledger is None:
            self._run(step, step.messages, last=True)
        else:
            pending: list[RawMessage] = []
            for msg in step.messages:
                if not self._is_suspect(msg):
                    pending.append(msg)
                    continue
                if pending:
                    self._guarded(step, pending, last=False)
                    pending = []
                self._isolated(step, msg)
            self._guarded(step, pending, last=True)
        rep.done = self._done
        rep.seconds = time.perf_counter() - t0
        return rep

    # -- poison quarantine ----------------------------------------------------------------------------
    def _is_suspect(self, msg: RawMessage) -> bool:
        topic, p, off, _, _ = msg
        known = self._suspects.get((topic, p))
        if known is None:
            ledger = self.ledger
            assert ledger is not None
            known = self._suspects[(topic, p)] = self._retry(lambda: ledger.attempts(topic, p))
        return off in known

    def _isolated(self, step: Step, msg: RawMessage) -> None:
        """A suspect: one more attempt counted before it runs alone, or quarantined past the limit."""
        ledger = self.ledger
        assert ledger is not None
        topic, p, off, key, raw = msg
        mid = MsgId(topic, p, off)
        n = self._retry(lambda: ledger.attempt(mid))
        self._suspects[(topic, p)][off] = n
        if n > self.s.poison_max_attempts:
            err = self._retry(lambda: ledger.last_error(topic, p))
            log.error("quarantined %s:%d@%d: processing failed %d times (last error: %s); sent to the DLQ",
                      *mid, n - 1, err)
            m = _Msg(mid, 1, raw, key)
            self._produce_dlq(m, [{"index": None, "reason": str(Reason.POISON), "event_id": None,
                                   "detail": f"processing failed {n - 1} times; last error: {err}"[:500]}])
            self._flush()
            self._finish(m)
            return
        self._guarded(step, [msg], last=False)
        if mid in self._done:  # it went through: innocent after all
            self._retry(lambda: ledger.clear([mid]))
            self._suspects[(topic, p)].pop(off, None)

    def _guarded(self, step: Step, messages: list[RawMessage], *, last: bool) -> None:
        """Run messages; if that fails for a reason other than an unavailable service or a stale
        owner, mark every message involved (its own and those whose events it released) suspect."""
        self._involved = {MsgId(t, p, off) for t, p, off, _, _ in messages}
        try:
            self._run(step, messages, last=last)
        except (StoreUnavailableError, BrokerUnavailableError, StaleStateError):
            raise
        except Exception as e:
            ledger = self.ledger
            assert ledger is not None
            log.error("a step failed (%s: %s); its %d message(s) are suspect and run alone next time",
                      type(e).__name__, e, len(self._involved))
            try:
                ledger.suspect(self._involved, f"{type(e).__name__}: {e}")
            except Exception:  # the original error is the one to report
                log.exception("could not record the suspect messages")
            raise

    def _retry(self, fn: Any) -> Any:
        return retry("redis", fn, attempts=self.retry_attempts, base_s=0.1,
                     retriable=(StoreUnavailableError,), on_retry=self._retried)

    # -- one run of messages --------------------------------------------------------------------------
    def _run(self, step: Step, messages: list[RawMessage], *, last: bool) -> None:
        rep = self._report
        dlq: list[_Bad] = []
        late: dict[int, list[tuple[Event, _Meta]]] = {}
        for topic, p, off, key, raw in messages:
            kind = self.inputs.get(topic)
            events: list[Event]
            bad: list[Rejection]
            if key is None:  # the contract keys every input message by its user id (docs/contracts.md §1)
                events, bad = [], [_NO_KEY]
            else:
                events, bad = decode_message(raw, topic_type=kind, key=key, now_ms=step.now_ms)
            m = _Msg(MsgId(topic, p, off), len(events) + len(bad), raw, key)
            for r in bad:
                dlq.append((r, m))
            if not events:
                continue
            owner = self._partition(p)
            buffer = owner.buffer
            tp = TopicPartition(topic, p).fence_key
            track = owner.unapplied.get(tp) or owner.unapplied.setdefault(tp, _Unapplied())
            base = encode_position(off)
            metas = [_Meta(m, tp, base + i) for i in range(len(events))]
            track.add_many(metas, events)
            lost = buffer.push_many(kind or "click", events, metas)
            if lost:
                late.setdefault(p, []).extend((events[i], metas[i]) for i in lost)
        moved: set[int] = set()
        for owner in self.parts.values():
            owner.buffer.now_ms = step.now_ms  # the watermark runs no further ahead than the wall clock
        for (p, kind), idle in step.idle.items():
            part = self.parts.get(p)
            if part is not None:
                before = part.buffer.watermark()
                part.buffer.set_idle(kind, idle)
                if part.buffer.watermark() != before:
                    moved.add(p)
        for p, owner in self.parts.items():  # the clock moved a watermark held back by a future event
            if (len(owner.buffer) or owner.held) and owner.buffer.watermark() > owner.watermark:
                moved.add(p)
        committed = {tp.fence_key: encode_position(off) for tp, off in step.floor.items()}
        releases: list[Release[_Meta]] = []
        partitions = {m[1] for m in messages} | (set(step.partitions) if last else set())
        for p in sorted(partitions | set(late) | moved):
            part = self.parts.get(p)
            if part is None:
                continue
            floor = dict(committed)  # the fence may settle up to the lowest position not yet applied
            force_to = None  # bound the fences: too much applied above a waiting position forces it out
            for tp, track in part.unapplied.items():
                floor[tp] = max(floor.get(tp, -1), track.floor())
                if track.overtaken() > self.s.buffer_max_events:
                    head_ts = track.queue[0][1]
                    force_to = head_ts if force_to is None else max(force_to, head_ts)
            forced = part.buffer.forced
            released, wm = part.buffer.release(force_to)
            rep.forced_releases += part.buffer.forced - forced
            part.watermark = max(part.watermark, wm)
            releases.append(Release(released, part.watermark, late.get(p, ()), floor, group=p))
            # "full" asks flow control to pause the inputs not behind: only when one runs ahead (an
            # idle input holds nothing back; pausing it would hide its new data from the idle check)
            rep.buffers[p] = BufferState(part.buffer.full and part.buffer.runs_ahead(), part.buffer.behind(),
                                         len(part.buffer))
            if self.ledger is not None:
                self._involved.update(meta.msg.id for _, meta in released)
        outcome = self._detect_publish_persist(releases, dlq, step.received_at)
        for rel in releases:
            unapplied = self.parts[rel.group].unapplied
            settled: dict[str, int] = {}
            for handed in (rel.released, rel.late):
                for _, meta in handed:  # _Unapplied.settle, counted per topic-partition
                    meta.applied = True
                    settled[meta.tp] = settled.get(meta.tp, 0) + 1
            for tp, n in settled.items():
                track = unapplied[tp]
                track.applied += n
                track.unapplied -= n
        self._account(releases, outcome, dlq)
        rep.applied += outcome.applied
        rep.late += outcome.late
        rep.duplicates += outcome.duplicates

    def _retried(self) -> None:
        self._report.redis_retries += 1

    def _detect_publish_persist(self, releases: list[Release[_Meta]], dlq: list[_Bad],
                                t_release: float) -> Outcome[_Meta]:
        if releases:
            # Only the loads are retried: they change nothing but the cache. ``process`` itself pops
            # due users and applies release after release, so a retry of it after a partial failure
            # would lose decisions; it does no I/O once its users are loaded, and if it fails anyway
            # the step fails (the worker exits 75 and the batch is redelivered).
            store = self.store
            if store is not None:
                users = self.detector.users_of(releases)
                retry("redis", lambda: store.prefetch(users), attempts=self.retry_attempts, base_s=0.1,
                      retriable=(StoreUnavailableError,), on_retry=self._retried)
            outcome = self.detector.process(releases, _position)
        else:
            outcome = Outcome[_Meta]()
        now_ms = int(time.time() * 1000)
        for a in outcome.alerts:
            self._produce(self.s.alerts_topic, a.user_id.encode(), alert_to_json(a.stamped(now_ms)))
        # the users' current levels, after the alerts that changed them: the same producer and the
        # same acknowledgement wait, so the compacted risk.levels has the alerts' guarantee
        for lv in outcome.levels:
            self._produce(self.s.levels_topic, lv.user_id.encode(), levels_to_json(lv.record))
        # one record per message, listing its rejected elements (not one copy of it per element)
        bad: dict[int, tuple[_Msg, list[dict[str, Any]]]] = {}
        for rej, m in dlq:
            bad.setdefault(id(m), (m, []))[1].append(
                {"index": rej.index, "reason": str(rej.reason), "detail": rej.detail, "event_id": rej.event_id})
        envelope: dict[int, bool] = {}
        for ev, meta, reason in outcome.rejected:
            m = meta.msg
            if id(m) not in envelope:
                envelope[id(m)] = _is_envelope(m.raw)
            _, index = decode_position(meta.position)
            bad.setdefault(id(m), (m, []))[1].append(
                {"index": index if envelope[id(m)] else None, "reason": str(reason),
                 "detail": "older than the user's newest event minus the longest window",
                 "event_id": ev.event_id})
        for m, rejections in bad.values():
            self._produce_dlq(m, rejections)
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
        if self.store is not None:
            retry("redis write", self.store.finish_write, attempts=self.retry_attempts, base_s=0.1,
                  retriable=(StoreUnavailableError,), on_retry=self._retried)

    def _account(self, releases: list[Release[_Meta]], outcome: Outcome[_Meta], dlq: list[_Bad]) -> None:
        """Count events done; a message is done when all of its events are."""
        for _, m in dlq:
            self._finish(m)
        rejected = {id(meta) for _, meta, _ in outcome.rejected}
        for _, meta, _ in outcome.rejected:
            self._finish(meta.msg)
        for rel in releases:
            part = self.parts[rel.group]
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
            done = self._done
            for ev, meta in rel.released:  # _finish and tick_ceil, inlined: once per event
                if rejected and id(meta) in rejected:
                    continue
                tick_end = (ev.ts_ms // TICK_MS + 1) * TICK_MS
                if tick_end <= wm:
                    m = meta.msg
                    m.remaining -= 1
                    if m.remaining <= 0:
                        done.append(m.id)
                else:
                    keep.append((tick_end, meta))
            part.held = keep
            if wm > 0:
                self._report.watermarks[rel.group] = wm

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget revoked partitions (nothing of them was acked: the new owner gets it all again)
        and the cached window state, which may belong to partitions another worker owns now."""
        self.finish_writes()  # the new owner must find every write of ours done
        for p in partitions:
            self.parts.pop(p, None)
            self.detector.drop_group(p)
        gone = set(partitions)
        self._suspects = {tp: v for tp, v in self._suspects.items() if tp[1] not in gone}
        if self.store is not None:
            self.store.invalidate()


def _is_envelope(raw: bytes) -> bool:
    """Whether a (valid) message is a batch envelope: its events have an index."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return type(obj) is dict and "events" in obj
