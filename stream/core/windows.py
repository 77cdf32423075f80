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

Decided snapshots go to the user's *outbox* and stay there until :meth:`WindowStore.confirm`
writes the policy state that consumed them. Every ``apply`` returns the whole outbox, so a worker
that crashed after the state moved on but before its alerts were delivered gets the same snapshots
again after redelivery (the offset fence makes the events themselves no-ops) and re-decides the
same alerts with the same ids.

``confirm(user -> (through_ms, fields))`` stores the policy fields together with ``through_ms``
(one atomic write in Redis, no script); the outbox entries with ``tick_end_ms <= through_ms`` are
dropped by the user's next ``apply``, before anything else, and are never returned again. The pair
is last-writer-wins: a second confirm before that ``apply`` replaces the first (its ``through_ms``,
and the policy fields it names), so the stored policy state always matches the snapshots that are
dropped (the detector's confirms per user only move forward). The Redis twin keeps a snapshot decided at
the end of a call as a header-only "live" marker and copies the ring only when a later call is
about to change it; that is invisible here, where a :class:`Snapshot` is immutable anyway.
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


# Hot-path constants (module globals are cheaper to read than attribute chains).
_NONE, _MAX, _LONGEST, _GAP, _WAKING, _SQ = (
    L.NONE, L.U32_MAX, L.LONGEST_WINDOW_MS, L.SESSION_GAP_MS, L.WAKING_GAP_MAX_MS, L.SQ_UNIT_S2)
_HOUR_MS, _DAY_MS, _TICK_MS, _TZ_BIAS = L.HOUR_MS, L.DAY_MS, L.TICK_MS, L.TZ_BIAS
_S_SS, _S_SE, _S_SD, _S_HH, _S_DH, _S_FD, _S_TZ, _S_MX, _S_PT, _S_LT = (
    L.S_SS, L.S_SE, L.S_SD, L.S_HH, L.S_DH, L.S_FD, L.S_TZ, L.S_MX, L.S_PT, L.S_LT)
_H_BASE, _D_BASE, _X_BASE = L.H_BASE, L.D_BASE, L.X_BASE
_HS, _DS, _XS = L.HOUR_SLOTS, L.DAY_SLOTS, L.DETAIL_SLOTS
_HN, _DN, _XN = len(L.H_FIELDS), len(L.D_FIELDS), len(L.X_FIELDS)
_H_SESS, _D_SESS = L.H_SESSIONS, L.D_SESSIONS
_X_GAP_N, _X_GAP_S, _X_GAP_SQ, _X_GAP_LOG = L.X_GAP_N, L.X_GAP_S, L.X_GAP_SQ, L.X_GAP_LOG
_X_CAT0, _X_VIEWS, _X_DWELL, _X_CLICKS = L.X_CAT0, L.X_VIEWS, L.X_DWELL_S, L.X_CLICKS
_CAT_INDEX = L.CATEGORY_INDEX
_ZERO_H = array("I", bytes(4 * (L.D_BASE - L.H_BASE)))
_ZERO_D = array("I", bytes(4 * (L.X_BASE - L.D_BASE)))
_ZERO_X = array("I", bytes(4 * (L.RING_WORDS - L.X_BASE)))
_ZERO_HN, _ZERO_DN, _ZERO_XN = (array("I", bytes(4 * n)) for n in (_HN, _DN, _XN))
assert L.H_ACTIVE == 0 and L.D_ACTIVE == 0


class _UserState:
    __slots__ = ("rings", "s", "age_band", "fence", "outbox", "confirmed")

    def __init__(self) -> None:
        self.rings = array("I", bytes(L.RING_BYTES))
        self.s = [L.NONE] * len(L.SCALARS)
        self.s[L.S_LT] = 0
        self.age_band: str | None = None
        self.fence: dict[str, tuple[int, set[int]]] = {}
        self.outbox: list[Snapshot] = []
        self.confirmed: int | None = None  # through_ms of the last confirm, until the next apply

    # -- ring helpers ---------------------------------------------------------------------------
    def _add(self, idx: int, inc: int) -> None:
        v = self.rings[idx] + inc
        self.rings[idx] = v if v <= L.U32_MAX else L.U32_MAX

    def _advance(self, hb: int, db: int) -> None:
        """Move ring heads forward, zeroing the slots of buckets that are new or wrapped."""
        s, r = self.s, self.rings
        hh = s[_S_HH]
        if hh == _NONE or hb > hh:
            if hh == _NONE or hb - hh >= _HS:
                r[_H_BASE:_D_BASE] = _ZERO_H
            else:
                for b in range(hh + 1, hb + 1):
                    i = _H_BASE + (b % _HS) * _HN
                    r[i:i + _HN] = _ZERO_HN
            s[_S_HH] = hb
        dh = s[_S_DH]
        if dh == _NONE or db > dh:
            if dh == _NONE or db - dh >= _DS:
                r[_D_BASE:_X_BASE] = _ZERO_D
            else:
                for b in range(dh + 1, db + 1):
                    i = _D_BASE + (b % _DS) * _DN
                    r[i:i + _DN] = _ZERO_DN
            if dh == _NONE or db - dh >= _XS:
                r[_X_BASE:] = _ZERO_X
            else:
                for b in range(dh + 1, db + 1):
                    i = _X_BASE + (b % _XS) * _XN
                    r[i:i + _XN] = _ZERO_XN
            s[_S_DH] = db

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
        """Apply one event; may return the snapshot of a tick it decides, or a rejection.

        The hot path of the offline detector: index arithmetic is inlined on purpose.
        """
        s = self.s
        ts = ev.ts_ms
        mx = s[_S_MX]
        if mx != _NONE and ts < mx - _LONGEST:
            return Reason.TOO_LATE
        decided: Snapshot | None = None
        tick = ts // _TICK_MS
        if not late:
            pt = s[_S_PT]
            if pt != _NONE and tick > pt:
                # the state as of the tick end: before anything of this event (tz, age band) lands
                decided = self.snapshot_at((pt + 1) * _TICK_MS)
                s[_S_PT] = _NONE
        tz = ev.tz_offset_min
        if tz is not None:
            s[_S_TZ] = tz + _TZ_BIAS
        else:
            tz = s[_S_TZ] - _TZ_BIAS if s[_S_TZ] != _NONE else 0
        if ev.age_band is not None:
            self.age_band = ev.age_band
        lt = ts + tz * 60_000
        hb = lt // _HOUR_MS
        db = lt // _DAY_MS
        hh = s[_S_HH]
        dh = s[_S_DH]
        if hh == _NONE or hb > hh or dh == _NONE or db > dh:
            self._advance(hb, db)
            hh = s[_S_HH]
            dh = s[_S_DH]
        r = self.rings
        hi = _H_BASE + (hb % _HS) * _HN
        di = _D_BASE + (db % _DS) * _DN
        xi = _X_BASE + (db % _XS) * _XN
        is_view = ev.type == "view"
        dwell = ev.dwell_ms if is_view else 0
        if late:
            inc = dwell
            s[_S_LT] += 1
        else:
            end = ts + dwell
            se = s[_S_SE]
            if se == _NONE or ts > se + _GAP:
                if se != _NONE:
                    self._close_session()
                s[_S_SS] = ts
                s[_S_SE] = end
                s[_S_SD] = db
                inc = dwell
                v = r[hi + _H_SESS] + 1
                r[hi + _H_SESS] = v if v <= _MAX else _MAX
                v = r[di + _D_SESS] + 1
                r[di + _D_SESS] = v if v <= _MAX else _MAX
                if se != _NONE and ts - se < _WAKING:
                    gap_ms = ts - se
                    g = gap_ms / 1000.0
                    for off, val in ((_X_GAP_N, 1), (_X_GAP_S, gap_ms // 1000),
                                     (_X_GAP_SQ, _round(g * g / _SQ)), (_X_GAP_LOG, _log_fixed(g))):
                        v = r[xi + off] + val
                        r[xi + off] = v if v <= _MAX else _MAX
            elif end > se:
                inc = end - se
                s[_S_SE] = end
            else:
                inc = 0
            if s[_S_PT] == _NONE or tick > s[_S_PT]:
                s[_S_PT] = tick
        if inc:
            if hb > hh - _HS:
                v = r[hi] + inc  # H_ACTIVE is field 0
                r[hi] = v if v <= _MAX else _MAX
            if db > dh - _DS:
                v = r[di] + inc  # D_ACTIVE is field 0
                r[di] = v if v <= _MAX else _MAX
        if db > dh - _XS:
            if inc:
                c = xi + _X_CAT0 + _CAT_INDEX[ev.category]
                v = r[c] + inc
                r[c] = v if v <= _MAX else _MAX
            if is_view:
                v = r[xi + _X_VIEWS] + 1
                r[xi + _X_VIEWS] = v if v <= _MAX else _MAX
                v = r[xi + _X_DWELL] + dwell // 1000
                r[xi + _X_DWELL] = v if v <= _MAX else _MAX
            else:
                v = r[xi + _X_CLICKS] + 1
                r[xi + _X_CLICKS] = v if v <= _MAX else _MAX
        if mx == _NONE or ts > mx:
            s[_S_MX] = ts
        if s[_S_FD] == _NONE or db < s[_S_FD]:
            s[_S_FD] = db
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
        self._policy: dict[str, dict[str, str]] = {}

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
            if st.confirmed is not None:
                # confirm's drop, done lazily (as the Redis twin does): before anything else
                through = st.confirmed
                st.outbox = [x for x in st.outbox if x.tick_end_ms > through]
                st.confirmed = None
            for i, (ev, late, tp, offset) in enumerate(batch.items):
                if tp is not None and offset is not None:
                    if st.seen(tp, offset, floors.get(tp)):
                        res.duplicates += 1
                        continue
                r = st.apply_one(ev, late)
                if r is None:
                    pass
                elif isinstance(r, Snapshot):
                    st.outbox.append(_with_user(r, uid))
                else:
                    res.rejected.append((i, r))
                    continue
                if tp is not None and offset is not None:
                    st.mark(tp, offset)
            pt = st.s[L.S_PT]
            if pt != L.NONE and (pt + 1) * L.TICK_MS <= watermark_ms:
                st.outbox.append(st.snapshot_at((pt + 1) * L.TICK_MS, uid))
                st.s[L.S_PT] = L.NONE
                pt = L.NONE
            res.snapshots = list(st.outbox)
            res.pending_tick = None if pt == L.NONE else pt
            out.append(res)
        return out

    def load_policy(self, user_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for u in user_ids:
            out[u] = dict(self._policy.get(u, {}))
        return out

    def confirm(self, done: Mapping[str, tuple[int, Mapping[str, str]]]) -> None:
        for u, (through_ms, fields) in done.items():
            self._policy.setdefault(u, {}).update(fields)
            st = self._users.get(u)
            if st is not None:
                st.confirmed = through_ms  # last writer wins; the next apply drops the entries

    def state_of(self, user_id: str) -> tuple[tuple[int, ...], str | None, bytes] | None:
        st = self._users.get(user_id)
        if st is None:
            return None
        return tuple(st.s), st.age_band, ring_bytes(st.rings)

    def users(self) -> Iterable[str]:
        return self._users.keys()


def _with_user(snap: Snapshot, user_id: str) -> Snapshot:
    return Snapshot(user_id, snap.tick_end_ms, snap.scalars, snap.age_band, snap.rings)
