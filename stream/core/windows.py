"""Per-user rolling windows over event time: the store interface, the update rule, the memory store.

The update rule (sessions, buckets, ticks, late events) is one compiled kernel
(:func:`_apply_kernel`, numba) over per-user state rows; every store runs it — the memory store
here, and the Redis store (``stream/redis_store.py``), which is this store with Redis as the
durable copy. The contract tests in ``tests/contract`` run the same cases against all of them.
Events for one user arrive in canonical order (:func:`stream.core.ordering.canonical_key`); the
store applies them, and returns a :class:`Snapshot` of the state at the end of every evaluation tick
that becomes decidable (DESIGN §8):

* a tick ``k`` with activity becomes *pending* when its first event is applied;
* it is decided just before an event of a later tick is applied, or at the end of the call when the
  partition watermark has passed its end ``(k + 1) * TICK_MS``.

A late event (flagged by the reorder buffer: older than what was already released) only adds to the
volume counters of the buckets it belongs to and to the late counter; it never touches the session
or the pending tick, so it never re-opens a decision. Items with a Kafka position pass the offset
fence first (DESIGN §4): a position already applied is a duplicate and skipped.

Decided snapshots go to the user's *outbox* and stay there until :meth:`WindowStore.confirm`
stores the policy state that consumed them; every ``apply`` returns the whole outbox.
``confirm(user -> (through_ms, fields))`` stores the policy fields together with ``through_ms``;
the outbox entries with ``tick_end_ms <= through_ms`` are dropped by the user's next ``apply``,
before anything else, and are never returned again. The pair is last-writer-wins: a second confirm
before that ``apply`` replaces the first (the detector's confirms per user only move forward).
"""

from __future__ import annotations

import math
from functools import partial
from operator import attrgetter, is_not
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, Protocol, overload

import numba
import numpy as np
from numpy.typing import NDArray

from stream.core import layout as L
from stream.core.events import Event, EventTuple, Reason
from stream.core.jit import CacheGuard, constants_key

MAX_FENCE_OFFSETS = 4096
"""Applied-but-uncommitted offsets remembered per (user, topic-partition) above the commit floor."""


_NS = len(L.SCALARS)


class Item(NamedTuple):
    """One event to apply, with its lateness flag and (live only) its Kafka position."""

    event: Event
    late: bool = False
    tp: str | None = None  # "topic:partition"
    offset: int | None = None


@dataclass(frozen=True, slots=True)
class UserBatch:
    user_id: str
    items: Sequence[Item]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A user's window state at the end of one evaluation tick (one row of :class:`Snapshots`)."""

    user_id: str
    tick_end_ms: int
    scalars: tuple[int, ...]
    age_band: str | None
    rings: bytes  # RING_BYTES of big-endian u32 words


class Snapshots:
    """Window states at evaluation tick ends, column-wise: what the feature code consumes.

    ``rings`` is ``uint32 [N, RING_WORDS]`` in native byte order, ``scalars`` ``int64 [N, S]``,
    ``tick_end`` ``int64 [N]``; ``user_ids`` and ``age_bands`` are lists. It behaves like a
    sequence of :class:`Snapshot` rows (iteration, indexing, slicing, equality with a list of
    rows), which is what tests and tools compare; the hot path only touches the arrays.
    """

    __slots__ = ("user_ids", "tick_end", "scalars", "rings", "age_bands")

    def __init__(self, user_ids: list[str], tick_end: NDArray[np.int64], scalars: NDArray[np.int64],
                 rings: NDArray[np.uint32], age_bands: list[str | None]) -> None:
        self.user_ids = user_ids
        self.tick_end = tick_end
        self.scalars = scalars
        self.rings = rings
        self.age_bands = age_bands

    @classmethod
    def empty(cls) -> Snapshots:
        return cls([], np.zeros(0, np.int64), np.zeros((0, _NS), np.int64),
                   np.zeros((0, L.RING_WORDS), np.uint32), [])

    @classmethod
    def from_rows(cls, rows: Sequence[Snapshot]) -> Snapshots:
        if not rows:
            return cls.empty()
        rings = np.frombuffer(b"".join(r.rings for r in rows), dtype=L.RING_DTYPE)
        return cls([r.user_id for r in rows], np.array([r.tick_end_ms for r in rows], np.int64),
                   np.array([r.scalars for r in rows], np.int64).reshape(len(rows), _NS),
                   rings.reshape(len(rows), L.RING_WORDS).astype(np.uint32),
                   [r.age_band for r in rows])

    @classmethod
    def concat(cls, parts: Sequence[Snapshots]) -> Snapshots:
        parts = [p for p in parts if p.user_ids]
        if not parts:
            return _EMPTY
        if len(parts) == 1:
            return parts[0]
        return cls([u for p in parts for u in p.user_ids], np.concatenate([p.tick_end for p in parts]),
                   np.concatenate([p.scalars for p in parts]), np.concatenate([p.rings for p in parts]),
                   [b for p in parts for b in p.age_bands])

    def take(self, rows: slice | Sequence[int] | NDArray[np.intp]) -> Snapshots:
        if isinstance(rows, slice):
            return Snapshots(self.user_ids[rows], self.tick_end[rows], self.scalars[rows],
                             self.rings[rows], self.age_bands[rows])
        idx = np.asarray(rows, dtype=np.intp)
        il = idx.tolist()
        return Snapshots([self.user_ids[i] for i in il], self.tick_end[idx], self.scalars[idx],
                         self.rings[idx], [self.age_bands[i] for i in il])

    def copy(self) -> Snapshots:
        return Snapshots(list(self.user_ids), self.tick_end.copy(), self.scalars.copy(),
                         self.rings.copy(), list(self.age_bands))

    def row(self, i: int) -> Snapshot:
        return Snapshot(self.user_ids[i], int(self.tick_end[i]), tuple(self.scalars[i].tolist()),
                        self.age_bands[i], self.rings[i].astype(L.RING_DTYPE).tobytes())

    def __len__(self) -> int:
        return len(self.user_ids)

    def __iter__(self) -> Iterator[Snapshot]:
        return (self.row(i) for i in range(len(self)))

    @overload
    def __getitem__(self, i: int) -> Snapshot: ...
    @overload
    def __getitem__(self, i: slice) -> Snapshots: ...
    def __getitem__(self, i: int | slice) -> Snapshot | Snapshots:
        if isinstance(i, slice):
            return self.take(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.row(i)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Snapshots | list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Snapshots({list(self)!r})"


_EMPTY = Snapshots.empty()  # shared: results never mutate a Snapshots in place


@dataclass(slots=True)
class UserResult:
    user_id: str
    snapshots: Snapshots = field(default_factory=lambda: _EMPTY)
    rejected: list[tuple[int, Reason]] = field(default_factory=list)  # (item index, reason)
    duplicates: int = 0
    pending_tick: int | None = None


class WindowStore(Protocol):
    """Where window state lives: memory (offline, tests) or Redis (live)."""

    def apply(
        self,
        batches: Sequence[UserBatch],
        watermark_ms: int,
        commit_floor: Mapping[str, int] | None = None,
    ) -> list[UserResult]:
        """Apply each user's items atomically; return the snapshots in each user's outbox."""
        ...

    def load_policy(self, user_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """The policy-state fields of each user ({} for a user without any); names start "pol:"."""
        ...

    def confirm(self, done: Mapping[str, tuple[int, Mapping[str, str]]]) -> None:
        """Per user, atomically: store the policy fields and the tick end they cover.

        Outbox snapshots up to that tick end are never returned again: the user's next ``apply``
        drops them first. A later confirm before that ``apply`` replaces this one (its tick end, and
        the policy fields it names).
        """
        ...

    def state_of(self, user_id: str) -> tuple[tuple[int, ...], str | None, bytes] | None:
        """The raw state (scalars, age band, ring bytes) of one user, or None; for tests and tools."""
        ...


def all_snapshots(results: Sequence[UserResult]) -> Snapshots:
    """Every user's snapshots of one ``apply``, in result order, as one columnar batch."""
    batch = getattr(results, "batch", None)
    if batch is not None:
        return batch  # type: ignore[no-any-return]
    return Snapshots.concat([r.snapshots for r in results])


class ApplyResults(list[UserResult]):
    """``apply``'s per-user results; ``batch`` is all their snapshots as one batch when a store has
    it at hand (saves gathering the users' slices back together)."""

    batch: Snapshots | None = None


# --- the update rule, compiled ------------------------------------------------------------------
# numba freezes these module globals into the compiled code as constants.
_NONE, _MAX, _LONGEST, _GAP, _WAKING, _SQ = (
    L.NONE, L.U32_MAX, L.LONGEST_WINDOW_MS, L.SESSION_GAP_MS, L.WAKING_GAP_MAX_MS, L.SQ_UNIT_S2)
_HOUR_MS, _DAY_MS, _TICK_MS, _TZ_BIAS, _LOG_SCALE = L.HOUR_MS, L.DAY_MS, L.TICK_MS, L.TZ_BIAS, L.LOG_SCALE
_SHORT, _LONG = L.SHORT_SESSION_MS, L.LONG_SESSION_MS
_S_SS, _S_SE, _S_SD, _S_LC, _S_HH, _S_DH, _S_FD, _S_TZ, _S_MX, _S_PT, _S_LT = (
    L.S_SS, L.S_SE, L.S_SD, L.S_LC, L.S_HH, L.S_DH, L.S_FD, L.S_TZ, L.S_MX, L.S_PT, L.S_LT)
_H_BASE, _D_BASE, _X_BASE, _W = L.H_BASE, L.D_BASE, L.X_BASE, L.RING_WORDS
_HS, _DS, _XS = L.HOUR_SLOTS, L.DAY_SLOTS, L.DETAIL_SLOTS
_HN, _DN, _XN = len(L.H_FIELDS), len(L.D_FIELDS), len(L.X_FIELDS)
_H_ACT, _H_SESS, _D_ACT, _D_SESS, _D_CLOSED, _D_LOGLEN = (
    L.H_ACTIVE, L.H_SESSIONS, L.D_ACTIVE, L.D_SESSIONS, L.D_CLOSED, L.D_LOGLEN)
_X_CLOSED, _X_SHORT15, _X_LONG30, _X_LEN_S, _X_LOGLEN, _X_LOGLEN_SQ = (
    L.X_CLOSED, L.X_SHORT15, L.X_LONG30, L.X_LEN_S, L.X_LOGLEN, L.X_LOGLEN_SQ)
_X_GAP_N, _X_GAP_S, _X_GAP_SQ, _X_GAP_LOG, _X_RMSSD_N, _X_RMSSD_SQ = (
    L.X_GAP_N, L.X_GAP_S, L.X_GAP_SQ, L.X_GAP_LOG, L.X_RMSSD_N, L.X_RMSSD_SQ)
_X_CAT0, _X_VIEWS, _X_DWELL, _X_CLICKS = L.X_CAT0, L.X_VIEWS, L.X_DWELL_S, L.X_CLICKS

TZ_ABSENT = -(2**31)
"""Column marker for an event without ``tz_offset_min``."""

_KERNEL_KEY: Final = constants_key(L.LAYOUT_SPEC, L.NONE, L.U32_MAX, L.HOUR_MS, L.DAY_MS, L.TZ_BIAS, TZ_ABSENT)
"""The constants the kernels bake in (see :mod:`stream.core.jit`)."""
APPLIED, TOO_LATE = 0, 1
"""Per-event status the kernel reports."""
CATEGORY_CODE: dict[str, int] = dict(L.CATEGORY_INDEX)


@numba.njit(cache=True, nogil=True)
def _add(r: Any, u: int, i: int, inc: int) -> None:
    v = np.int64(r[u, i]) + inc
    r[u, i] = v if v <= _MAX else _MAX


@numba.njit(cache=True, nogil=True)
def _fixed(x: float) -> int:
    # floor(x + 0.5): the rounding every twin uses (Python's round() is banker's)
    return np.int64(math.floor(x + 0.5))  # type: ignore[return-value]


@numba.njit(cache=True, nogil=True)
def _zero_passed(r: Any, u: int, base: int, slots: int, nfields: int, head: int, new_head: int) -> None:
    """Zero the slots of the buckets a ring head passes moving from ``head`` to ``new_head``
    (all of them when it never moved or moves by a full ring or more)."""
    if head == _NONE or new_head - head >= slots:
        r[u, base:base + slots * nfields] = 0
    else:
        for b in range(head + 1, new_head + 1):
            i = base + (b % slots) * nfields
            r[u, i:i + nfields] = 0


@numba.njit(cache=True, nogil=True)
def _advance(r: Any, sc: Any, u: int, hb: int, db: int) -> None:
    """Move ring heads forward, zeroing the slots of buckets that are new or wrapped."""
    hh = sc[u, _S_HH]
    if hh == _NONE or hb > hh:
        _zero_passed(r, u, _H_BASE, _HS, _HN, hh, hb)
        sc[u, _S_HH] = hb
    dh = sc[u, _S_DH]
    if dh == _NONE or db > dh:
        _zero_passed(r, u, _D_BASE, _DS, _DN, dh, db)  # the day ring and the detail ring share dh
        _zero_passed(r, u, _X_BASE, _XS, _XN, dh, db)
        sc[u, _S_DH] = db


@numba.njit(cache=True, nogil=True)
def _close_session(r: Any, sc: Any, u: int) -> None:
    len_ms = sc[u, _S_SE] - sc[u, _S_SS]
    sd = sc[u, _S_SD]
    len_s = len_ms / 1000.0
    ln = math.log(1.0 + len_s)
    lg = _fixed(_LOG_SCALE * ln)
    dh = sc[u, _S_DH]
    if sd > dh - _XS:
        xi = _X_BASE + (sd % _XS) * _XN
        _add(r, u, xi + _X_CLOSED, 1)
        if len_ms < _SHORT:
            _add(r, u, xi + _X_SHORT15, 1)
        if len_ms >= _LONG:
            _add(r, u, xi + _X_LONG30, 1)
        _add(r, u, xi + _X_LEN_S, len_ms // 1000)
        _add(r, u, xi + _X_LOGLEN, lg)
        _add(r, u, xi + _X_LOGLEN_SQ, _fixed(_LOG_SCALE * (ln * ln)))
        lc = sc[u, _S_LC]
        if lc != _NONE:
            d = (len_ms - lc) / 1000.0
            _add(r, u, xi + _X_RMSSD_N, 1)
            _add(r, u, xi + _X_RMSSD_SQ, _fixed(d * d / _SQ))
    if sd > dh - _DS:
        di = _D_BASE + (sd % _DS) * _DN
        _add(r, u, di + _D_CLOSED, 1)
        _add(r, u, di + _D_LOGLEN, lg)
    sc[u, _S_LC] = len_ms


@numba.njit(cache=True, nogil=True)
def _emit(r: Any, sc: Any, u: int, tick_end: int, abi: int, k: int, out_rings: Any, out_sc: Any,
          out_tick: Any, out_abi: Any) -> int:
    out_rings[k, :] = r[u, :]
    out_sc[k, :] = sc[u, :]
    out_tick[k] = tick_end
    out_abi[k] = abi
    return k + 1


@numba.njit(cache=True, nogil=True)
def _apply_kernel(r: Any, sc: Any, seg_slot: Any, seg_lo: Any, seg_hi: Any,
                  ts_a: Any, view_a: Any, dwell_a: Any, cat_a: Any, tz_a: Any, ab_a: Any, late_a: Any,
                  watermark: int, out_rings: Any, out_sc: Any, out_tick: Any, out_abi: Any,
                  seg_out: Any, seg_ab: Any, status: Any) -> int:
    """Apply each segment's events (one user per segment, canonical order) to state rows.

    Writes a snapshot row for every tick it decides (``out_*``; ``out_abi`` = index of the newest
    applied event that carried an age band, -1 for the band stored before the call), the first
    output row of each segment (``seg_out``), the newest band-carrying event per segment
    (``seg_ab``) and each event's status; returns the number of snapshot rows.
    """
    k = 0
    for g in range(seg_slot.shape[0]):
        u = seg_slot[g]
        seg_out[g] = k
        abi = -1
        for e in range(seg_lo[g], seg_hi[g]):
            ts = ts_a[e]
            mx = sc[u, _S_MX]
            if mx != _NONE and ts < mx - _LONGEST:
                status[e] = TOO_LATE
                continue
            status[e] = APPLIED
            late = late_a[e] != 0
            tick = ts // _TICK_MS
            if not late:
                pt = sc[u, _S_PT]
                if pt != _NONE and tick > pt:
                    # the state as of the tick end: before anything of this event (tz, band) lands
                    k = _emit(r, sc, u, (pt + 1) * _TICK_MS, abi, k, out_rings, out_sc, out_tick, out_abi)
                    sc[u, _S_PT] = _NONE
            tz = tz_a[e]
            if tz != TZ_ABSENT:
                sc[u, _S_TZ] = tz + _TZ_BIAS
            elif sc[u, _S_TZ] != _NONE:
                tz = sc[u, _S_TZ] - _TZ_BIAS
            else:
                tz = 0
            if ab_a[e] != 0:
                abi = e
            lt = ts + tz * 60_000
            hb = lt // _HOUR_MS
            db = lt // _DAY_MS
            if sc[u, _S_HH] == _NONE or hb > sc[u, _S_HH] or sc[u, _S_DH] == _NONE or db > sc[u, _S_DH]:
                _advance(r, sc, u, hb, db)
            hh = sc[u, _S_HH]
            dh = sc[u, _S_DH]
            hi = _H_BASE + (hb % _HS) * _HN
            di = _D_BASE + (db % _DS) * _DN
            xi = _X_BASE + (db % _XS) * _XN
            is_view = view_a[e] != 0
            dwell = dwell_a[e] if is_view else 0
            if late:
                inc = dwell
                sc[u, _S_LT] += 1
            else:
                end = ts + dwell
                se = sc[u, _S_SE]
                if se == _NONE or ts > se + _GAP:
                    if se != _NONE:
                        _close_session(r, sc, u)
                    sc[u, _S_SS] = ts
                    sc[u, _S_SE] = end
                    sc[u, _S_SD] = db
                    inc = dwell
                    _add(r, u, hi + _H_SESS, 1)
                    _add(r, u, di + _D_SESS, 1)
                    if se != _NONE and ts - se < _WAKING:
                        gap_ms = ts - se
                        gs = gap_ms / 1000.0
                        _add(r, u, xi + _X_GAP_N, 1)
                        _add(r, u, xi + _X_GAP_S, gap_ms // 1000)
                        _add(r, u, xi + _X_GAP_SQ, _fixed(gs * gs / _SQ))
                        _add(r, u, xi + _X_GAP_LOG, _fixed(_LOG_SCALE * math.log(1.0 + gs)))
                elif end > se:
                    inc = end - se
                    sc[u, _S_SE] = end
                else:
                    inc = 0
                if sc[u, _S_PT] == _NONE or tick > sc[u, _S_PT]:
                    sc[u, _S_PT] = tick
            if inc != 0:
                if hb > hh - _HS:
                    _add(r, u, hi + _H_ACT, inc)
                if db > dh - _DS:
                    _add(r, u, di + _D_ACT, inc)
            if db > dh - _XS:
                if inc != 0:
                    _add(r, u, xi + _X_CAT0 + cat_a[e], inc)
                if is_view:
                    _add(r, u, xi + _X_VIEWS, 1)
                    _add(r, u, xi + _X_DWELL, dwell // 1000)
                else:
                    _add(r, u, xi + _X_CLICKS, 1)
            if mx == _NONE or ts > mx:
                sc[u, _S_MX] = ts
            if sc[u, _S_FD] == _NONE or db < sc[u, _S_FD]:
                sc[u, _S_FD] = db
        pt = sc[u, _S_PT]
        if pt != _NONE and (pt + 1) * _TICK_MS <= watermark:
            k = _emit(r, sc, u, (pt + 1) * _TICK_MS, abi, k, out_rings, out_sc, out_tick, out_abi)
            sc[u, _S_PT] = _NONE
        seg_ab[g] = abi
    return k


@numba.njit(cache=True, nogil=True)
def _compiled_key() -> int:
    return _KERNEL_KEY


_GUARD = CacheGuard(_KERNEL_KEY, _compiled_key,
                    (_add, _fixed, _zero_passed, _advance, _close_session, _emit, _apply_kernel))


# --- events as columns ----------------------------------------------------------------------------
_get_ts, _get_type, _get_dwell, _get_category, _get_tz, _get_band, _get_user, _get_event_id = (
    attrgetter(a) for a in ("ts_ms", "type", "dwell_ms", "category", "tz_offset_min", "age_band", "user_id",
                            "event_id"))
_VIEW = "view"
_NOT_NONE = partial(is_not, None)


@dataclass(slots=True)
class EventColumns:
    """Events column-wise, in the order they are to be applied (per user: canonical order)."""

    ts: NDArray[np.int64]
    view: NDArray[np.int8]
    dwell: NDArray[np.int64]
    cat: NDArray[np.int64]
    tz: NDArray[np.int64]
    has_band: NDArray[np.int8]
    late: NDArray[np.int8]
    bands: list[str | None]
    user_ids: list[str]
    event_ids: list[str]

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def from_tuples(cls, events: Sequence[EventTuple]) -> EventColumns:
        """Columns from :func:`stream.core.events.decode_message_tuples` output (never late)."""
        n = len(events)
        if n == 0:
            return cls.from_events([])
        user, ts, etype, event_id, category, dwell, tz, band, _, _ = zip(*events)
        bands = list(band)
        return cls(
            ts=np.fromiter(ts, np.int64, n),
            view=np.fromiter(map(_VIEW.__eq__, etype), np.int8, n),
            dwell=np.fromiter(dwell, np.int64, n),
            cat=np.fromiter(map(CATEGORY_CODE.__getitem__, category), np.int64, n),
            tz=np.fromiter((TZ_ABSENT if t is None else t for t in tz), np.int64, n),
            has_band=np.fromiter(map(_NOT_NONE, bands), np.int8, n),
            late=np.zeros(n, np.int8),
            bands=bands,
            user_ids=list(user),
            event_ids=list(event_id),
        )

    @classmethod
    def from_events(cls, events: Sequence[Event], late: Sequence[bool] | bool = False) -> EventColumns:
        n = len(events)
        bands = list(map(_get_band, events))
        lates = np.full(n, 1 if late else 0, np.int8) if isinstance(late, bool) else np.array(late, np.int8)
        return cls(
            ts=np.fromiter(map(_get_ts, events), np.int64, n),
            view=np.fromiter(map(_VIEW.__eq__, map(_get_type, events)), np.int8, n),
            dwell=np.fromiter(map(_get_dwell, events), np.int64, n),
            cat=np.fromiter(map(CATEGORY_CODE.__getitem__, map(_get_category, events)), np.int64, n),
            tz=np.fromiter((TZ_ABSENT if t is None else t for t in map(_get_tz, events)), np.int64, n),
            has_band=np.fromiter(map(_NOT_NONE, bands), np.int8, n),
            late=lates,
            bands=bands,
            user_ids=list(map(_get_user, events)),
            event_ids=list(map(_get_event_id, events)),
        )

    def take(self, idx: NDArray[np.intp]) -> EventColumns:
        il = idx.tolist()
        return EventColumns(self.ts[idx], self.view[idx], self.dwell[idx], self.cat[idx], self.tz[idx],
                            self.has_band[idx], self.late[idx], [self.bands[i] for i in il],
                            [self.user_ids[i] for i in il], [self.event_ids[i] for i in il])


@dataclass(slots=True)
class ColumnResult:
    """What :meth:`MemoryWindowStore.apply_columns` did: decided snapshots and refused events."""

    snapshots: Snapshots
    too_late: NDArray[np.intp]  # indices into the input columns
    users: int = 0


# --- offset fence ------------------------------------------------------------------------------
Fence = dict[str, tuple[int, set[int]]]


def fence_seen(fence: Fence, tp: str, offset: int, floor: int | None) -> bool:
    frontier, applied = fence.get(tp, (-1, set()))
    if floor is not None and floor - 1 > frontier:
        frontier = floor - 1
        applied = {o for o in applied if o > frontier}
        fence[tp] = (frontier, applied)
    return offset <= frontier or offset in applied


def fence_mark(fence: Fence, tp: str, offset: int) -> None:
    frontier, applied = fence.get(tp, (-1, set()))
    applied.add(offset)
    if len(applied) > MAX_FENCE_OFFSETS:
        # Keep the newest offsets; anything older is treated as applied (conservative: skip).
        keep = sorted(applied)[-MAX_FENCE_OFFSETS:]
        frontier = max(frontier, keep[0] - 1)
        applied = set(keep)
    fence[tp] = (frontier, applied)


class MemoryWindowStore:
    """The in-memory twin of the Redis window store (offline scoring, unit tests).

    State lives in two tables indexed by a per-user slot: ``uint32 [users, RING_WORDS]`` rings and
    ``int64 [users, S]`` scalars; the compiled kernel updates them in place. ``keep_outbox=False``
    (the embedded offline mode, which decides and confirms every release before the next) skips
    keeping decided snapshots for redelivery.
    """

    def __init__(self, *, keep_outbox: bool = True) -> None:
        self.keep_outbox = keep_outbox
        self._slot: dict[str, int] = {}
        self._uids: list[str] = []
        self._bands: list[str | None] = []
        self._rings = np.zeros((64, L.RING_WORDS), np.uint32)
        self._sc = self._fresh_scalars(64)
        self._free: list[int] = []  # slots of forgotten users, reused first
        self._fence: dict[int, Fence] = {}
        self._outbox: dict[int, Snapshots] = {}
        self._confirmed: dict[int, int] = {}
        self._policy: dict[str, dict[str, str]] = {}

    @staticmethod
    def _fresh_scalars(n: int) -> NDArray[np.int64]:
        sc = np.full((n, _NS), L.NONE, np.int64)
        sc[:, L.S_LT] = 0
        return sc

    def __len__(self) -> int:
        return len(self._slot)

    def users(self) -> Iterable[str]:
        return self._slot.keys()

    def slots(self, user_ids: Sequence[str]) -> NDArray[np.int64]:
        """Each user's state row, created (empty) for users never seen."""
        slot = self._slot
        out = np.empty(len(user_ids), np.int64)
        for i, u in enumerate(user_ids):
            s = slot.get(u)
            if s is None:
                if self._free:
                    s = slot[u] = self._free.pop()
                    self._uids[s] = u
                else:
                    s = slot[u] = len(self._uids)
                    self._uids.append(u)
                    self._bands.append(None)
            out[i] = s
        n = len(self._uids)
        if n > len(self._rings):
            cap = max(n, 2 * len(self._rings))
            rings = np.zeros((cap, L.RING_WORDS), np.uint32)
            rings[:len(self._rings)] = self._rings
            sc = self._fresh_scalars(cap)
            sc[:len(self._sc)] = self._sc
            self._rings, self._sc = rings, sc
        return out

    def _run(self, cols: EventColumns, seg_slot: NDArray[np.int64], seg_lo: NDArray[np.int64],
             seg_hi: NDArray[np.int64], watermark_ms: int) -> tuple[Snapshots, NDArray[np.int64], NDArray[np.int8]]:
        n_out = len(cols) + len(seg_slot)
        out_rings = np.empty((n_out, L.RING_WORDS), np.uint32)
        out_sc = np.empty((n_out, _NS), np.int64)
        out_tick = np.empty(n_out, np.int64)
        out_abi = np.empty(n_out, np.int64)
        seg_out = np.empty(len(seg_slot), np.int64)
        seg_ab = np.empty(len(seg_slot), np.int64)
        status = np.zeros(len(cols), np.int8)
        _GUARD.ensure()
        k = _apply_kernel(self._rings, self._sc, seg_slot, seg_lo, seg_hi, cols.ts, cols.view, cols.dwell,
                          cols.cat, cols.tz, cols.has_band, cols.late, watermark_ms,
                          out_rings, out_sc, out_tick, out_abi, seg_out, seg_ab, status)
        # resolve user ids and age bands of the rows (a band is the state's as of the row's tick)
        # segment by segment: a user may have two segments in one call
        uids, bands, ev_bands = self._uids, self._bands, cols.bands
        row_users: list[str] = []
        row_bands: list[str | None] = []
        abis = out_abi[:k].tolist()
        bounds = np.append(seg_out, k).tolist()
        for g, (s, last) in enumerate(zip(seg_slot.tolist(), seg_ab.tolist())):
            lo, hi = bounds[g], bounds[g + 1]
            if hi > lo:
                before = bands[s]
                row_users += [uids[s]] * (hi - lo)
                row_bands += [before if a < 0 else ev_bands[a] for a in abis[lo:hi]]
            if last >= 0:
                bands[s] = ev_bands[last]
        snaps = Snapshots(row_users, out_tick[:k], out_sc[:k], out_rings[:k], row_bands)
        return snaps, seg_out, status

    # -- the columnar path (offline) -----------------------------------------------------------------
    def apply_columns(self, cols: EventColumns, watermark_ms: int) -> ColumnResult:
        """Apply events (any users, canonical order per user) and decide what the watermark passed.

        Users with a pending tick the watermark has passed are decided too, whether or not they
        have events here. No offset fence, no outbox: for the embedded offline mode.
        """
        slots = self.slots(cols.user_ids)
        order = np.argsort(slots, kind="stable")
        s_sorted = slots[order]
        starts = np.flatnonzero(np.diff(s_sorted, prepend=-1))
        seg_slot = s_sorted[starts]
        seg_lo = starts.astype(np.int64)
        seg_hi = np.append(starts[1:], len(s_sorted)).astype(np.int64)
        pt = self._sc[:len(self._uids), L.S_PT]
        due = np.flatnonzero((pt != L.NONE) & ((pt + 1) * L.TICK_MS <= watermark_ms))
        if len(due):
            due = np.setdiff1d(due, seg_slot, assume_unique=True)
            seg_slot = np.concatenate([seg_slot, due])
            seg_lo = np.concatenate([seg_lo, np.full(len(due), len(s_sorted), np.int64)])
            seg_hi = np.concatenate([seg_hi, np.full(len(due), len(s_sorted), np.int64)])
        grouped = cols.take(order)
        snaps, _, status = self._run(grouped, seg_slot.astype(np.int64), seg_lo, seg_hi, watermark_ms)
        return ColumnResult(snaps, order[np.flatnonzero(status == TOO_LATE)], len(seg_slot))

    # -- the WindowStore protocol --------------------------------------------------------------------
    def apply(
        self,
        batches: Sequence[UserBatch],
        watermark_ms: int,
        commit_floor: Mapping[str, int] | None = None,
    ) -> list[UserResult]:
        floors = commit_floor or {}
        slots = self.slots([b.user_id for b in batches])
        events: list[Event] = []
        lates: list[bool] = []
        where: list[tuple[int, int]] = []  # (batch index, item index) of each column row
        seg_lo = np.empty(len(batches), np.int64)
        seg_hi = np.empty(len(batches), np.int64)
        results = ApplyResults()
        for g, batch in enumerate(batches):
            s = int(slots[g])
            res = UserResult(batch.user_id)
            results.append(res)
            through = self._confirmed.pop(s, None)
            if through is not None and s in self._outbox:
                # confirm's drop, done lazily (as the Redis twin does): before anything else
                stored = self._outbox.pop(s)
                keep = np.flatnonzero(stored.tick_end > through)
                if len(keep):
                    self._outbox[s] = stored.take(keep)
            fence = self._fence.get(s)
            seg_lo[g] = len(events)
            for i, (ev, late, tp, offset) in enumerate(batch.items):
                if tp is not None and offset is not None:
                    if fence is None:
                        fence = self._fence[s] = {}
                    if fence_seen(fence, tp, offset, floors.get(tp)):
                        res.duplicates += 1
                        continue
                    fence_mark(fence, tp, offset)  # now: a redelivery inside this call is a duplicate
                events.append(ev)
                lates.append(late)
                where.append((g, i))
            seg_hi[g] = len(events)
        cols = EventColumns.from_events(events, lates)
        snaps, seg_out, status = self._run(cols, slots, seg_lo, seg_hi, watermark_ms)
        bounds = np.append(seg_out, len(snaps)).tolist()
        st = status.tolist()
        for j, (g, i) in enumerate(where):
            if st[j] == TOO_LATE:
                results[g].rejected.append((i, Reason.TOO_LATE))
                item = batches[g].items[i]
                if item.tp is not None and item.offset is not None:
                    # refused events are not applied: a redelivery is refused again, not skipped
                    self._fence[int(slots[g])][item.tp][1].discard(item.offset)
        pts = self._sc[slots, L.S_PT].tolist()
        outbox = self._outbox
        for g, (res, s, lo, hi, pt) in enumerate(zip(results, slots.tolist(), bounds, bounds[1:], pts)):
            box = outbox.get(s)
            if hi > lo:
                new = snaps.take(slice(lo, hi))
                if self.keep_outbox:
                    kept = new.copy() if box is None else Snapshots.concat([box, new.copy()])
                    outbox[s] = kept
                    res.snapshots = kept
                else:
                    res.snapshots = new
            elif box is not None and self.keep_outbox:
                res.snapshots = box
            else:
                res.snapshots = _EMPTY
            res.pending_tick = None if pt == L.NONE else pt
        if not self.keep_outbox:
            results.batch = snaps  # every row is new, in result order
        return results

    def load_policy(self, user_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for u in user_ids:
            out[u] = dict(self._policy.get(u, {}))
        return out

    def confirm(self, done: Mapping[str, tuple[int, Mapping[str, str]]]) -> None:
        for u, (through_ms, fields) in done.items():
            self._policy.setdefault(u, {}).update(fields)
            s = self._slot.get(u)
            if s is not None and self.keep_outbox:
                self._confirmed[s] = through_ms  # last writer wins; the next apply drops the entries

    def state_of(self, user_id: str) -> tuple[tuple[int, ...], str | None, bytes] | None:
        s = self._slot.get(user_id)
        if s is None or not self._has_window_state(s):
            return None
        return (tuple(self._sc[s].tolist()), self._bands[s],
                self._rings[s].astype(L.RING_DTYPE).tobytes())

    def _has_window_state(self, s: int) -> bool:
        """Whether any event was ever applied to the user (a fresh row has no newest event time)."""
        return bool(self._sc[s, L.S_MX] != L.NONE)

    def _forget(self, user_ids: Iterable[str]) -> None:
        """Drop users' state (rows are reset and reused); their policy state and outbox too."""
        for u in user_ids:
            s = self._slot.pop(u, None)
            if s is None:
                continue
            self._rings[s] = 0
            self._sc[s] = L.NONE
            self._sc[s, L.S_LT] = 0
            self._bands[s] = None
            self._fence.pop(s, None)
            self._outbox.pop(s, None)
            self._confirmed.pop(s, None)
            self._policy.pop(u, None)
            self._free.append(s)


def warm_up() -> float:
    """Load (or, on a fresh checkout, compile) the numba kernels now; returns the seconds it took.

    The first call of a kernel in a process loads it from numba's on-disk cache (≈ 0.5 s) or
    compiles it (≈ 10 s without a cache); a worker does this before it consumes anything.
    """
    import time

    from stream.core import features

    t = time.perf_counter()
    store = MemoryWindowStore(keep_outbox=False)
    ev = Event("warm-up", 1_735_689_600_000, "click", "warm-up", "other", 0, 0, None, None, None)
    [res] = store.apply([UserBatch("warm-up", [Item(ev)])], 2**62)
    features.compute_arrays(res.snapshots.rings, res.snapshots.scalars, res.snapshots.tick_end)
    return time.perf_counter() - t
