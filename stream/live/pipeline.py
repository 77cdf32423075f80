"""The detector side of a live worker: decode, reorder, detect, publish, persist. No Faust here.

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
   changed, same producer) and wait for the acknowledgements, then confirm the decided ticks; at a
   checkpoint (``RISKSTREAM_CHECKPOINT_MS`` passed; every step when it is 0) write the users changed
   since the last one to Redis (window and policy state, one fenced Lua call per user, pipelined);
4. count events done, and report them once the checkpoint holding their state is written. A
   message is done when all its events are: decided, late, or rejected. An
   event whose tick is not yet decided keeps its message un-acked (redelivered after a crash, and
   decided by whoever owns the partition then); buffered events are never done.

Redis errors while loading a step's users or writing state are retried with bounded backoff here
(never a half-applied ``Detector.process``); what stays unavailable is raised to the Faust side,
which exits non-zero. Any other error marks the step's messages suspect: after a restart they run
alone and one that keeps failing is quarantined to the DLQ (reason ``poison``). A DLQ record Kafka
refuses for good is counted and skipped; a full producer queue is drained, not an error.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from confluent_kafka import KafkaError, KafkaException, Producer
from numpy.typing import NDArray

from stream.core.alerts import alerts_to_json
from stream.core.detector import ColumnRelease, Detector, Outcome
from stream.core.events import EventLists, Reason, Rejection, decode_messages_into
from stream.core.layout import TICK_MS
from stream.core.levels import levels_to_json
from stream.core.ordering import NO_WATERMARK, ColumnReorderBuffer
from stream.core.windows import DeferredWriteStore, EventColumns, FenceColumn
from stream.errors import (
    BrokerUnavailableError,
    StaleStateError,
    StoreUnavailableError,
)
from stream.live.protocol import (
    BufferState,
    MsgId,
    Report,
    Step,
    TopicPartition,
    WireId,
    WireMessage,
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

    id: WireId  # (topic, partition, offset): a plain tuple, as it goes back in Report.done
    remaining: int
    raw: bytes
    key: bytes | None
    no: int = -1  # its number in the pipeline's table of messages with events in flight


# the rows of a partition's event metadata (int64 columns beside the event columns)
_NO, _POS, _TP, _ARRIVAL = range(4)


@dataclass(slots=True)
class _Track:
    """A topic-partition's arrivals, to know the lowest position not yet applied: every position
    below it is applied (or not received by anyone: never this pipeline's), so the users' offset
    fences may settle it (docs/semantics.md §7). The unapplied positions themselves are the rows of
    the reorder buffer (and a step's late rows until they are applied); this keeps what they don't
    tell: how many arrived (``added``: arrival numbers), the highest position seen, and the lowest
    one that arrived out of order (a seek back: a floor above it is unsafe).

    The arrival numbers count the positions applied above the lowest unapplied one ("overtaken"): a
    bound on what any user's fence holds above its frontier. The pipeline keeps it below
    ``buffer_max_events`` by forcing the lowest one out of the reorder buffer (an overload, counted
    like the buffer cap's)."""

    added: int = 0
    last: int = -1
    low: int | None = None


@dataclass(slots=True)
class _Partition:
    buffer: ColumnReorderBuffer
    # applied but undecided events: their tick end and message number
    held_tick: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    held_no: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    watermark: int = NO_WATERMARK
    tracks: dict[int, _Track] = field(default_factory=dict)  # fence key code -> arrivals


@dataclass(slots=True)
class _Staged:
    """A step's valid events of one partition and input, before they go into the reorder buffer."""

    rows: EventLists = field(default_factory=EventLists)
    counts: list[int] = field(default_factory=list)  # per message: events, number, first position,
    nos: list[int] = field(default_factory=list)     # fence key code, first arrival number
    bases: list[int] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)
    arrivals: list[int] = field(default_factory=list)

    def columns(self) -> tuple[EventColumns, NDArray[np.int64]]:
        counts = np.array(self.counts, np.int64)
        n = int(counts.sum())
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        within = np.arange(n, dtype=np.int64) - starts
        meta = np.empty((4, n), np.int64)
        meta[_NO] = np.repeat(np.array(self.nos, np.int64), counts)
        meta[_POS] = np.repeat(np.array(self.bases, np.int64), counts) + within
        meta[_TP] = np.repeat(np.array(self.codes, np.int64), counts)
        meta[_ARRIVAL] = np.repeat(np.array(self.arrivals, np.int64), counts) + within
        return EventColumns.from_lists(self.rows), meta


_Bad = tuple[Rejection, _Msg]  # an element the decoder refused, and its message
_NO_KEYS = (Rejection(Reason.MISSING_KEY, "the message has no key (input messages are keyed by user_id)",
                     None, None, None),)

# Kafka refusals of a DLQ record that no retry or restart can cure: logged, counted, skipped (an
# alert is never skipped: any error of an alert fails the step)
_PERMANENT = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError.INVALID_MSG,
    KafkaError.INVALID_MSG_SIZE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError._INVALID_ARG,
    KafkaError._BAD_MSG,
})


class Pipeline:
    """Reorder buffers, detector and producer of the partitions a worker owns."""

    def __init__(self, settings: Settings, detector: Detector, producer: Producer, *,
                 store: DeferredWriteStore | None = None, retry_attempts: int = 12,
                 ledger: PoisonLedger | None = None) -> None:
        """``store``: the detector's store when it writes asynchronously and caches users (live);
        ``ledger``: attempt counts of suspect messages (poison quarantine), none: no quarantine."""
        self.ledger = ledger
        self._suspects: dict[tuple[str, int], dict[int, int]] = {}  # per input topic-partition, loaded once
        self._involved: set[WireId] = set()  # messages of the current run, and those it released events of
        self.s = settings
        self.detector = detector
        self.store = store
        self.producer = producer
        self.retry_attempts = retry_attempts
        self.inputs = settings.input_kinds
        self.kinds = tuple(self.inputs.values())
        self.parts: dict[int, _Partition] = {}
        self._msgs: dict[int, _Msg] = {}  # messages with events in flight, by number
        self._next_no = 0
        self._model_reloads = 0  # model files hot-reloaded since this process started
        self._tp_codes: dict[tuple[str, int], int] = {}  # input topic-partition -> fence key code
        self._tp_keys: list[str] = []  # fence key code -> fence key
        self._rel_meta: dict[int, NDArray[np.int64]] = {}  # per partition: the meta of its release's rows
        self._done: list[WireId] = []
        # checkpointed writes (``checkpoint_ms`` > 0, a deferred-write store): the steps only confirm;
        # the changed users are written at a checkpoint, and the messages done meanwhile are reported
        # (acked) with the step whose checkpoint writes their state (docs/semantics.md §7)
        self._checkpoint_s = settings.checkpoint_ms / 1000 if store is not None else 0.0
        self._last_checkpoint = time.monotonic()
        self._unwritten: list[WireId] = []  # done, their state not written yet
        self._written: list[WireId] = []  # done, their state written by a checkpoint outside a step (a drop)
        self._report = Report()
        self._delivery_error: Any = None

    def _partition(self, p: int) -> _Partition:
        part = self.parts.get(p)
        if part is None:
            part = self.parts[p] = _Partition(ColumnReorderBuffer(
                self.kinds, lateness_ms=self.s.lateness_ms, max_events=self.s.buffer_max_events, meta_rows=4))
        return part

    def _finish(self, m: _Msg, n: int = 1) -> None:
        m.remaining -= n
        if m.remaining <= 0:
            self._done.append(m.id)
            if m.no >= 0:
                del self._msgs[m.no]

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
            pending: list[WireMessage] = []
            for msg in step.messages:
                if not self._is_suspect(msg):
                    pending.append(msg)
                    continue
                if pending:
                    self._guarded(step, pending, last=False)
                    pending = []
                self._isolated(step, msg)
            self._guarded(step, pending, last=True)
        if not self._checkpoint_s:
            rep.done = self._done
        else:
            self._unwritten.extend(self._done)
            if self._checkpoint_due():
                self.checkpoint()  # sent now; the report goes out once it is settled (link.serve)
                rep.done = self._written + self._unwritten
                self._unwritten = []
            else:
                rep.done = self._written
            self._written = []
        rep.seconds = time.perf_counter() - t0
        return rep

    # -- poison quarantine ----------------------------------------------------------------------------
    def _is_suspect(self, msg: WireMessage) -> bool:
        topic, p, off, _, _ = msg
        known = self._suspects.get((topic, p))
        if known is None:
            ledger = self.ledger
            assert ledger is not None
            known = self._suspects[(topic, p)] = self._retry(lambda: ledger.attempts(topic, p))
        return off in known

    def _isolated(self, step: Step, msg: WireMessage) -> None:
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

    def _guarded(self, step: Step, messages: list[WireMessage], *, last: bool) -> None:
        """Run messages; if that fails for a reason other than an unavailable service or a stale
        owner, mark every message involved (its own and those whose events it released) suspect."""
        self._involved = {(t, p, off) for t, p, off, _, _ in messages}
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
    def _run(self, step: Step, messages: list[WireMessage], *, last: bool) -> None:
        rep = self._report
        dlq: list[_Bad] = []
        inputs, msgs, codes = self.inputs, self._msgs, self._tp_codes
        now_ms = step.now_ms
        # decode the messages of each partition and input together (the checks run over all their
        # events at once), into that group's staged columns in arrival order
        groups: dict[tuple[int, str | None], list[int]] = {}
        for i, (topic, p, _, key, _) in enumerate(messages):
            if key is not None:  # the contract keys every input message by its user id (docs/contracts.md §1)
                groups.setdefault((p, inputs.get(topic)), []).append(i)
        counts = [0] * len(messages)
        bads: list[Sequence[Rejection]] = [_NO_KEYS] * len(messages)
        staged: dict[tuple[int, str | None], _Staged] = {}
        for (p, kind), idx in groups.items():
            st = staged[(p, kind)] = _Staged()
            ns, bs = decode_messages_into([messages[i][4] for i in idx], topic_type=kind,
                                          keys=[messages[i][3] for i in idx], now_ms=now_ms, out=st.rows)
            for i, n, bad in zip(idx, ns, bs):
                counts[i] = n
                bads[i] = bad
        no = self._next_no
        for (topic, p, off, key, raw), n, bad in zip(messages, counts, bads):
            m = _Msg((topic, p, off), n + len(bad), raw, key)
            for r in bad:
                dlq.append((r, m))
            if not n:
                if not bad:  # nothing in it (the decoder never says so): done, not holding its partition's acks
                    self._done.append(m.id)
                continue
            st = staged[(p, inputs.get(topic))]
            m.no = no
            msgs[no] = m
            no += 1
            code = codes.get((topic, p))
            if code is None:
                code = codes[(topic, p)] = len(self._tp_keys)
                self._tp_keys.append(TopicPartition(topic, p).fence_key)
            owner = self._partition(p)
            track = owner.tracks.get(code)
            if track is None:
                track = owner.tracks[code] = _Track()
            base = encode_position(off)
            if base <= track.last:
                track.low = base if track.low is None else min(track.low, base)
            track.last = max(track.last, base + n - 1)
            st.counts.append(n)
            st.nos.append(m.no)
            st.bases.append(base)
            st.codes.append(code)
            st.arrivals.append(track.added)
            track.added += n
        self._next_no = no
        late_parts: dict[int, list[tuple[EventColumns, NDArray[np.int64]]]] = {}
        for (p, kind), st in staged.items():
            if not st.counts:  # only rejected messages
                continue
            cols, meta = st.columns()
            lost = self.parts[p].buffer.push(kind or "click", cols, meta)
            if len(lost):
                late_parts.setdefault(p, []).append((cols.take(lost), meta[:, lost]))
        late: dict[int, tuple[EventColumns, NDArray[np.int64]]] = {}
        for p, chunks in late_parts.items():  # in arrival order (message, then index), as pushed
            lcols = EventColumns.concat([c for c, _ in chunks])
            lmeta = np.concatenate([mt for _, mt in chunks], axis=1)
            if len(chunks) > 1:
                order = np.lexsort((lmeta[_POS], lmeta[_NO]))
                lcols, lmeta = lcols.take(order), lmeta[:, order]
            lcols.late = np.ones(len(lcols), np.int8)
            late[p] = (lcols, lmeta)
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
            if (len(owner.buffer) or len(owner.held_no)) and owner.buffer.watermark() > owner.watermark:
                moved.add(p)
        committed = {tp.fence_key: encode_position(off) for tp, off in step.floor.items()}
        releases: list[ColumnRelease] = []
        self._rel_meta = {}
        keys = self._tp_keys
        partitions = {m[1] for m in messages} | (set(step.partitions) if last else set())
        for p in sorted(partitions | set(late) | moved):
            part = self.parts.get(p)
            if part is None:
                continue
            lcols_meta = late.get(p)
            floor, force_to = self._floors(part, committed, lcols_meta)
            forced = part.buffer.forced
            rcols, rmeta, wm = part.buffer.release(force_to)
            rep.forced_releases += part.buffer.forced - forced
            part.watermark = max(part.watermark, wm)
            if lcols_meta is not None:
                cols = EventColumns.concat([rcols, lcols_meta[0]])
                meta = np.concatenate([rmeta, lcols_meta[1]], axis=1)
            else:
                cols, meta = rcols, rmeta
            self._rel_meta[p] = meta
            releases.append(ColumnRelease(cols, len(cols) - len(rcols), FenceColumn(meta[_TP], keys, meta[_POS]),
                                          part.watermark, floor, group=p))
            # "full" asks flow control to pause the inputs not behind: only when one runs ahead (an
            # idle input holds nothing back; pausing it would hide its new data from the idle check)
            rep.buffers[p] = BufferState(part.buffer.full and part.buffer.runs_ahead(), part.buffer.behind(),
                                         len(part.buffer))
            if self.ledger is not None and len(rmeta[_NO]):
                self._involved.update(msgs[n].id for n in np.unique(rmeta[_NO]).tolist())
        outcome = self._detect_publish_persist(releases, dlq, step.received_at)
        self._account(releases, outcome, dlq)
        rep.applied += outcome.applied
        rep.late += outcome.late
        rep.duplicates += outcome.duplicates

    def _floors(self, part: _Partition, committed: dict[str, int],
                late: tuple[EventColumns, NDArray[np.int64]] | None) -> tuple[dict[str, int], int | None]:
        """Per topic-partition of a partition, how far the offset fences may settle: up to the lowest
        position not yet applied (the buffered rows, and the step's late rows), at most the lowest
        one that arrived out of order; and the event time to force out of the buffer when too much
        was applied above a waiting position (None: nothing).

        The committed offset counts only for a topic-partition nothing arrived from here: where
        something did, this pipeline knows better, and a commit above a waiting position (a consumer
        that commits past un-acked messages, faust-streaming #606) must not settle it."""
        floor = dict(committed)
        force_to = None
        # per fence key code: [rows, lowest position, lowest arrival number, its event time]
        low: dict[int, list[int]] = {}
        sums = part.buffer.summaries(_waiting)
        if late is not None:
            sums.append(_waiting(late[0].ts, late[1]))
        for summary in sums:
            for code, (k, pos, arr, ts) in summary.items():
                cur = low.get(code)
                if cur is None:
                    low[code] = [k, pos, arr, ts]
                    continue
                cur[0] += k
                if pos < cur[1]:
                    cur[1] = pos
                if arr < cur[2]:
                    cur[2], cur[3] = arr, ts
        keys = self._tp_keys
        for code, track in part.tracks.items():
            cur = low.get(code)
            if cur is not None:
                k, f, arr, ts = cur
                overtaken = track.added - arr - k
                if overtaken > self.s.buffer_max_events:
                    force_to = ts if force_to is None else max(force_to, ts)
            else:
                f = track.last + 1
            if track.low is not None:
                f = min(f, track.low)
            floor[keys[code]] = f
        return floor, force_to

    def _retried(self) -> None:
        self._report.redis_retries += 1

    def _detect_publish_persist(self, releases: list[ColumnRelease], dlq: list[_Bad],
                                t_release: float) -> Outcome[tuple[int, int]]:
        outcome: Outcome[tuple[int, int]]
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
            outcome = self.detector.process(releases)
        else:
            outcome = Outcome()
        now_ms = int(time.time() * 1000)
        stamped = [a.stamped(now_ms) for a in outcome.alerts]
        for a, value in zip(stamped, alerts_to_json(stamped), strict=True):
            self._produce(self.s.alerts_topic, a.user_id.encode(), value)
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
        for ev, (group, row), reason in outcome.rejected:
            meta = self._rel_meta[group]
            m = self._msgs[int(meta[_NO, row])]
            if id(m) not in envelope:
                envelope[id(m)] = _is_envelope(m.raw)
            _, index = decode_position(int(meta[_POS, row]))
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
        if releases:  # also without decisions: applied events changed the state, written now or at a checkpoint
            write = not self._checkpoint_s
            retry("redis write", lambda: self.detector.commit(outcome, write=write), attempts=self.retry_attempts,
                  base_s=0.1, retriable=(StoreUnavailableError,), on_retry=self._retried)
        return outcome

    def _checkpoint_due(self) -> bool:
        """The interval has passed since the last checkpoint, or as many users as the cache may hold
        are unwritten (dirty users are never evicted)."""
        store = self.store
        assert store is not None
        return (time.monotonic() - self._last_checkpoint >= self._checkpoint_s
                or store.unwritten_users >= self.s.state_cache_users)

    def checkpoint(self) -> None:
        """Send a write of every user changed since the last one (settled by :meth:`finish_writes`)."""
        store = self.store
        if store is None:
            return
        self._last_checkpoint = time.monotonic()
        retry("redis write", store.checkpoint, attempts=self.retry_attempts, base_s=0.1,
              retriable=(StoreUnavailableError,), on_retry=self._retried)

    def close(self) -> None:
        """Write what is unwritten (the worker is gone or stopping: less to replay after a restart;
        nothing is reported any more, so the un-acked messages are redelivered and deduplicated by
        the users' offset fences)."""
        if self._checkpoint_s:
            self.checkpoint()
        self.finish_writes()

    def finish_writes(self) -> None:
        """Settle a deferred state write (a store with ``defer_writes``): until then, the messages of
        the step that sent it are not done, and its report must not go out."""
        if self.store is not None:
            retry("redis write", self.store.finish_write, attempts=self.retry_attempts, base_s=0.1,
                  retriable=(StoreUnavailableError,), on_retry=self._retried)

    def _produce_dlq(self, m: _Msg, rejections: list[dict[str, Any]]) -> None:
        """One DLQ record for a message (docs/contracts.md §4): its rejections, its place, and its
        first ``dlq_max_original_bytes`` bytes with the size and SHA-256 of the whole value.
        ``dlq_keep_original=False``: nothing taken from the input (no bytes, details, event ids, and
        no key: the record is keyed by nothing instead of the user id)."""
        raw, cap, key = m.raw, self.s.dlq_max_original_bytes, m.key
        if not self.s.dlq_keep_original:
            cap, key = 0, None
            rejections = [{**r, "detail": "", "event_id": None} for r in rejections]
        first = rejections[0]
        rec: dict[str, Any] = {
            "v": 2, "reason": first["reason"], "detail": first["detail"], "index": first["index"],
            "rejections": rejections,
            "topic": m.id[0], "partition": m.id[1], "offset": m.id[2],
            "original_b64": base64.b64encode(raw[:cap]).decode(),
            "original_size": len(raw),
            "original_sha256": hashlib.sha256(raw).hexdigest(),
            "original_truncated": len(raw) > cap,
            "failed_at": int(time.time() * 1000),
        }
        counts = self._report.dlq
        for r in rejections:
            counts[r["reason"]] += 1
        try:
            self._produce(self.s.dlq_topic, key, orjson.dumps(rec))
        except KafkaException as e:
            err = e.args[0] if e.args else None
            if not isinstance(err, KafkaError) or err.code() not in _PERMANENT:
                raise
            self._dlq_refused(err, m.id)

    def _produce(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        """Produce with back-pressure: a full local queue is drained (delivery reports served)
        until it takes the record; ``BrokerUnavailableError`` if it stays full past the timeout."""
        producer = self.producer
        deadline = 0.0
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                now = time.monotonic()
                if not deadline:
                    deadline = now + self.s.produce_timeout_s
                elif now > deadline:
                    raise BrokerUnavailableError(
                        f"the producer queue stayed full for {self.s.produce_timeout_s} s") from None
                producer.poll(0.05)
        producer.poll(0)

    def _dlq_refused(self, err: Any, where: Any) -> None:
        log.error("Kafka refused a DLQ record for %s (%s): counted in riskstream_dlq_failed_total, skipped",
                  where, err)
        self._report.dlq_failed += 1

    def _flush(self) -> None:
        remaining = self.producer.flush(self.s.produce_timeout_s)
        if remaining:
            raise BrokerUnavailableError(
                f"{remaining} alert/levels/DLQ records not acknowledged by Kafka within {self.s.produce_timeout_s} s")
        if self._delivery_error is not None:
            err, self._delivery_error = self._delivery_error, None
            raise BrokerUnavailableError(f"Kafka refused an alert/levels/DLQ record: {err}")

    def on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            return
        if msg is not None and msg.topic() == self.s.dlq_topic and err.code() in _PERMANENT:
            self._dlq_refused(err, f"{msg.topic()} record of key {msg.key()!r}")
            return
        self._delivery_error = err

    def _account(self, releases: list[ColumnRelease], outcome: Outcome[tuple[int, int]],
                 dlq: list[_Bad]) -> None:
        """Count events done; a message is done when all of its events are."""
        for _, m in dlq:
            self._finish(m)
        refused: dict[int, list[int]] = {}
        for _, (group, row), _ in outcome.rejected:
            refused.setdefault(group, []).append(row)
        finished: list[NDArray[np.int64]] = []
        for rel in releases:
            part = self.parts[rel.group]
            meta = self._rel_meta[rel.group]
            wm = rel.watermark_ms
            n = len(rel.cols)
            k = n - rel.n_late  # released rows first, then the late ones
            ok = np.ones(n, np.bool_)
            rows = refused.get(rel.group)
            if rows:
                ok[rows] = False
                finished.append(meta[_NO, rows])
            finished.append(meta[_NO, k:][ok[k:]])  # late events are done once applied
            if len(part.held_no):
                decided = part.held_tick <= wm
                finished.append(part.held_no[decided])
                held_tick, held_no = part.held_tick[~decided], part.held_no[~decided]
            else:
                held_tick, held_no = part.held_tick, part.held_no
            if k:
                tick_end = (rel.cols.ts[:k] // TICK_MS + 1) * TICK_MS
                nos = meta[_NO, :k]
                decided = tick_end <= wm
                finished.append(nos[decided & ok[:k]])
                wait = ~decided & ok[:k]
                if wait.any():
                    held_tick = np.concatenate([held_tick, tick_end[wait]])
                    held_no = np.concatenate([held_no, nos[wait]])
            part.held_tick, part.held_no = held_tick, held_no
            if wm > 0:
                self._report.watermarks[rel.group] = wm
        if finished:
            nos = np.concatenate(finished)
            if len(nos):
                uniq, counts = np.unique(nos, return_counts=True)
                msgs, done = self._msgs, self._done
                for no, c in zip(uniq.tolist(), counts.tolist()):
                    m = msgs[no]
                    m.remaining -= c
                    if m.remaining <= 0:
                        done.append(m.id)
                        del msgs[no]

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget revoked partitions (nothing of them was acked: the new owner gets it all again)
        and the cached window state, which may belong to partitions another worker owns now."""
        if self._checkpoint_s:  # a revoked partition's state is written before the new owner reads it
            self.checkpoint()
            self._written.extend(self._unwritten)  # reported with the next step
            self._unwritten = []
        self.finish_writes()  # the new owner must find every write of ours done
        for p in partitions:
            self.parts.pop(p, None)
            self.detector.drop_group(p)
        gone = set(partitions)
        self._msgs = {no: m for no, m in self._msgs.items() if m.id[1] not in gone}
        self._suspects = {tp: v for tp, v in self._suspects.items() if tp[1] not in gone}
        if self.store is not None:
            self.store.invalidate()


def _waiting(ts: NDArray[np.int64], meta: NDArray[np.int64]) -> dict[int, tuple[int, int, int, int]]:
    """What the fence floors need of waiting rows, per fence key code: (rows, lowest position,
    lowest arrival number, the event time of that row)."""
    out: dict[int, tuple[int, int, int, int]] = {}
    if not len(ts):
        return out
    codes = meta[_TP]
    first = int(codes[0])
    groups: list[tuple[int, NDArray[np.intp] | None]]
    if (codes == first).all():  # a chunk is one push: one input topic-partition
        groups = [(first, None)]
    else:
        groups = [(c, np.flatnonzero(codes == c)) for c in np.unique(codes).tolist()]
    for code, sel in groups:
        pos, arr, t = (meta[_POS], meta[_ARRIVAL], ts) if sel is None else (meta[_POS, sel], meta[_ARRIVAL, sel], ts[sel])
        head = int(arr.argmin())
        out[code] = (len(pos), int(pos.min()), int(arr[head]), int(t[head]))
    return out


def _is_envelope(raw: bytes) -> bool:
    """Whether a (valid) message is a batch envelope: its events have an index."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return type(obj) is dict and "events" in obj
