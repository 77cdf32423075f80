"""The state table both window stores hold: per-user rows, the update rule over them, outboxes and policy."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from stream.core import layout as L
from stream.core.events import Event, Reason
from stream.core.policy.state import PolicyState
from stream.core.windows.fence import Fence, fence_mark, fence_seen
from stream.core.windows.kernel import GUARD, TOO_LATE, apply_kernel
from stream.core.windows.types import (
    _EMPTY,
    _NS,
    ApplyResults,
    ColumnResult,
    EventColumns,
    FenceColumn,
    FencedPart,
    FencedResult,
    PartResult,
    PolicyRecord,
    Snapshots,
    UserBatch,
    UserResult,
)

__all__ = ["StateRows", "StateTable"]


@dataclass(frozen=True, slots=True)
class _KernelRows:
    """The event columns the window kernel reads (and the rows' age bands): what a call groups user
    by user. The user and event ids are left out: copying object columns costs most of a take."""

    ts: NDArray[np.int64]
    view: NDArray[np.int8]
    dwell: NDArray[np.int64]
    cat: NDArray[np.int64]
    tz: NDArray[np.int64]
    has_band: NDArray[np.int8]
    late: NDArray[np.int8]
    bands: NDArray[np.object_]

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def take(cls, cols: EventColumns, idx: NDArray[np.intp] | None) -> _KernelRows:
        """Rows ``idx`` of ``cols`` (None: all of them, not copied)."""
        if idx is None:
            return cls(*(getattr(cols, f) for f in cls.__slots__))
        return cls(*(getattr(cols, f)[idx] for f in cls.__slots__))

    @classmethod
    def concat(cls, parts: Sequence[_KernelRows]) -> _KernelRows:
        if not parts:
            return cls.take(EventColumns.from_events([]), None)
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__slots__))


class StateRows(NamedTuple):
    """Some users' state as held in a :class:`StateTable`, row ``i`` for the ``i``-th user."""

    rings: NDArray[np.uint32]
    scalars: NDArray[np.int64]
    bands: list[str | None]
    fences: list[Fence | None]
    policies: list[dict[str, str] | None]


class StateTable:
    """Window and policy state of the users a process holds, and the update rule over it.

    State lives in two tables indexed by a per-user slot: ``uint32 [users, RING_WORDS]`` rings and
    ``int64 [users, S]`` scalars; the compiled kernel updates them in place. Beside them: each
    user's age band, offset fence, outbox of decided snapshots and policy fields. Both window stores
    hold one (the memory store is nothing more; the Redis store loads rows into it and writes them
    back). ``keep_outbox=False`` (the embedded offline mode and the worker, which decide and confirm
    every release before the next) skips keeping decided snapshots for redelivery.
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
        # A user's policy state as its last confirm gave it, when that was an object (the detector's):
        # the fields are made from it when asked for (a write, load_policy), not at every confirm,
        # and the next evaluation copies it instead of parsing the fields.
        self._pstate: dict[str, PolicyState] = {}
        self._pstale: set[str] = set()  # users whose _policy fields lag their _pstate

    @staticmethod
    def _fresh_scalars(n: int) -> NDArray[np.int64]:
        sc = np.full((n, _NS), L.NONE, np.int64)
        sc[:, L.S_LT] = 0
        return sc

    def __len__(self) -> int:
        return len(self._slot)

    def users(self) -> Iterable[str]:
        return self._slot.keys()

    def slots(self, user_ids: Sequence[str] | NDArray[np.object_]) -> NDArray[np.int64]:
        """Each user's state row, created (empty) for users never seen."""
        ids = user_ids.tolist() if isinstance(user_ids, np.ndarray) else user_ids
        slot = self._slot
        known = list(map(slot.get, ids))
        if None not in known:
            return np.array(known, np.int64)
        out = np.empty(len(ids), np.int64)
        for i, u in enumerate(ids):
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

    def _run(self, cols: EventColumns | _KernelRows, seg_slot: NDArray[np.int64], seg_lo: NDArray[np.int64],
             seg_hi: NDArray[np.int64], watermark_ms: int | NDArray[np.int64],
             ) -> tuple[Snapshots, NDArray[np.int64], NDArray[np.int8], NDArray[np.int64]]:
        """One kernel call: (snapshots, first snapshot row of each segment, each event's status, each
        segment's pending tick after it). ``watermark_ms``: one for all segments, or one each."""
        n_out = len(cols) + len(seg_slot)
        seg_wm = (np.full(len(seg_slot), watermark_ms, np.int64) if np.ndim(watermark_ms) == 0
                  else watermark_ms)
        seg_pt = np.empty(len(seg_slot), np.int64)
        out_rings = np.empty((n_out, L.RING_WORDS), np.uint32)
        out_sc = np.empty((n_out, _NS), np.int64)
        out_tick = np.empty(n_out, np.int64)
        out_abi = np.empty(n_out, np.int64)
        seg_out = np.empty(len(seg_slot), np.int64)
        seg_ab = np.empty(len(seg_slot), np.int64)
        status = np.zeros(len(cols), np.int8)
        GUARD.ensure()
        k = apply_kernel(self._rings, self._sc, seg_slot, seg_lo, seg_hi, cols.ts, cols.view, cols.dwell,
                          cols.cat, cols.tz, cols.has_band, cols.late, seg_wm,
                          out_rings, out_sc, out_tick, out_abi, seg_out, seg_ab, seg_pt, status)
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
        return snaps, seg_out, status, seg_pt

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
        grouped = _KernelRows.take(cols, order)
        snaps, _, status, _ = self._run(grouped, seg_slot.astype(np.int64), seg_lo, seg_hi, watermark_ms)
        return ColumnResult(snaps, order[np.flatnonzero(status == TOO_LATE)], len(seg_slot))

    # -- the columnar path with the offset fence (live) -------------------------------------------------
    def apply_fenced(self, parts: Sequence[FencedPart]) -> FencedResult:
        """:meth:`apply` without per-user batches, for several groups in one kernel call: the same
        result as applying the parts one after another.

        A part's events (any users, canonical order per user) are checked against and marked in each
        user's offset fence in order, exactly as :meth:`apply` does item by item; its ``due`` users
        have no events there and their pending tick is decided against the part's watermark. Each
        user of a part is one segment (users in order of first appearance, then ``due``), parts in
        order. Only without an outbox (``keep_outbox=False``: the worker), which is what makes
        per-user results unnecessary.
        """
        if self.keep_outbox:
            raise ValueError("apply_fenced needs a table without an outbox (keep_outbox=False)")
        segs: list[tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]] = []
        wms: list[int] = []
        grouped: list[_KernelRows] = []
        applied: list[NDArray[np.intp]] = []  # per part: its rows in the grouped columns, in order
        dups: list[int] = []
        base = 0  # rows of the earlier parts in the grouped columns
        for part in parts:
            rows, duplicates, seg = self._fence_part(part, base)
            applied.append(rows)
            dups.append(duplicates)
            segs.append(seg)
            wms.append(part.watermark_ms)
            if len(rows):
                n = len(part.cols)
                grouped.append(_KernelRows.take(part.cols, None if len(rows) == n and (rows == np.arange(n)).all()
                                                else rows))
            base += len(rows)
        seg_slot = np.concatenate([s for s, _, _ in segs]) if segs else np.empty(0, np.int64)
        if not len(seg_slot):
            return FencedResult(_EMPTY, [PartResult(np.empty(0, np.intp), d, [], []) for d in dups])
        seg_lo = np.concatenate([lo for _, lo, _ in segs])
        seg_hi = np.concatenate([hi for _, _, hi in segs])
        seg_wm = np.repeat(np.array(wms, np.int64), [len(s) for s, _, _ in segs])
        cols = grouped[0] if len(grouped) == 1 else _KernelRows.concat(grouped)
        snaps, _, status, seg_pt = self._run(cols, seg_slot, seg_lo, seg_hi, seg_wm)
        uids, fences = self._uids, self._fence
        results: list[PartResult] = []
        base = g = 0
        pts = seg_pt.tolist()
        for part, rows, duplicates, (slots, _, _) in zip(parts, applied, dups, segs):
            too_late = rows[np.flatnonzero(status[base:base + len(rows)] == TOO_LATE)]
            base += len(rows)
            for i in too_late.tolist():
                tp, off = part.fence.at(i)
                if tp is not None and off is not None:
                    # refused events are not applied: a redelivery is refused again, not skipped
                    fences[self._slot[part.cols.user_ids[i]]][tp][1].discard(off)
            k = len(slots)
            results.append(PartResult(too_late, duplicates, [uids[s] for s in slots.tolist()],
                                      [None if pt == L.NONE else pt for pt in pts[g:g + k]]))
            g += k
        return FencedResult(snaps, results)

    def _fence_part(self, part: FencedPart, base: int,
                    ) -> tuple[NDArray[np.intp], int, tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]]:
        """A part's events through the offset fences: (its applied rows, user by user; how many were
        duplicates; its segments (slot, first row, end row), rows counted from ``base``)."""
        cols, fc = part.cols, part.fence
        floors = part.commit_floor or {}
        n = len(cols)
        slots = self.slots(cols.user_ids)
        # one segment per user, in order of first appearance; a stable sort keeps each user's events
        # in their (canonical) order
        uniq, first, inv = np.unique(slots, return_index=True, return_inverse=True)
        rank = np.empty(len(uniq), np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
        user_rank = rank[inv]
        order = np.argsort(user_rank, kind="stable")
        keep = np.ones(n, np.bool_)
        duplicates = self._fence_groups(slots, user_rank, fc, floors, keep) if n else 0
        kept_sorted = keep[order]
        rows = order[kept_sorted]  # the applied events, user by user
        s_sorted = slots[order]
        starts = np.flatnonzero(np.diff(s_sorted, prepend=-1)) if n else np.empty(0, np.intp)
        cum = np.concatenate([[0], np.cumsum(kept_sorted, dtype=np.int64)]) + base
        seg_slot = s_sorted[starts].astype(np.int64)
        seg_lo = cum[starts]
        # each segment ends where the next begins; no events, no segments (not one ending at 0)
        seg_hi = cum[np.append(starts[1:], n).astype(np.intp)] if len(starts) else cum[:0]
        if len(part.due):
            due_slots = self.slots(part.due).astype(np.int64)
            end = np.full(len(due_slots), base + len(rows), np.int64)
            seg_slot = np.concatenate([seg_slot, due_slots])
            seg_lo = np.concatenate([seg_lo, end])
            seg_hi = np.concatenate([seg_hi, end])
        return rows, duplicates, (seg_slot, seg_lo.astype(np.int64), seg_hi.astype(np.int64))

    def _fence_groups(self, slots: NDArray[np.int64], user_rank: NDArray[np.int64], fc: FenceColumn,
                      floors: Mapping[str, int], keep: NDArray[np.bool_]) -> int:
        """The offset fence of a part's events, one (user, fence key) at a time: clears ``keep`` of
        the duplicates and returns how many there were. The same outcome as :meth:`apply`'s
        ``fence_seen`` + ``fence_mark`` per event, in the part's order: only a group's first event
        can move the frontier (the floor is the same for all), and the fences of different keys
        never meet. A group of new positions (all above the frontier, none applied, none twice: any
        part of fresh deliveries) is marked with set operations; any other group goes event by
        event."""
        n = len(slots)
        group = user_rank * (len(fc.keys) + 1) + (fc.codes + 1)  # codes -1 (no fence): group 0 of a user
        order = np.argsort(group, kind="stable")  # each group's events in the part's order
        g_sorted = group[order]
        starts = np.flatnonzero(np.diff(g_sorted, prepend=-1))
        heads = order[starts]
        positions = fc.positions[order].tolist()
        keys, fences = fc.keys, self._fence
        duplicates = 0
        for lo, hi, s, code in zip(starts.tolist(), np.append(starts[1:], n).tolist(), slots[heads].tolist(),
                                   fc.codes[heads].tolist()):
            if code < 0:
                continue
            tp = keys[code]
            fence = fences.get(s)
            if fence is None:
                fence = fences[s] = {}
            offs = positions[lo:hi]
            floor = floors.get(tp)
            frontier, applied = fence.get(tp, (-1, None))
            # the frontier once fence_seen has moved it up to the floor (if it does)
            bound = frontier if floor is None or floor - 1 <= frontier else floor - 1
            if (min(offs) > bound
                    and (applied is None or applied.isdisjoint(offs))
                    and (hi - lo == 1 or len(set(offs)) == hi - lo)):
                # fence_seen of the first (the move, forgetting what it passed), fence_mark of each
                if applied is None:
                    applied = set(offs)
                elif bound != frontier:
                    applied = {o for o in applied if o > bound}
                    applied.update(offs)
                else:
                    applied.update(offs)
                fence[tp] = (bound, applied)
                continue
            for j, off in zip(order[lo:hi].tolist(), offs):  # the general case, as apply does
                if fence_seen(fence, tp, off, floor):
                    keep[j] = False
                    duplicates += 1
                else:
                    fence_mark(fence, tp, off)
        return duplicates

    # -- the WindowStore operations --------------------------------------------------------------------
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
        snaps, seg_out, status, _ = self._run(cols, slots, seg_lo, seg_hi, watermark_ms)
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
            out[u] = dict(self._fields(u) or {})
        return out

    def load_policy_states(self, user_ids: Sequence[str]) -> dict[str, PolicyState]:
        """Each user's policy state as an object the caller owns (a copy: changing it changes nothing
        here until it is confirmed); parsed from the fields when no confirmed object is held.

        Raises:
            ValueError: a user's stored fields are corrupt (:meth:`PolicyState.from_fields`).
        """
        held, fields = self._pstate, self._policy
        out: dict[str, PolicyState] = {}
        for u in user_ids:
            st = held.get(u)
            out[u] = st.copy() if st is not None else PolicyState.from_fields(fields.get(u) or {})
        return out

    def confirm(self, done: Mapping[str, tuple[int, PolicyRecord]]) -> None:
        for u, (through_ms, pol) in done.items():
            if isinstance(pol, PolicyState):
                self._pstate[u] = pol  # held as is: the caller gives it up (see load_policy_states)
                self._pstale.add(u)
            else:  # fields: merged into the fields the user has (an object held before included)
                self._fields(u)
                self._pstate.pop(u, None)
                self._pstale.discard(u)
                self._policy.setdefault(u, {}).update(pol)
            s = self._slot.get(u)
            if s is not None and self.keep_outbox:
                self._confirmed[s] = through_ms  # last writer wins; the next apply drops the entries

    def state_of(self, user_id: str) -> tuple[tuple[int, ...], str | None, bytes] | None:
        s = self._slot.get(user_id)
        if s is None or not self._has_window_state(s):
            return None
        return (tuple(self._sc[s].tolist()), self._bands[s],
                self._rings[s].astype(L.RING_DTYPE).tobytes())

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._slot

    def load_row(self, user_id: str, rings: bytes, scalars: NDArray[np.int64], band: str | None,
                 fence: Fence | None) -> None:
        """Set a user's window state (its row is created if needed), e.g. as loaded from storage."""
        [s] = self.slots([user_id]).tolist()
        self._rings[s] = np.frombuffer(rings, L.RING_DTYPE)
        self._sc[s] = scalars
        self._bands[s] = band
        if fence:
            self._fence[s] = fence

    def set_policy(self, user_id: str, fields: dict[str, str]) -> None:
        """Set a user's policy fields, e.g. as loaded from storage."""
        self._policy[user_id] = fields
        self._pstate.pop(user_id, None)
        self._pstale.discard(user_id)

    def _fields(self, user_id: str) -> dict[str, str] | None:
        """A user's policy fields, brought up to date with the object confirmed last (if any)."""
        if user_id in self._pstale:
            self._pstale.discard(user_id)
            self._policy.setdefault(user_id, {}).update(self._pstate[user_id].to_fields())
        return self._policy.get(user_id)

    def rows(self, user_ids: Sequence[str]) -> StateRows:
        """The state of held users (all of them must be held), for writing it somewhere."""
        slots = np.array([self._slot[u] for u in user_ids], np.int64)
        return StateRows(
            rings=self._rings[slots], scalars=self._sc[slots],
            bands=[self._bands[s] for s in slots.tolist()],
            fences=[self._fence.get(s) for s in slots.tolist()],
            policies=[self._fields(u) for u in user_ids])

    def _has_window_state(self, s: int) -> bool:
        """Whether any event was ever applied to the user (a fresh row has no newest event time)."""
        return bool(self._sc[s, L.S_MX] != L.NONE)

    def forget(self, user_ids: Iterable[str]) -> None:
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
            self._pstate.pop(u, None)
            self._pstale.discard(u)
            self._free.append(s)
