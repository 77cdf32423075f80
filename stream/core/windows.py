"""Per-user rolling windows over event time: the store interface and its in-memory twin.

The update rule (sessions, buckets, ticks, late events, the offset fence) is specified here and in
``stream/lua/apply.lua``; the contract tests in ``tests/contract`` run the same cases against both.
Events for one user arrive in canonical order (:func:`stream.core.ordering.canonical_key`); the
store applies them, and returns a :class:`Snapshot` of the state at the end of every evaluation tick
that becomes decidable (DESIGN §8):

* a tick ``k`` with activity becomes *pending* when its first event is applied;
* it is decided just before an event of a later tick is applied, or at the end of the call when the
  partition watermark has passed its end ``(k + 1) * TICK_MS``.

A late event (flagged by the reorder buffer: older than what was already released) only adds to the
volume counters of the buckets it belongs to and to the late counter; it never touches the session
or the pending tick, so it never re-opens a decision.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from stream.core import layout as L
from stream.core.events import Event, Reason

MAX_FENCE_OFFSETS = 4096
"""Applied-but-uncommitted offsets remembered per (user, topic-partition) above the commit floor."""


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
    """A user's window state at the end of one evaluation tick."""

    user_id: str
    tick_end_ms: int
    scalars: tuple[int, ...]
    age_band: str | None
    rings: bytes  # RING_BYTES of big-endian u32 words


@dataclass(slots=True)
class UserResult:
    user_id: str
    snapshots: list[Snapshot] = field(default_factory=list)
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
        """Apply each user's items atomically; return snapshots of the ticks decided."""
        ...

    def state_of(self, user_id: str) -> tuple[tuple[int, ...], str | None, bytes] | None:
        """The raw state (scalars, age band, ring bytes) of one user, or None; for tests and tools."""
        ...


_BIG_ENDIAN = sys.byteorder == "big"


def ring_bytes(words: array) -> bytes:  # type: ignore[type-arg]
    """Serialise ring words exactly as Redis stores them (big-endian u32)."""
    if _BIG_ENDIAN:
        return words.tobytes()
    copy = array("I", words)
    copy.byteswap()
    return copy.tobytes()


def _round(x: float) -> int:
    # floor(x + 0.5), the rounding the Lua script uses too (Python's round() is banker's).
    return math.floor(x + 0.5)


def _log_fixed(seconds: float) -> int:
    return _round(L.LOG_SCALE * math.log(1.0 + seconds))


class _UserState:
    __slots__ = ("rings", "s", "age_band", "fence")

    def __init__(self) -> None:
        self.rings = array("I", bytes(L.RING_BYTES))
        self.s = [L.NONE] * len(L.SCALARS)
        self.s[L.S_LT] = 0
        self.age_band: str | None = None
        self.fence: dict[str, tuple[int, set[int]]] = {}

    # -- ring helpers ---------------------------------------------------------------------------
    def _add(self, idx: int, inc: int) -> None:
        v = self.rings[idx] + inc
        self.rings[idx] = v if v <= L.U32_MAX else L.U32_MAX

    def _advance(self, hb: int, db: int) -> None:
        s, r = self.s, self.rings
        hh = s[L.S_HH]
        if hh == L.NONE or hb > hh:
            lo = hb - L.HOUR_SLOTS if hh == L.NONE else max(hh, hb - L.HOUR_SLOTS)
            nf = len(L.H_FIELDS)
            for b in range(lo + 1, hb + 1):
                base = L.h_index(b, 0)
                r[base : base + nf] = array("I", bytes(4 * nf))
            s[L.S_HH] = hb
        dh = s[L.S_DH]
        if dh == L.NONE or db > dh:
            nf = len(L.D_FIELDS)
            lo = db - L.DAY_SLOTS if dh == L.NONE else max(dh, db - L.DAY_SLOTS)
            for b in range(lo + 1, db + 1):
                base = L.d_index(b, 0)
                r[base : base + nf] = array("I", bytes(4 * nf))
            nf = len(L.X_FIELDS)
            lo = db - L.DETAIL_SLOTS if dh == L.NONE else max(dh, db - L.DETAIL_SLOTS)
            for b in range(lo + 1, db + 1):
                base = L.x_index(b, 0)
                r[base : base + nf] = array("I", bytes(4 * nf))
            s[L.S_DH] = db

    def _close_session(self) -> None:
        s = self.s
        len_ms = s[L.S_SE] - s[L.S_SS]
        sd = s[L.S_SD]
        len_s = len_ms / 1000.0
        lg = _log_fixed(len_s)
        dh = s[L.S_DH]
        if sd > dh - L.DETAIL_SLOTS:
            add = self._add
            add(L.x_index(sd, L.X_CLOSED), 1)
            if len_ms < L.SHORT_SESSION_MS:
                add(L.x_index(sd, L.X_SHORT15), 1)
            if len_ms >= L.LONG_SESSION_MS:
                add(L.x_index(sd, L.X_LONG30), 1)
            add(L.x_index(sd, L.X_LEN_S), len_ms // 1000)
            add(L.x_index(sd, L.X_LOGLEN), lg)
            add(L.x_index(sd, L.X_LOGLEN_SQ), _round(L.LOG_SCALE * math.log(1.0 + len_s) ** 2))
            lc = s[L.S_LC]
            if lc != L.NONE:
                d = (len_ms - lc) / 1000.0
                add(L.x_index(sd, L.X_RMSSD_N), 1)
                add(L.x_index(sd, L.X_RMSSD_SQ), _round(d * d / L.SQ_UNIT_S2))
        if sd > dh - L.DAY_SLOTS:
            self._add(L.d_index(sd, L.D_CLOSED), 1)
            self._add(L.d_index(sd, L.D_LOGLEN), lg)
        s[L.S_LC] = len_ms

    def apply_one(self, ev: Event, late: bool) -> Snapshot | Reason | None:
        """Apply one event; may return the snapshot of a tick it decides, or a rejection."""
        s = self.s
        ts = ev.ts_ms
        mx = s[L.S_MX]
        if mx != L.NONE and ts < mx - L.LONGEST_WINDOW_MS:
            return Reason.TOO_LATE
        decided: Snapshot | None = None
        if ev.tz_offset_min is not None:
            s[L.S_TZ] = ev.tz_offset_min
        if ev.age_band is not None:
            self.age_band = ev.age_band
        tz = s[L.S_TZ] if s[L.S_TZ] != L.NONE else 0
        lt = ts + tz * 60_000
        hb = lt // L.HOUR_MS
        db = lt // L.DAY_MS
        tick = ts // L.TICK_MS
        if not late:
            pt = s[L.S_PT]
            if pt != L.NONE and tick > pt:
                decided = self.snapshot_at((pt + 1) * L.TICK_MS)
                s[L.S_PT] = L.NONE
        self._advance(hb, db)
        dwell = ev.dwell_ms if ev.type == "view" else 0
        if late:
            inc = dwell
            s[L.S_LT] += 1
        else:
            start = ts
            end = ts + dwell
            se = s[L.S_SE]
            if se == L.NONE or start > se + L.SESSION_GAP_MS:
                gap_ms = L.NONE
                if se != L.NONE:
                    self._close_session()
                    gap_ms = start - se
                s[L.S_SS] = start
                s[L.S_SE] = end
                s[L.S_SD] = db
                inc = end - start
                self._add(L.h_index(hb, L.H_SESSIONS), 1)
                self._add(L.d_index(db, L.D_SESSIONS), 1)
                if gap_ms != L.NONE and gap_ms < L.WAKING_GAP_MAX_MS:
                    g = gap_ms / 1000.0
                    self._add(L.x_index(db, L.X_GAP_N), 1)
                    self._add(L.x_index(db, L.X_GAP_S), gap_ms // 1000)
                    self._add(L.x_index(db, L.X_GAP_SQ), _round(g * g / L.SQ_UNIT_S2))
                    self._add(L.x_index(db, L.X_GAP_LOG), _log_fixed(g))
            else:
                inc = end - se if end > se else 0
                if end > se:
                    s[L.S_SE] = end
            s[L.S_PT] = tick if s[L.S_PT] == L.NONE or tick > s[L.S_PT] else s[L.S_PT]
        hh = s[L.S_HH]
        dh = s[L.S_DH]
        if hb > hh - L.HOUR_SLOTS and inc:
            self._add(L.h_index(hb, L.H_ACTIVE), inc)
        if db > dh - L.DAY_SLOTS and inc:
            self._add(L.d_index(db, L.D_ACTIVE), inc)
        if db > dh - L.DETAIL_SLOTS:
            if inc:
                self._add(L.x_index(db, L.X_CAT0 + L.CATEGORY_INDEX[ev.category]), inc)
            if ev.type == "view":
                self._add(L.x_index(db, L.X_VIEWS), 1)
                self._add(L.x_index(db, L.X_DWELL_S), dwell // 1000)
            else:
                self._add(L.x_index(db, L.X_CLICKS), 1)
        if mx == L.NONE or ts > mx:
            s[L.S_MX] = ts
        if s[L.S_FD] == L.NONE or db < s[L.S_FD]:
            s[L.S_FD] = db
        return decided

    def snapshot_at(self, tick_end_ms: int, user_id: str = "") -> Snapshot:
        return Snapshot(user_id, tick_end_ms, tuple(self.s), self.age_band, ring_bytes(self.rings))

    # -- offset fence ---------------------------------------------------------------------------
    def seen(self, tp: str, offset: int, floor: int | None) -> bool:
        frontier, applied = self.fence.get(tp, (-1, set()))
        if floor is not None and floor - 1 > frontier:
            frontier = floor - 1
            applied = {o for o in applied if o > frontier}
            self.fence[tp] = (frontier, applied)
        return offset <= frontier or offset in applied

    def mark(self, tp: str, offset: int) -> None:
        frontier, applied = self.fence.get(tp, (-1, set()))
        applied.add(offset)
        if len(applied) > MAX_FENCE_OFFSETS:
            # Keep the newest offsets; anything older is treated as applied (conservative: skip).
            keep = sorted(applied)[-MAX_FENCE_OFFSETS:]
            frontier = max(frontier, keep[0] - 1)
            applied = set(keep)
        self.fence[tp] = (frontier, applied)


class MemoryWindowStore:
    """The in-memory twin of the Redis window store (offline scoring, unit tests)."""

    def __init__(self) -> None:
        self._users: dict[str, _UserState] = {}

    def __len__(self) -> int:
        return len(self._users)

    def apply(
        self,
        batches: Sequence[UserBatch],
        watermark_ms: int,
        commit_floor: Mapping[str, int] | None = None,
    ) -> list[UserResult]:
        floors = commit_floor or {}
        out: list[UserResult] = []
        for batch in batches:
            uid = batch.user_id
            st = self._users.get(uid)
            if st is None:
                st = self._users[uid] = _UserState()
            res = UserResult(uid)
            for i, (ev, late, tp, offset) in enumerate(batch.items):
                if tp is not None and offset is not None:
                    if st.seen(tp, offset, floors.get(tp)):
                        res.duplicates += 1
                        continue
                r = st.apply_one(ev, late)
                if r is None:
                    pass
                elif isinstance(r, Snapshot):
                    res.snapshots.append(_with_user(r, uid))
                else:
                    res.rejected.append((i, r))
                    continue
                if tp is not None and offset is not None:
                    st.mark(tp, offset)
            pt = st.s[L.S_PT]
            if pt != L.NONE and (pt + 1) * L.TICK_MS <= watermark_ms:
                res.snapshots.append(st.snapshot_at((pt + 1) * L.TICK_MS, uid))
                st.s[L.S_PT] = L.NONE
                pt = L.NONE
            res.pending_tick = None if pt == L.NONE else pt
            out.append(res)
        return out

    def state_of(self, user_id: str) -> tuple[tuple[int, ...], str | None, bytes] | None:
        st = self._users.get(user_id)
        if st is None:
            return None
        return tuple(st.s), st.age_band, ring_bytes(st.rings)

    def users(self) -> Iterable[str]:
        return self._users.keys()


def _with_user(snap: Snapshot, user_id: str) -> Snapshot:
    return Snapshot(user_id, snap.tick_end_ms, snap.scalars, snap.age_band, snap.rings)
