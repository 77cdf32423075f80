"""Value types of the window store: items in, snapshots and results out, event columns."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter, is_not
from typing import Any, NamedTuple, overload

import numpy as np
from numpy.typing import NDArray

from stream.core import layout as L
from stream.core.events import CATEGORIES, Event, EventLists, EventTuple, Reason
from stream.core.policy.state import PolicyState

__all__ = [
    "CATEGORY_CODE",
    "TZ_ABSENT",
    "ApplyResults",
    "ColumnResult",
    "EventColumns",
    "FenceColumn",
    "FencedPart",
    "FencedResult",
    "Item",
    "PartResult",
    "PolicyRecord",
    "Snapshot",
    "Snapshots",
    "UserBatch",
    "UserResult",
    "all_snapshots",
]

PolicyRecord = Mapping[str, str] | PolicyState
"""What a store's ``confirm`` takes per user: policy fields (merged into the user's: the fields a
mapping names replace theirs), or the detector's :class:`PolicyState` object, which replaces the
state and is held as is until its fields are needed (a write, ``load_policy``)."""

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


def all_snapshots(results: Sequence[UserResult]) -> Snapshots:
    """Every user's snapshots of one ``apply``, in result order, as one columnar batch."""
    if isinstance(results, ApplyResults) and results.batch is not None:
        return results.batch
    return Snapshots.concat([r.snapshots for r in results])


class ApplyResults(list[UserResult]):
    """``apply``'s per-user results; ``batch`` is all their snapshots as one batch when a store has
    it at hand (saves gathering the users' slices back together)."""

    batch: Snapshots | None = None


Strings = NDArray[np.object_]
"""A string column of :class:`EventColumns` (user ids, event ids, age bands: str or None)."""

TZ_ABSENT = -(2**31)
"""Column marker for an event without ``tz_offset_min``."""
CATEGORY_CODE: dict[str, int] = dict(L.CATEGORY_INDEX)


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
    # the string columns are object arrays: a take or a concatenation copies pointers in C
    # (≈ 55 against ≈ 125 ns a row for lists picked by itemgetter)
    bands: Strings
    user_ids: Strings
    event_ids: Strings

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_tuples(cls, events: Sequence[EventTuple]) -> EventColumns:
        """Columns from :func:`stream.core.events.decode_message_tuples` output (never late)."""
        lists = EventLists()
        lists.extend_tuples(list(events))
        return cls.from_lists(lists)

    @classmethod
    def from_lists(cls, ev: EventLists) -> EventColumns:
        """Columns from :func:`stream.core.events.decode_message_into` output (never late)."""
        n = len(ev)
        if n == 0:
            return cls.from_events([])
        tz, types, bands = ev.tz, ev.types, ev.bands
        # counted in C first: the events of one input topic are all of its type, bands often absent
        views = types.count(_VIEW)
        absent = bands.count(None)
        return cls(
            ts=np.fromiter(ev.ts, np.int64, n),
            view=(np.ones(n, np.int8) if views == n else np.zeros(n, np.int8) if not views
                  else np.fromiter(map(_VIEW.__eq__, types), np.int8, n)),
            dwell=np.fromiter(ev.dwell, np.int64, n),
            cat=np.fromiter(map(CATEGORY_CODE.__getitem__, ev.categories), np.int64, n),
            tz=np.fromiter((TZ_ABSENT if t is None else t for t in tz) if None in tz else tz, np.int64, n),
            has_band=(np.zeros(n, np.int8) if absent == n else np.ones(n, np.int8) if not absent
                      else np.fromiter(map(_NOT_NONE, bands), np.int8, n)),
            late=np.zeros(n, np.int8),
            bands=_objects(ev.bands),
            user_ids=_objects(ev.user_ids),
            event_ids=_objects(ev.event_ids),
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
            bands=_objects(bands),
            user_ids=_objects(list(map(_get_user, events))),
            event_ids=_objects(list(map(_get_event_id, events))),
        )

    @classmethod
    def concat(cls, parts: Sequence[EventColumns]) -> EventColumns:
        """The rows of several column sets, one after the other."""
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls.from_events([])
        cat = np.concatenate
        return cls(cat([c.ts for c in parts]), cat([c.view for c in parts]), cat([c.dwell for c in parts]),
                   cat([c.cat for c in parts]), cat([c.tz for c in parts]), cat([c.has_band for c in parts]),
                   cat([c.late for c in parts]), cat([c.bands for c in parts]),
                   cat([c.user_ids for c in parts]), cat([c.event_ids for c in parts]))

    def event(self, i: int) -> Event:
        """Row ``i`` as an :class:`Event` (the fields the columns keep; no item or session id)."""
        tz = int(self.tz[i])
        return Event(self.user_ids[i], int(self.ts[i]), "view" if self.view[i] else "click", self.event_ids[i],
                     CATEGORIES[int(self.cat[i])], int(self.dwell[i]), None if tz == TZ_ABSENT else tz,
                     self.bands[i], None, None)

    def take(self, idx: NDArray[np.intp]) -> EventColumns:
        return EventColumns(self.ts[idx], self.view[idx], self.dwell[idx], self.cat[idx], self.tz[idx],
                            self.has_band[idx], self.late[idx], self.bands[idx], self.user_ids[idx],
                            self.event_ids[idx])


def _objects(values: Sequence[Any]) -> Strings:
    """A 1-D object array of ``values`` (strings or None; never split into characters)."""
    out = np.empty(len(values), object)
    out[:] = values
    return out


@dataclass(slots=True)
class ColumnResult:
    """What :meth:`MemoryWindowStore.apply_columns` did: decided snapshots and refused events."""

    snapshots: Snapshots
    too_late: NDArray[np.intp]  # indices into the input columns
    users: int = 0


@dataclass(frozen=True, slots=True)
class FenceColumn:
    """Each row's fence key and Kafka position, as columns: ``codes`` index ``keys`` (-1: the row
    has no fence), ``positions`` (meaningless where the code is -1). The live pipeline passes the
    codes it keeps per input topic-partition; :meth:`of` builds one from per-row values."""

    codes: NDArray[np.int64]
    keys: Sequence[str]
    positions: NDArray[np.int64]

    @classmethod
    def of(cls, tps: Sequence[str | None], positions: Sequence[int | None]) -> FenceColumn:
        """From each row's ``(fence key, position)``; a row with either one None has no fence."""
        index: dict[str, int] = {}
        codes = [-1 if tp is None or pos is None else index.setdefault(tp, len(index))
                 for tp, pos in zip(tps, positions)]
        return cls(np.array(codes, np.int64), list(index),
                   np.array([-1 if pos is None else pos for pos in positions], np.int64))

    def __len__(self) -> int:
        return len(self.codes)

    def take(self, idx: NDArray[np.intp]) -> FenceColumn:
        return FenceColumn(self.codes[idx], self.keys, self.positions[idx])

    def at(self, i: int) -> tuple[str | None, int | None]:
        """Row ``i``'s ``(fence key, position)``, ``(None, None)`` without a fence."""
        code = int(self.codes[i])
        return (None, None) if code < 0 else (self.keys[code], int(self.positions[i]))


@dataclass(frozen=True, slots=True)
class FencedPart:
    """One group's share of a :meth:`StateTable.apply_fenced` call (the live worker: one partition's
    release): its events in canonical order per user, each with its fence key and Kafka position
    (``fence``), the users without events whose pending tick is to be decided, the group's
    watermark, and how far its fences may settle (per fence key)."""

    cols: EventColumns
    fence: FenceColumn
    due: Sequence[str]
    watermark_ms: int
    commit_floor: Mapping[str, int] | None = None


@dataclass(slots=True)
class PartResult:
    """What :meth:`StateTable.apply_fenced` did with one :class:`FencedPart`."""

    too_late: NDArray[np.intp]  # indices into the part's columns of the refused (too late) events
    duplicates: int  # events the offset fence skipped (applied before)
    users: list[str]  # every user the part touched (with events, or due), in segment order
    pending: list[int | None]  # each of those users' pending tick after the part


@dataclass(slots=True)
class FencedResult:
    """What :meth:`StateTable.apply_fenced` did (the live columnar path)."""

    snapshots: Snapshots  # every newly decided snapshot of every part, part by part, user by user
    parts: list[PartResult]  # one per part, in order
