"""The detector: released events in, alerts out — the same object offline and live.

One call of :meth:`Detector.process` handles one release of the reorder buffer (docs/semantics.md §1, §5):

1. group the events per user (canonical order) and add users whose pending tick the watermark has
   now passed;
2. one ``WindowStore.apply`` for all of them (the memory store offline; live, the worker's copy of
   each user's state, loaded from Redis on first touch);
3. features for every decided tick, one scorer run for the rows that are eligible;
4. the alert policy per user, in tick order, on a copy of its state;
5. reasons for ML alerts: one more scorer run on "ablated" rows (see :func:`_reasons`).

``process`` does no I/O besides the store and the scorer and does not persist policy state: the
caller publishes the alerts first and then calls :meth:`Detector.commit` (live: only after Kafka
acknowledged them), so a crash in between re-decides the same alerts with the same ids.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import numpy as np
import orjson
from numpy.typing import NDArray

from stream.core import features as F
from stream.core.alerts import Alert, round_floats
from stream.core.alerts import Reason as AlertReason
from stream.core.events import Event, Reason
from stream.core.layout import TICK_MS
from stream.core.levels import LevelsRecord, LevelsUpdate, fold
from stream.core.ordering import canonical_key, canonical_order
from stream.core.policy import (
    AlertPolicy,
    Decision,
    Evaluation,
    PolicyState,
    RuleInputs,
)
from stream.core.scoring import Scorer
from stream.core.windows import (
    ColumnarStore,
    EventColumns,
    FencedColumnarStore,
    FenceColumn,
    FencedPart,
    FencedResult,
    Item,
    PolicyRecord,
    Snapshots,
    UserBatch,
    WindowStore,
    all_snapshots,
)
from stream.core.windows.types import Strings

__all__ = [
    "SCORE_DECIMALS",
    "ColumnRelease",
    "TOP_REASONS",
    "Detector",
    "Outcome",
    "Position",
    "Release",
    "Stats",
    "Tap",
    "baselines_from",
]

SCORE_DECIMALS = 6
TOP_REASONS = 3


Tap = Callable[[Snapshots, NDArray[np.float32], F.RuleArrays], None]
M = TypeVar("M")  # what the caller attaches to each event (live: its message and position)


@dataclass(slots=True)
class Outcome(Generic[M]):
    """What one release produced; ``policy`` is persisted by :meth:`Detector.commit`."""

    alerts: list[Alert] = field(default_factory=list)
    rejected: list[tuple[Event, M, Reason]] = field(default_factory=list)  # (event, meta, reason)
    confirm: dict[str, tuple[int, PolicyRecord]] = field(default_factory=dict)
    levels: list[LevelsUpdate] = field(default_factory=list)  # risk.levels writes, after the alerts
    applied: int = 0
    late: int = 0
    duplicates: int = 0
    evaluations: int = 0
    scored: int = 0


@dataclass(slots=True)
class Stats:
    applied: int = 0
    late: int = 0
    duplicates: int = 0
    rejected: int = 0
    evaluations: int = 0
    scored: int = 0
    alerts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, o: Outcome[Any]) -> None:
        self.applied += o.applied
        self.late += o.late
        self.duplicates += o.duplicates
        self.rejected += len(o.rejected)
        self.evaluations += o.evaluations
        self.scored += o.scored
        for a in o.alerts:
            self.alerts[f"{a.kind}/{a.level}"] += 1


@dataclass(frozen=True, slots=True)
class Release(Generic[M]):
    """What a reorder buffer released for one partition (``group``); offline has one group."""

    released: Sequence[tuple[Event, M]]
    watermark_ms: int
    late: Sequence[tuple[Event, M]] = ()
    commit_floor: Mapping[str, int] | None = None
    group: int = 0


@dataclass(frozen=True, slots=True)
class ColumnRelease:
    """A release as columns (the live worker): no event objects, no per-event metadata.

    ``cols``: the released events in canonical order, then the late ones (``cols.late`` set), in
    arrival order; ``fence``: each row's fence key and Kafka position. What
    :meth:`Detector.process` refuses of it comes back in ``Outcome.rejected`` as ``(event, (group,
    row), reason)``, ``row`` indexing these columns."""

    cols: EventColumns
    n_late: int
    fence: FenceColumn
    watermark_ms: int
    commit_floor: Mapping[str, int] | None = None
    group: int = 0


Position = Callable[[M], tuple[str | None, int | None]]
"""An event's ``(fence key, position)`` from what the caller attached to it."""


class Detector:
    def __init__(self, store: WindowStore, policy: AlertPolicy, scorer: Scorer | None = None,
                 tap: Tap | None = None, *, resident_policy: bool = False) -> None:
        """``tap``, when given, sees every evaluated batch (training backfill, benchmarks).

        ``resident_policy`` keeps the per-user policy state in this object instead of loading it
        from and confirming it to the store around every release: only for the embedded offline
        mode, where every release is committed before the next and nothing is redelivered. Live,
        the store must hold it, so that a crash between deciding and publishing re-decides.
        """
        self.tap = tap
        self.store = store
        self.policy = policy
        self.scorer = scorer
        self._resident: dict[str, PolicyState] | None = {} if resident_policy else None
        self._pending: dict[int, dict[str, int]] = defaultdict(dict)
        self._pending_heap: dict[int, list[tuple[int, str]]] = defaultdict(list)

    def refresh_model(self) -> bool:
        """Serve a changed model file, with its thresholds (the policy file's explicit ones win).

        A model whose thresholds do not fit the policy is refused like a broken file: the current
        model and policy keep serving. Returns True when a new model now serves.
        """
        if self.scorer is None:
            return False
        fresh: list[AlertPolicy] = []
        if not self.scorer.maybe_reload(lambda info: fresh.append(self.policy.for_model(info.thresholds))):
            return False
        if fresh:
            self.policy = fresh[-1]
        return True

    # -- pending ticks (per group: a partition live, the whole log offline) ------------------------
    def drop_group(self, group: int) -> None:
        """Forget a partition's pending ticks (revoked: its new owner rebuilds them on redelivery)."""
        self._pending.pop(group, None)
        self._pending_heap.pop(group, None)

    @property
    def _fenced_columns(self) -> bool:
        """Whether the store takes the live columnar path (:class:`FencedColumnarStore`, no outbox).
        Not ``isinstance`` of the runtime-checkable protocol: that walks the protocol's members at
        every call (≈ 60 µs on a slow core, once per partition and step)."""
        store = self.store
        return hasattr(store, "apply_fenced") and bool(getattr(store, "fenced_columns", False))

    def _set_pending(self, group: int, user: str, tick: int | None) -> None:
        pending = self._pending[group]
        if tick is None:
            pending.pop(user, None)
        elif pending.get(user) != tick:
            pending[user] = tick
            heapq.heappush(self._pending_heap[group], (tick, user))

    def _due(self, group: int, watermark_ms: int, touched: Iterable[str]) -> list[str]:
        due: list[str] = []
        heap = self._pending_heap[group]
        pending = self._pending[group]
        while heap and (heap[0][0] + 1) * TICK_MS <= watermark_ms:
            tick, user = heapq.heappop(heap)
            if pending.get(user) == tick and user not in touched:
                due.append(user)
        return due

    def users_of(self, releases: Release[M] | ColumnRelease | Sequence[Release[M] | ColumnRelease]) -> list[str]:
        """Every user that :meth:`process` of these releases would touch, without changing anything:
        the users of their events and the users whose pending tick the watermark passed.

        A live caller loads them first (the only step that can fail on I/O), so that ``process``
        itself never fails half-way and never needs a retry (which would not be idempotent: due
        users are popped and earlier releases applied before a later load).
        """
        users: dict[str, None] = {}
        for rel in (releases,) if isinstance(releases, (Release, ColumnRelease)) else releases:
            if isinstance(rel, ColumnRelease):
                users.update(dict.fromkeys(rel.cols.user_ids.tolist()))
            else:
                for events in (rel.released, rel.late):
                    for ev, _ in events:
                        users[ev.user_id] = None
            heap = self._pending_heap.get(rel.group)
            if not heap:
                continue
            pending = self._pending[rel.group]
            todo = [0]  # heap order: a node's children are never due before it
            while todo:
                i = todo.pop()
                if i < len(heap) and (heap[i][0] + 1) * TICK_MS <= rel.watermark_ms:
                    tick, user = heap[i]
                    if pending.get(user) == tick:
                        users[user] = None
                    todo += (2 * i + 1, 2 * i + 2)
        return list(users)

    # -- releases -----------------------------------------------------------------------------------
    def process(self, releases: Release[M] | ColumnRelease | Sequence[Release[M] | ColumnRelease],
                position: Position[M] | None = None) -> Outcome[M]:
        """Apply releases (one store call each), then evaluate all decided ticks together.

        ``position(meta)`` gives an event's ``(fence key, position)`` for the offset fence.
        """
        out: Outcome[M] = Outcome()
        parts: list[Snapshots] = []
        rels = (releases,) if isinstance(releases, (Release, ColumnRelease)) else releases
        if self._fenced_columns and len(rels) > 1 and all(isinstance(r, ColumnRelease) for r in rels) \
                and len({r.group for r in rels}) == len(rels):
            # the live worker's releases, one per partition: one store call (per-call costs are
            # most of a small step's)
            parts.append(self._apply_release_columns(rels, out))  # type: ignore[arg-type]
        else:
            for rel in rels:
                if isinstance(rel, ColumnRelease):
                    parts.append(self._apply_release_columns([rel], out))  # type: ignore[arg-type]
                else:
                    parts.append(self._apply(rel, position, out))
        parts = [p for p in parts if len(p)]
        if parts:
            self._evaluate(parts, out)
        return out

    def process_columns(self, cols: EventColumns, watermark_ms: int) -> tuple[Outcome[Any], NDArray[np.intp]]:
        """The embedded offline fast path: canonical-order event columns, one memory-store call.

        Needs a :class:`ColumnarStore` (the memory store); the store itself decides users whose
        pending tick the watermark passed. Returns the outcome and the indices of the refused (too
        late) events.
        """
        if not isinstance(self.store, ColumnarStore):
            raise TypeError(f"process_columns needs a ColumnarStore, not {type(self.store).__name__}")
        out: Outcome[Any] = Outcome()
        res = self.store.apply_columns(cols, watermark_ms)
        out.applied = len(cols) - len(res.too_late)
        if len(res.snapshots):
            self._evaluate([res.snapshots], out)
        return out, res.too_late

    def _apply(self, rel: Release[M], position: Position[M] | None, out: Outcome[M]) -> Snapshots:
        store = self.store
        if position is not None and self._fenced_columns:
            return self._apply_columns(store, rel, position, out)  # type: ignore[arg-type]
        per_user: dict[str, list[tuple[Item, M]]] = defaultdict(list)
        new = tuple.__new__
        for events, late in ((rel.released, False), (rel.late, True)):
            if position is None:
                for ev, meta in events:
                    per_user[ev.user_id].append((new(Item, (ev, late, None, None)), meta))
            else:
                for ev, meta in events:
                    tp, off = position(meta)
                    per_user[ev.user_id].append((new(Item, (ev, late, tp, off)), meta))
        out.late += len(rel.late)
        if rel.late:
            for items in per_user.values():
                items.sort(key=lambda im: canonical_key(im[0].event))
        batches = [UserBatch(u, [im for im, _ in items]) for u, items in per_user.items()]
        batches += [UserBatch(u, ()) for u in self._due(rel.group, rel.watermark_ms, per_user)]
        if not batches:
            return Snapshots.empty()
        results = self.store.apply(batches, rel.watermark_ms, rel.commit_floor)
        rejected = duplicates = 0
        for res in results:
            self._set_pending(rel.group, res.user_id, res.pending_tick)
            duplicates += res.duplicates
            if res.rejected:
                items = per_user[res.user_id]
                for i, reason in res.rejected:
                    item, meta = items[i]
                    out.rejected.append((item.event, meta, reason))
                rejected += len(res.rejected)
        out.duplicates += duplicates
        out.applied += len(rel.released) + len(rel.late) - duplicates - rejected
        return all_snapshots(results)

    def _apply_columns(self, store: FencedColumnarStore, rel: Release[M], position: Position[M],
                       out: Outcome[M]) -> Snapshots:
        """:meth:`_apply` as one columnar store call (the live path; no per-user batches): the same
        users, fences, rejections (in the same order) and snapshots."""
        released, late = rel.released, rel.late
        items = [*released, *late] if late else released
        out.late += len(late)
        events: Sequence[Event]
        metas: Sequence[M]
        events, metas = zip(*items) if items else ((), ())
        cols = EventColumns.from_events(events, [False] * len(released) + [True] * len(late) if late else False)
        due = self._due(rel.group, rel.watermark_ms, set(cols.user_ids.tolist()))
        if not events and not due:
            return Snapshots.empty()
        first_seen = cols.user_ids  # the per-user path's user order: first appearance, released then late
        if late:
            # released events are in canonical order; late ones go in between, per user (a stable
            # sort: an event equal in canonical key to a released one stays after it, as per user)
            order = canonical_order(cols.ts, cols.view, cols.event_ids)
            cols = cols.take(order)
            il = order.tolist()
            events = [events[i] for i in il]
            metas = [metas[i] for i in il]
        if metas:
            tps, positions = zip(*map(position, metas))
        else:
            tps = positions = ()
        fence = FenceColumn.of(tps, positions)
        fenced = store.apply_fenced([FencedPart(cols, fence, due, rel.watermark_ms, rel.commit_floor)])
        res = fenced.parts[0]
        for u, pt in zip(res.users, res.pending):
            self._set_pending(rel.group, u, pt)
        for i in _too_late_in_order(res.too_late, first_seen, cols.user_ids):
            out.rejected.append((events[i], metas[i], Reason.TOO_LATE))
        out.duplicates += res.duplicates
        out.applied += len(events) - res.duplicates - len(res.too_late)
        return fenced.snapshots

    def _apply_release_columns(self, rels: Sequence[ColumnRelease], out: Outcome[tuple[int, int]]) -> Snapshots:
        """:class:`ColumnRelease` s of distinct groups: :meth:`_apply_columns` without events or metas
        to carry (the same users, fences, rejections in the same order, and snapshots), in one store
        call when the store has the columnar entry."""
        store = self.store
        if not self._fenced_columns:
            # a store without the columnar entry: the per-user path, on events made from the rows
            return Snapshots.concat([self._apply_release_per_user(rel, out) for rel in rels])
        taken: list[tuple[ColumnRelease, EventColumns, NDArray[np.intp] | None]] = []
        fparts: list[FencedPart] = []
        for rel in rels:
            cols = rel.cols
            out.late += rel.n_late
            due = self._due(rel.group, rel.watermark_ms, set(cols.user_ids.tolist()))
            if not len(cols) and not due:
                continue
            fence = rel.fence
            order: NDArray[np.intp] | None = None
            if rel.n_late:
                # released events are in canonical order; late ones go in between, per user (a stable
                # sort: an event equal in canonical key to a released one stays after it, as per user)
                order = canonical_order(cols.ts, cols.view, cols.event_ids)
                cols = cols.take(order)
                fence = fence.take(order)
            taken.append((rel, cols, order))
            fparts.append(FencedPart(cols, fence, due, rel.watermark_ms, rel.commit_floor))
        if not fparts:
            return Snapshots.empty()
        fenced: FencedResult = cast(FencedColumnarStore, store).apply_fenced(fparts)
        for (rel, cols, order), res in zip(taken, fenced.parts):
            group = rel.group
            for u, pt in zip(res.users, res.pending):
                self._set_pending(group, u, pt)
            # the per-user path's user order: first appearance, released then late
            for i in _too_late_in_order(res.too_late, rel.cols.user_ids, cols.user_ids):
                row = i if order is None else int(order[i])
                out.rejected.append((cols.event(i), (group, row), Reason.TOO_LATE))
            out.duplicates += res.duplicates
            out.applied += len(cols) - res.duplicates - len(res.too_late)
        return fenced.snapshots

    def _apply_release_per_user(self, rel: ColumnRelease, out: Outcome[tuple[int, int]]) -> Snapshots:
        """A :class:`ColumnRelease` through the per-user :meth:`_apply`, on events made from its rows."""
        cols, group = rel.cols, rel.group
        n = len(cols)
        pairs = [(cols.event(i), (*rel.fence.at(i), i)) for i in range(n)]
        k = n - rel.n_late
        sub: Outcome[tuple[str | None, int | None, int]] = Outcome()
        snaps = self._apply(Release(pairs[:k], rel.watermark_ms, pairs[k:], rel.commit_floor, group),
                            lambda m: (m[0], m[1]), sub)
        out.rejected += [(ev, (group, m[2]), reason) for ev, m, reason in sub.rejected]
        out.late += sub.late
        out.duplicates += sub.duplicates
        out.applied += sub.applied
        return snaps

    def policy_fields(self, user_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """The persisted policy state of users, wherever it lives (store, or resident offline)."""
        if self._resident is None:
            return self.store.load_policy(user_ids)
        res = self._resident
        return {u: res[u].to_fields() if u in res else {} for u in user_ids}

    def commit(self, outcome: Outcome[Any], *, write: bool = True) -> None:
        """Persist the policy state of an outcome whose alerts were delivered; empty the outboxes.

        Called after every ``process`` (a store that keeps state in the worker writes the changes of
        events that decided nothing too). ``write=False``: confirm only, a store that writes
        asynchronously writes at its next checkpoint (the live pipeline's checkpointed writes).
        """
        if self._resident is None:
            if write:
                self.store.confirm(outcome.confirm)
            else:
                self.store.confirm(outcome.confirm, write=False)  # type: ignore[call-arg]

    # -- evaluation -------------------------------------------------------------------------------
    def _evaluate(self, parts: Sequence[Snapshots], out: Outcome[Any]) -> None:
        """Score and decide the snapshots of ``parts`` (one per store call) as one batch.

        The features are computed part by part and only they are joined: the window rings (2.5 KB
        a row) are never copied into one array (measured: 0.6 µs per event with uploads)."""
        snaps: Snapshots | _Rows
        if len(parts) == 1:
            snaps = parts[0]
            x, rules = F.compute_arrays(snaps.rings, snaps.scalars, snaps.tick_end)
        else:
            computed = [F.compute_arrays(p.rings, p.scalars, p.tick_end) for p in parts]
            x = np.concatenate([c[0] for c in computed])
            rules = F.RuleArrays(*(np.concatenate([getattr(c[1], f) for c in computed])
                                   for f in F.RuleArrays.__slots__))
            snaps = _Rows([u for p in parts for u in p.user_ids], np.concatenate([p.tick_end for p in parts]),
                          [b for p in parts for b in p.age_bands])
        if self.tap is not None:
            self.tap(snaps if isinstance(snaps, Snapshots) else Snapshots.concat(parts), x, rules)
        n = len(snaps.user_ids)
        out.evaluations += n
        scores: list[float | None] = [None] * n
        model_version: str | None = None
        if self.scorer is not None:
            eligible = np.nonzero(rules.history_days >= self.policy.min_history_days())[0]
            if len(eligible):
                p = self.scorer.score(x[eligible])
                for i, v in zip(eligible.tolist(), p.tolist()):
                    scores[i] = round(v, SCORE_DECIMALS)
                out.scored += len(eligible)
            model_version = self.scorer.info.model_version
        uids = snaps.user_ids
        ticks = snaps.tick_end.tolist()
        bands = snaps.age_bands
        users = sorted(set(uids))
        rank = {u: i for i, u in enumerate(users)}
        order = np.lexsort((snaps.tick_end, np.fromiter((rank[u] for u in uids), np.int64, n))).tolist()
        if self._resident is not None:
            resident = self._resident
            states = {u: resident.get(u) or resident.setdefault(u, PolicyState()) for u in users}
        else:
            states = self.store.load_policy_states(users)  # copies: nothing changes in the store before commit
        today = rules.today_active_min.tolist()
        session = rules.session_min.tolist()
        minute = rules.local_minute.tolist()
        day = rules.local_day.tolist()
        history = rules.history_days.tolist()
        decided: list[tuple[int, Decision]] = []
        decide = self.policy.decide
        for i in order:
            ev = Evaluation(
                user_id=uids[i],
                tick_end_ms=ticks[i],
                score=scores[i],
                rules=RuleInputs(
                    today_active_min=today[i],
                    session_min=session[i],
                    local_minute=minute[i],
                    local_day=day[i],
                    age_band=bands[i],
                    history_days=history[i],
                ),
            )
            for d in decide(states[uids[i]], ev):
                decided.append((i, d))
        by_row: dict[int, list[Alert]] = defaultdict(list)
        if decided:
            ml_rows = [i for i, d in decided if d.kind == "ml_risk"]
            reasons = _reasons(self.scorer, x, ml_rows, scores) if ml_rows else {}
            feats_of = _feature_maps(x, sorted({i for i, _ in decided}))
            for i, d in decided:
                feats = dict(feats_of[i])  # each alert its own mapping
                if d.kind == "ml_risk":
                    rs = () if d.level == "cleared" else reasons.get(i, ())
                    alert = d.to_alert(model_version=model_version, reasons=rs, features=feats)
                else:
                    alert = d.to_alert(features=feats)
                out.alerts.append(alert)
                by_row[i].append(alert)
        # current levels (risk.levels): a record whenever a tick's alerts change them, and one at the
        # first tick of a user whose levels are not known (new, or state expired)
        for i in order:
            st = states[uids[i]]
            prev = st.levels
            row_alerts = by_row.get(i)
            if prev is not None and not row_alerts:
                continue
            new = fold(prev or {}, row_alerts or ())
            if prev is None or new != prev:
                st.levels = new
                u = uids[i]
                out.levels.append(LevelsUpdate(u, LevelsRecord(
                    u, bands[i], ticks[i], model_version, scores[i], new) if new else None))
        if self._resident is None:
            last_tick: dict[str, int] = {}
            for u, t in zip(uids, ticks):
                if t > last_tick.get(u, -1):
                    last_tick[u] = t
            out.confirm = {u: (last_tick[u], states[u]) for u in users}  # handed over to the store


@dataclass(slots=True)
class _Rows:
    """What :meth:`Detector._evaluate` reads of snapshots besides their features."""

    user_ids: list[str]
    tick_end: NDArray[np.int64]
    age_bands: list[str | None]


def _too_late_in_order(too_late: NDArray[np.intp], first_seen: Strings, uids: Strings) -> list[int]:
    """Refused rows (indices into ``uids``) in the per-user path's order: user by user in order of
    first appearance in ``first_seen``, then by row (both: :class:`EventColumns` user ids)."""
    if not len(too_late):
        return []
    rank = {u: r for r, u in enumerate(dict.fromkeys(first_seen.tolist()))}
    return sorted(too_late.tolist(), key=lambda i: (rank[uids[i]], i))


def _feature_maps(x: NDArray[np.float32], rows: list[int]) -> dict[int, dict[str, float]]:
    """The alert ``features`` of rows of ``x``: name -> value as :func:`_num` gives it (rounded, 0.0
    for a non-finite value), every row's rounding done in one :func:`round_floats`."""
    xs = x[rows].astype(np.float64)
    xs[~np.isfinite(xs)] = 0.0
    flat = round_floats(xs, SCORE_DECIMALS)
    nf = F.N_FEATURES
    return {r: dict(zip(F.FEATURE_NAMES, flat[j * nf:(j + 1) * nf], strict=True)) for j, r in enumerate(rows)}


def _num(v: Any) -> float:
    f = float(v)
    return 0.0 if math.isnan(f) or math.isinf(f) else round(f, SCORE_DECIMALS)


def baselines_from(scorer: Scorer) -> NDArray[np.float32] | None:
    """The model's reference feature values (``feature_baseline`` metadata), in feature order."""
    raw = scorer.info.metadata.get("feature_baseline")
    if not raw:
        return None
    try:
        d = orjson.loads(raw)
        return np.array([float(d[n]) for n in F.FEATURE_NAMES], dtype=np.float32)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _reasons(scorer: Scorer | None, x: NDArray[np.float32], rows: list[int],
             scores: list[float | None]) -> dict[int, tuple[AlertReason, ...]]:
    """Top contributing features by ablation.

    For an alerting row, each feature in turn is replaced by the model's baseline value (the
    healthy-population median it ships in ``feature_baseline``) and the row is re-scored; the
    contribution of a feature is ``score - score_with_that_feature_at_baseline``. The features
    with the largest positive contributions are the reasons. One scorer run covers all rows.
    """
    if scorer is None:
        return {}
    base = baselines_from(scorer)
    if base is None:
        return {}
    rows = sorted(set(r for r in rows if scores[r] is not None))
    if not rows:
        return {}
    nf = F.N_FEATURES
    ablated = np.repeat(x[rows], nf, axis=0).reshape(len(rows), nf, nf)
    diag = np.arange(nf)
    ablated[:, diag, diag] = base[None, :]
    p = scorer.score(ablated.reshape(len(rows) * nf, nf)).reshape(len(rows), nf)
    out: dict[int, tuple[AlertReason, ...]] = {}
    for j, r in enumerate(rows):
        s = float(scores[r])  # type: ignore[arg-type]
        contrib = np.round(s - p[j].astype(np.float64), SCORE_DECIMALS)
        top = [k for k in np.argsort(-contrib, kind="stable")[:TOP_REASONS] if contrib[k] > 0]
        out[r] = tuple(
            AlertReason.for_feature(F.FEATURE_NAMES[k], _num(x[r, k]), _num(base[k]), _num(contrib[k]))
            for k in top
        )
    return out
