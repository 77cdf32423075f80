"""Canonical order, the partition watermark and the bounded reorder buffer (docs/semantics.md §3, §4).

Offline scoring and the live worker both push decoded events into a :class:`ReorderBuffer` (one per
partition live; one for the whole log offline) and apply only what it releases, in canonical order.
That is what makes alerts independent of batch boundaries and of skew between the input topics.

Watermark of a partition = min over its inputs (the clicks and views topic-partitions) of the
newest event time seen on that input, minus the lateness bound L. An input that has seen nothing
holds the watermark at "nothing released" unless it is marked idle; an idle input stops holding it.
When every input is idle (caught up, nothing new for the configured time; or end of file offline)
the watermark moves to the end of the tick that holds the newest event seen, so the tail is decided
exactly as the offline scorer decides it at end of file.

The buffer is bounded (``max_events``). When it is over its cap, the live worker pauses the input
that runs ahead (the one not holding the watermark back), which lets the watermark catch up. When
no input runs ahead (one input idle, or all at the same event time) pausing cannot help, and
pausing everything would stall with the watermark stuck: then ``release`` forces the oldest events
out, advancing the buffer's watermark just past the newest of them (``forced`` counts them). The
same happens, whatever runs ahead, once the buffer holds twice its cap (the pause did not hold it).
Events that then arrive behind the forced watermark are late (docs/contracts.md, semantics).

Live, the watermark never runs ahead of the wall clock: the caller sets ``now_ms`` (the worker's
clock; nothing here reads a clock), and an input's newest event time counts only up to
``now_ms + FUTURE_SLACK_MS``. A producer whose clock runs ahead (events up to 5 min ahead are valid)
then cannot make every other user's on-time events late; its own future events wait in the buffer
until the watermark reaches them, and are applied then. Offline and in replays of history
(``now_ms`` None, or event times in the past) nothing changes.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from stream.core.events import Event
from stream.core.layout import TICK_MS
from stream.core.windows.types import EventColumns

__all__ = [
    "ColumnReorderBuffer",
    "DEFAULT_LATENESS_MS",
    "FUTURE_SLACK_MS",
    "NO_WATERMARK",
    "ReorderBuffer",
    "canonical_key",
    "canonical_order",
    "tick_ceil",
]

DEFAULT_LATENESS_MS = 120_000
FUTURE_SLACK_MS = 5_000
"""How far past the wall clock an input's newest event time still moves the watermark (live)."""
NO_WATERMARK = -(2**62)

M = TypeVar("M")


def canonical_key(ev: Event) -> tuple[int, str, str]:
    """Per-user canonical order: event time, then type, then event id."""
    return (ev.ts_ms, ev.type, ev.event_id)


def canonical_order(ts: NDArray[np.int64], view: NDArray[np.int8],
                    event_ids: Sequence[str] | NDArray[np.object_]) -> NDArray[np.intp]:
    """The permutation that puts events (as columns) in canonical order, like sorting by
    :func:`canonical_key`: event time, then type ("click" < "view"), then event id."""
    order = np.lexsort((view, ts))
    key = ts[order] * 2 + view[order]
    ties = np.flatnonzero(key[1:] == key[:-1])
    if len(ties):
        # runs of equal (time, type): order each by event id (rare; Python sort per run)
        run_start = ties[np.flatnonzero(np.diff(ties, prepend=-2) != 1)]
        for lo in run_start.tolist():
            hi = lo + 1
            while hi < len(key) and key[hi] == key[lo]:
                hi += 1
            seg = order[lo:hi].tolist()
            seg.sort(key=lambda i: event_ids[i])
            order[lo:hi] = seg
    return order


def tick_ceil(ts_ms: int) -> int:
    """End of the evaluation tick that contains ts_ms."""
    return (ts_ms // TICK_MS + 1) * TICK_MS


@dataclass(slots=True)
class _Input:
    max_ts: int = NO_WATERMARK
    idle: bool = False


class _Watermarked:
    """The inputs of a partition and its watermark (shared by both reorder buffers)."""

    def __init__(self, inputs: Sequence[str], *, lateness_ms: int = DEFAULT_LATENESS_MS,
                 max_events: int = 100_000) -> None:
        if not inputs:
            raise ValueError("a reorder buffer needs at least one input")
        if lateness_ms < 0:
            raise ValueError("lateness_ms must be >= 0")
        self._inputs = {name: _Input() for name in inputs}
        self.lateness_ms = lateness_ms
        self.max_events = max_events
        self.released_to = NO_WATERMARK  # everything with ts < released_to has been released
        self.forced = 0  # events released ahead of the watermark because the buffer was over its cap
        self.now_ms: int | None = None  # the wall clock, live (set by the caller); None: no clamp

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def full(self) -> bool:
        return len(self) >= self.max_events

    def set_idle(self, input_name: str, idle: bool = True) -> None:
        self._inputs[input_name].idle = idle

    def is_idle(self, input_name: str) -> bool:
        return self._inputs[input_name].idle

    def max_seen(self) -> int:
        return max(i.max_ts for i in self._inputs.values())

    def _reached(self, inp: _Input) -> int:
        """How far an input moves the watermark: its newest event time, live at most the wall clock
        plus ``FUTURE_SLACK_MS``."""
        if self.now_ms is None:
            return inp.max_ts
        return min(inp.max_ts, self.now_ms + FUTURE_SLACK_MS)

    def watermark(self) -> int:
        """Everything strictly below this event time may be released."""
        active = [self._reached(i) for i in self._inputs.values() if not i.idle]
        if not active:
            top = max(self._reached(i) for i in self._inputs.values())
            if top == NO_WATERMARK:
                return NO_WATERMARK
            end = tick_ceil(top)
            return end if self.now_ms is None else min(end, self.now_ms + FUTURE_SLACK_MS)
        low = min(active)
        return NO_WATERMARK if low == NO_WATERMARK else low - self.lateness_ms

    def behind(self) -> list[str]:
        """Inputs that hold the watermark back (the others run ahead and may be paused)."""
        active = {n: self._reached(i) for n, i in self._inputs.items() if not i.idle}
        if not active:
            return []
        low = min(active.values())
        return [n for n, t in active.items() if t == low]

    def runs_ahead(self) -> bool:
        """Whether some input runs ahead of one that holds the watermark back (pausing it helps)."""
        active = [self._reached(i) for i in self._inputs.values() if not i.idle]
        return bool(active) and min(active) != max(active)


class ReorderBuffer(_Watermarked, Generic[M]):
    """Holds events until the watermark passes them, then releases them in canonical order.

    ``meta`` travels with each event (the live worker keeps Kafka positions there). Events whose
    time is below what was already released are *late*: ``push`` returns False and does not buffer
    them; the caller applies them as late (volume only).
    """

    def __init__(self, inputs: Sequence[str], *, lateness_ms: int = DEFAULT_LATENESS_MS,
                 max_events: int = 100_000) -> None:
        super().__init__(inputs, lateness_ms=lateness_ms, max_events=max_events)
        self._heap: list[tuple[int, str, str, int, Event, M]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, input_name: str, ev: Event, meta: M) -> bool:
        """Buffer one event; False when it is late (below the released frontier)."""
        inp = self._inputs[input_name]
        inp.idle = False
        if ev.ts_ms > inp.max_ts:
            inp.max_ts = ev.ts_ms
        if ev.ts_ms < self.released_to:
            return False
        self._seq += 1
        heapq.heappush(self._heap, (ev.ts_ms, ev.type, ev.event_id, self._seq, ev, meta))
        return True

    def push_many(self, input_name: str, events: Sequence[Event], metas: Sequence[M]) -> list[int]:
        """:meth:`push` of several events of one input (one message's); returns the indices of the
        late ones (not buffered)."""
        inp = self._inputs[input_name]
        inp.idle = False
        if events:
            inp.max_ts = max(inp.max_ts, max(ev.ts_ms for ev in events))
        heap = self._heap
        push = heapq.heappush
        floor = self.released_to
        seq = self._seq
        late: list[int] = []
        for i, (ev, meta) in enumerate(zip(events, metas)):
            ts = ev.ts_ms
            if ts < floor:
                late.append(i)
                continue
            seq += 1
            push(heap, (ts, ev.type, ev.event_id, seq, ev, meta))
        self._seq = seq
        return late

    def release(self, force_to: int | None = None) -> tuple[list[tuple[Event, M]], int]:
        """Pop every buffered event below the watermark, in canonical order; return them and it.

        Over the cap with no input running ahead (or at twice the cap), the oldest events are
        forced out too, and the watermark moves just past the newest of them (module docstring).
        ``force_to``: force out everything up to that event time as well (the caller's overload).
        """
        wm = self.watermark()
        out: list[tuple[Event, M]] = []
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] < wm:
            e = pop(heap)
            out.append((e[4], e[5]))
        if wm > self.released_to:
            self.released_to = wm
        if force_to is not None and force_to >= self.released_to:
            n = len(out)
            while heap and heap[0][0] <= force_to:
                e = pop(heap)
                out.append((e[4], e[5]))
            self.released_to = force_to + 1
            self.forced += len(out) - n
        over = len(heap) - self.max_events
        if over > 0 and (over >= self.max_events or not self.runs_ahead()):
            n = len(out)
            while len(heap) > self.max_events:
                e = pop(heap)
                out.append((e[4], e[5]))
            last = out[-1][0].ts_ms
            while heap and heap[0][0] == last:  # the rest of that millisecond: released_to is a time
                e = pop(heap)
                out.append((e[4], e[5]))
            self.released_to = max(self.released_to, last + 1)
            self.forced += len(out) - n
        return out, max(wm, self.released_to)

    def drain(self) -> tuple[list[tuple[Event, M]], int]:
        """End of input: mark every input idle and release everything."""
        for inp in self._inputs.values():
            inp.idle = True
        return self.release()


_MAX_CHUNKS = 64  # chunks a column buffer keeps before it merges them


@dataclass(slots=True)
class _Chunk:
    """Rows of one push still waiting in a :class:`ColumnReorderBuffer`: ``rows`` of ``cols`` (None:
    all of them), with their event times and meta already picked, and the lowest and highest of
    those times (a release touches only the chunks the watermark reached). A partial release picks
    the waiting rows' times and meta again but never copies the string columns of the rows left:
    those are copied once, when the row is released (``take``). ``memo``: what a caller derived
    from the chunk's rows (:meth:`ColumnReorderBuffer.summaries`)."""

    cols: EventColumns
    rows: NDArray[np.intp] | None
    ts: NDArray[np.int64]
    meta: NDArray[np.int64]
    lo: int = 0
    hi: int = 0
    memo: Any = None

    @classmethod
    def of(cls, cols: EventColumns, rows: NDArray[np.intp] | None, ts: NDArray[np.int64],
           meta: NDArray[np.int64]) -> _Chunk:
        return cls(cols, rows, ts, meta, int(ts.min()), int(ts.max())) if len(ts) else cls(cols, rows, ts, meta)

    def take(self, i: NDArray[np.intp] | None = None) -> EventColumns:
        """The waiting rows (``i``: those of them) as columns of their own."""
        if i is None:
            return self.cols if self.rows is None else self.cols.take(self.rows)
        return self.cols.take(i if self.rows is None else self.rows[i])

    def keep(self, i: NDArray[np.intp]) -> _Chunk:
        """The chunk of the waiting rows ``i`` only."""
        return _Chunk.of(self.cols, i if self.rows is None else self.rows[i], self.ts[i], self.meta[:, i])


class ColumnReorderBuffer(_Watermarked):
    """:class:`ReorderBuffer` of event columns (the live worker): the same watermark, lateness,
    forced releases and canonical release order, without an object per event.

    Each event carries a row of ``meta`` (an int64 array of shape (k, n): the worker keeps a
    message number, a position, ... there). Chunks are pushed as they come and kept in arrival order
    (which breaks ties of equal canonical keys, as the heap's sequence number does); ``release``
    takes the rows the watermark passed with one mask and puts them in canonical order."""

    def __init__(self, inputs: Sequence[str], *, lateness_ms: int = DEFAULT_LATENESS_MS,
                 max_events: int = 100_000, meta_rows: int = 1) -> None:
        super().__init__(inputs, lateness_ms=lateness_ms, max_events=max_events)
        self.meta_rows = meta_rows
        self._chunks: list[_Chunk] = []
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def pending(self) -> tuple[EventColumns, NDArray[np.int64]]:
        """The buffered rows (arrival order) and their meta, as one chunk."""
        chunks = self._chunks
        if len(chunks) != 1 or chunks[0].rows is not None:
            cols = EventColumns.concat([c.take() for c in chunks])
            meta = (np.concatenate([c.meta for c in chunks], axis=1) if chunks
                    else np.empty((self.meta_rows, 0), np.int64))
            self._chunks = chunks = [_Chunk.of(cols, None, cols.ts, meta)]
        return chunks[0].cols, chunks[0].meta

    def pending_times(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The buffered rows' event times and meta (arrival order), without copying the string
        columns: what the watermark and the fence floors need."""
        chunks = self._chunks
        if len(chunks) == 1:
            return chunks[0].ts, chunks[0].meta
        if not chunks:
            return np.empty(0, np.int64), np.empty((self.meta_rows, 0), np.int64)
        return np.concatenate([c.ts for c in chunks]), np.concatenate([c.meta for c in chunks], axis=1)

    def push(self, input_name: str, cols: EventColumns, meta: NDArray[np.int64]) -> NDArray[np.intp]:
        """Buffer events of one input (at least one); returns the indices of the late ones (below
        the released frontier: not buffered)."""
        inp = self._inputs[input_name]
        inp.idle = False
        ts = cols.ts
        top = int(ts.max())
        if top > inp.max_ts:
            inp.max_ts = top
        late_mask = ts < self.released_to
        if late_mask.any():
            late = np.flatnonzero(late_mask)
            keep = np.flatnonzero(~late_mask)
            if len(keep):
                self._chunks.append(_Chunk.of(cols, keep, ts[keep], meta[:, keep]))
                self._n += len(keep)
            return late
        self._chunks.append(_Chunk(cols, None, ts, meta, int(ts.min()), top))
        self._n += len(ts)
        return np.empty(0, np.intp)

    def summaries(self, summarise: Callable[[NDArray[np.int64], NDArray[np.int64]], Any]) -> list[Any]:
        """``summarise(ts, meta)`` of each chunk of waiting rows, memoised on the chunk: a caller that
        needs something of every waiting row at every step (the pipeline's fence floors) computes
        it only for the chunks that changed since it last asked. One ``summarise`` per buffer."""
        out = []
        for c in self._chunks:
            if c.memo is None:
                c.memo = summarise(c.ts, c.meta)
            out.append(c.memo)
        return out

    def release(self, force_to: int | None = None) -> tuple[EventColumns, NDArray[np.int64], int]:
        """:meth:`ReorderBuffer.release`: the rows the watermark passed (and the forced ones), in
        canonical order, their meta, and the watermark."""
        wm = self.watermark()
        if force_to is None and self._n <= self.max_events:
            # nothing to force: only the chunks the watermark reached are looked at
            if wm > self.released_to:
                self.released_to = wm
            taken: list[tuple[EventColumns, NDArray[np.int64]]] = []
            kept: list[_Chunk] = []
            n_out = 0
            for chunk in self._chunks:
                if chunk.lo >= wm:
                    kept.append(chunk)
                elif chunk.hi < wm:
                    taken.append((chunk.take(), chunk.meta))
                    n_out += len(chunk.ts)
                else:
                    o = chunk.ts < wm
                    i = np.flatnonzero(o)
                    taken.append((chunk.take(i), chunk.meta[:, i]))
                    kept.append(chunk.keep(np.flatnonzero(~o)))
                    n_out += len(i)
            return self._released(taken, kept, self._n - n_out, max(wm, self.released_to))
        ts, _ = self.pending_times()
        out = ts < wm
        if wm > self.released_to:
            self.released_to = wm
        if force_to is not None and force_to >= self.released_to:
            forced = ~out & (ts <= force_to)
            self.forced += int(forced.sum())
            out |= forced
            self.released_to = force_to + 1
        left = len(ts) - int(out.sum())
        over = left - self.max_events
        if over > 0 and (over >= self.max_events or not self.runs_ahead()):
            rest = ts[~out]
            last = int(np.partition(rest, over - 1)[over - 1])  # the newest of the oldest `over`
            forced = ~out & (ts <= last)  # and the rest of that millisecond: released_to is a time
            self.forced += int(forced.sum())
            out |= forced
            self.released_to = max(self.released_to, last + 1)
        # Per chunk, in arrival order: a chunk nothing left stays as it is, and a chunk some rows
        # stay in keeps them by index (the rows still waiting are not copied at every release:
        # with a long lateness bound they are most rows)
        taken = []
        kept = []
        start = 0
        for chunk in self._chunks:
            n = len(chunk.ts)
            o = out[start:start + n]
            start += n
            if o.all():
                taken.append((chunk.take(), chunk.meta))
            elif o.any():
                i = np.flatnonzero(o)
                taken.append((chunk.take(i), chunk.meta[:, i]))
                kept.append(chunk.keep(np.flatnonzero(~o)))
            else:
                kept.append(chunk)
        return self._released(taken, kept, len(ts) - int(out.sum()), max(wm, self.released_to))

    def _released(self, taken: list[tuple[EventColumns, NDArray[np.int64]]], kept: list[_Chunk], left: int,
                  wm: int) -> tuple[EventColumns, NDArray[np.int64], int]:
        """The taken rows in canonical order with their meta, and ``wm``; the kept chunks stay."""
        if not taken:
            return EventColumns.concat([]), np.empty((self.meta_rows, 0), np.int64), wm
        if len(kept) > _MAX_CHUNKS:  # many small chunks: one concatenation now and then
            cols = EventColumns.concat([c.take() for c in kept])
            kept = [_Chunk.of(cols, None, cols.ts, np.concatenate([c.meta for c in kept], axis=1))]
        self._chunks, self._n = kept, left
        sel = EventColumns.concat([c for c, _ in taken])
        smeta = taken[0][1] if len(taken) == 1 else np.concatenate([m for _, m in taken], axis=1)
        order = canonical_order(sel.ts, sel.view, sel.event_ids)
        return sel.take(order), smeta[:, order], wm
