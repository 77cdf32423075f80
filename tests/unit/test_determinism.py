"""docs/semantics.md §10 as properties: order within L, batch boundaries and topic skew never change the result."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core.alerts import alert_to_json
from stream.core.detector import Detector, Release
from stream.core.events import Event
from stream.core.ordering import ReorderBuffer
from stream.core.policy import AlertPolicy
from stream.core.windows import MemoryWindowStore
from stream.offline import Summary, build_detector, run_detector
from tests.scenarios import feature_scorer, random_log, short_policy

L_MS = 120_000


def fingerprint(det: Detector, store: MemoryWindowStore, alerts: list) -> tuple:
    users = sorted(store.users())
    states = tuple((u, store.state_of(u)) for u in users)
    pol = det.policy_fields(users)
    return (
        tuple(sorted(alert_to_json(a) for a in alerts)),
        states,
        tuple((u, tuple(sorted(pol[u].items()))) for u in users),
    )


def reference(events: list[Event]) -> tuple:
    det, store = build_detector(short_policy(), feature_scorer())
    alerts: list = []
    run_detector(list(events), det, alerts.append, Summary())
    return fingerprint(det, store, alerts)


def streamed(arrivals: list[tuple[str, Event]], cuts: list[int], inputs: tuple[str, ...]) -> tuple:
    store = MemoryWindowStore()
    det = Detector(store, AlertPolicy(short_policy()), feature_scorer())
    buf: ReorderBuffer[None] = ReorderBuffer(inputs, lateness_ms=L_MS, max_events=10**6)
    alerts: list = []
    bounds = sorted({0, len(arrivals), *[c % (len(arrivals) + 1) for c in cuts]})
    late_total = 0
    for a, b in zip(bounds, bounds[1:]):
        late = [(ev, None) for name, ev in arrivals[a:b] if not buf.push(name, ev, None)]
        late_total += len(late)
        released, wm = buf.release()
        out = det.process(Release(released, wm, late))
        alerts += out.alerts
        det.commit(out)
    released, wm = buf.drain()
    out = det.process(Release(released, wm))
    alerts += out.alerts
    det.commit(out)
    assert late_total == 0, "arrivals were meant to stay within the lateness bound"
    return fingerprint(det, store, alerts)


def jittered(events: list[Event], seed: int) -> list[Event]:
    """Arrival order = event time + U(0, L): every event arrives within L of its place."""
    rng = np.random.default_rng(seed)
    keys = [e.ts_ms + int(j) for e, j in zip(events, rng.integers(0, L_MS, len(events)))]
    return [e for _, e in sorted(zip(keys, events), key=lambda p: p[0])]


SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_reference_run_produces_alerts_of_several_kinds():
    fp = reference(random_log(7))
    kinds = {a.split(b'"kind":"')[1].split(b'"')[0] for a in fp[0]}
    assert b"ml_risk" in kinds and any(k.startswith(b"rule:") for k in kinds)


@SETTINGS
@given(seed=st.integers(0, 10_000), jseed=st.integers(0, 10_000),
       cuts=st.lists(st.integers(0, 10**6), max_size=30))
def test_shuffle_within_lateness_and_any_batching_give_the_same_alerts_and_state(seed, jseed, cuts):
    events = random_log(seed)
    arrivals = [("log", e) for e in jittered(events, jseed)]
    assert streamed(arrivals, cuts, ("log",)) == reference(events)


@SETTINGS
@given(seed=st.integers(0, 10_000), jseed=st.integers(0, 10_000),
       skew=st.lists(st.booleans(), min_size=1, max_size=200), cuts=st.lists(st.integers(0, 10**6), max_size=20))
def test_two_topics_consumed_with_any_skew_give_the_same_alerts_and_state(seed, jseed, skew, cuts):
    events = jittered(random_log(seed), jseed)
    clicks = [("click", e) for e in events if e.type == "click"]
    views = [("view", e) for e in events if e.type == "view"]
    merged: list[tuple[str, Event]] = []
    i = j = 0
    k = 0
    while i < len(clicks) or j < len(views):
        take_click = skew[k % len(skew)]
        k += 1
        if (take_click and i < len(clicks)) or j >= len(views):
            merged.append(clicks[i]); i += 1
        else:
            merged.append(views[j]); j += 1
    assert streamed(merged, cuts, ("click", "view")) == reference(events)


def test_all_views_before_all_clicks_gives_the_same_result():
    events = random_log(11)
    arrivals = [("view", e) for e in events if e.type == "view"] + [("click", e) for e in events if e.type == "click"]
    assert streamed(arrivals, [50, 500, 5000], ("click", "view")) == reference(events)


def test_same_log_twice_gives_identical_alerts():
    events = random_log(3)
    assert reference(events) == reference(list(reversed(events)))
