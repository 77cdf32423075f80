"""The detector: released events in, alerts out — the same object offline and live.

One call of :meth:`Detector.process` handles one release of the reorder buffer (DESIGN §1, §8):

1. group the events per user (canonical order) and add users whose pending tick the watermark has
   now passed;
2. one ``WindowStore.apply`` for all of them (memory offline, one pipelined Lua call per user live);
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson
from numpy.typing import NDArray

from stream.core import features as F
from stream.core.alerts import Alert, Reason as AlertReason
from stream.core.events import Event, Reason
from stream.core.layout import TICK_MS
from stream.core.ordering import canonical_key
from stream.core.policy import AlertPolicy, Decision, Evaluation, PolicyState, RuleInputs
from stream.core.scoring import Scorer
from stream.core.windows import Item, Snapshot, UserBatch, WindowStore

SCORE_DECIMALS = 6
TOP_REASONS = 3


Tap = Callable[[Sequence[Snapshot], NDArray[np.float32], F.RuleArrays], None]


class PolicyStore(Protocol):
    """Where per-user policy state lives (memory offline, the user's Redis hash live)."""

    def load(self, user_ids: Sequence[str]) -> dict[str, PolicyState]: ...

    def save(self, states: Mapping[str, PolicyState]) -> None: ...


class MemoryPolicyStore:
    def __init__(self) -> None:
        self._fields: dict[str, dict[str, str]] = {}

    def load(self, user_ids: Sequence[str]) -> dict[str, PolicyState]:
        return {u: PolicyState.from_fields(self._fields.get(u, {})) for u in user_ids}

    def save(self, states: Mapping[str, PolicyState]) -> None:
        for u, st in states.items():
            self._fields[u] = st.to_fields()


@dataclass(slots=True)
class Outcome:
    """What one release produced; ``policy`` is persisted by :meth:`Detector.commit`."""

    alerts: list[Alert] = field(default_factory=list)
    rejected: list[tuple[Event, Any, Reason]] = field(default_factory=list)  # (event, meta, reason)
    policy: dict[str, PolicyState] = field(default_factory=dict)
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

    def add(self, o: Outcome) -> None:
        self.applied += o.applied
        self.late += o.late
        self.duplicates += o.duplicates
        self.rejected += len(o.rejected)
        self.evaluations += o.evaluations
        self.scored += o.scored
        for a in o.alerts:
            self.alerts[f"{a.kind}/{a.level}"] += 1


class Detector:
    def __init__(self, store: WindowStore, policy: AlertPolicy, policy_store: PolicyStore,
                 scorer: Scorer | None = None, tap: Tap | None = None) -> None:
        """``tap``, when given, sees every evaluated batch (training backfill, benchmarks)."""
        self.tap = tap
        self.store = store
        self.policy = policy
        self.policy_store = policy_store
        self.scorer = scorer
        self._pending: dict[str, int] = {}
        self._pending_heap: list[tuple[int, str]] = []

    # -- pending ticks ----------------------------------------------------------------------------
    def pending_users(self) -> int:
        return len(self._pending)

    def _set_pending(self, user: str, tick: int | None) -> None:
        if tick is None:
            self._pending.pop(user, None)
        elif self._pending.get(user) != tick:
            self._pending[user] = tick
            heapq.heappush(self._pending_heap, (tick, user))

    def _due(self, watermark_ms: int, touched: set[str]) -> list[str]:
        due: list[str] = []
        heap = self._pending_heap
        while heap and (heap[0][0] + 1) * TICK_MS <= watermark_ms:
            tick, user = heapq.heappop(heap)
            if self._pending.get(user) == tick and user not in touched:
                due.append(user)
        return due

    # -- one release ------------------------------------------------------------------------------
    def process(
        self,
        released: Sequence[tuple[Event, Any]],
        watermark_ms: int,
        late: Sequence[tuple[Event, Any]] = (),
        commit_floor: Mapping[str, int] | None = None,
        position: Any = None,
    ) -> Outcome:
        """Apply one release; ``meta`` of each event may carry ``(tp, offset)`` for the fence."""
        out = Outcome()
        per_user: dict[str, list[tuple[Item, Any]]] = defaultdict(list)
        new = tuple.__new__
        if position is None:
            for ev, meta in released:
                per_user[ev.user_id].append((new(Item, (ev, False, None, None)), meta))
            for ev, meta in late:
                per_user[ev.user_id].append((new(Item, (ev, True, None, None)), meta))
        else:
            for ev, meta in released:
                tp, off = position(meta)
                per_user[ev.user_id].append((new(Item, (ev, False, tp, off)), meta))
            for ev, meta in late:
                tp, off = position(meta)
                per_user[ev.user_id].append((new(Item, (ev, True, tp, off)), meta))
        out.late = len(late)
        if late:
            for items in per_user.values():
                items.sort(key=lambda im: canonical_key(im[0].event))
        touched = set(per_user)
        batches = [UserBatch(u, [im for im, _ in items]) for u, items in per_user.items()]
        batches += [UserBatch(u, ()) for u in self._due(watermark_ms, touched)]
        if not batches:
            return out
        results = self.store.apply(batches, watermark_ms, commit_floor)
        snaps: list[Snapshot] = []
        for res in results:
            self._set_pending(res.user_id, res.pending_tick)
            snaps.extend(res.snapshots)
            out.duplicates += res.duplicates
            if res.rejected:
                items = per_user[res.user_id]
                for i, reason in res.rejected:
                    item, meta = items[i]
                    out.rejected.append((item.event, meta, reason))
        out.applied = len(released) + len(late) - out.duplicates - len(out.rejected)
        if snaps:
            self._evaluate(snaps, out)
        return out

    def commit(self, outcome: Outcome) -> None:
        """Persist the policy state of an outcome whose alerts were delivered."""
        if outcome.policy:
            self.policy_store.save(outcome.policy)

    # -- evaluation -------------------------------------------------------------------------------
    def _evaluate(self, snaps: list[Snapshot], out: Outcome) -> None:
        x, rules = F.compute(snaps)
        if self.tap is not None:
            self.tap(snaps, x, rules)
        n = len(snaps)
        out.evaluations = n
        scores: list[float | None] = [None] * n
        model_version: str | None = None
        if self.scorer is not None:
            eligible = np.nonzero(rules.history_days >= self.policy.min_history_days())[0]
            if len(eligible):
                p = self.scorer.score(x[eligible])
                for i, v in zip(eligible.tolist(), p.tolist()):
                    scores[i] = round(float(v), SCORE_DECIMALS)
                out.scored = len(eligible)
            model_version = self.scorer.info.model_version
        order = sorted(range(n), key=lambda i: (snaps[i].user_id, snaps[i].tick_end_ms))
        users = sorted({s.user_id for s in snaps})
        states = self.policy_store.load(users)
        decided: list[tuple[int, Decision]] = []
        for i in order:
            s = snaps[i]
            ev = Evaluation(
                user_id=s.user_id,
                tick_end_ms=s.tick_end_ms,
                score=scores[i],
                rules=RuleInputs(
                    today_active_min=float(rules.today_active_min[i]),
                    session_min=float(rules.session_min[i]),
                    local_minute=int(rules.local_minute[i]),
                    local_day=int(rules.local_day[i]),
                    age_band=s.age_band,
                    history_days=int(rules.history_days[i]),
                ),
            )
            for d in self.policy.decide(states[s.user_id], ev):
                decided.append((i, d))
        out.policy = states
        if not decided:
            return
        ml_rows = [i for i, d in decided if d.kind == "ml_risk"]
        reasons = _reasons(self.scorer, x, ml_rows, scores) if ml_rows else {}
        for i, d in decided:
            feats = {name: _num(v) for name, v in zip(F.FEATURE_NAMES, x[i].tolist())}
            if d.kind == "ml_risk":
                rs = () if d.level == "cleared" else reasons.get(i, ())
                alert = d.to_alert(model_version=model_version, reasons=rs, features=feats)
            else:
                alert = d.to_alert(features=feats)
            out.alerts.append(alert)


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
            AlertReason(feature=F.FEATURE_NAMES[k], value=_num(x[r, k]), baseline=_num(base[k]),
                        contribution=_num(contrib[k]))
            for k in top
        )
    return out
