"""Failures inside a pipeline step: retried Redis errors lose nothing, a failed read of a deferred
write is never retried into success (reliability review D1, D2)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis

from stream.core.detector import Detector
from stream.core.events import encode_event
from stream.core.policy import AlertPolicy, load_policy_config
from stream.core.windows import MemoryWindowStore
from stream.errors import StoreUnavailableError
from stream.live.pipeline import Pipeline
from stream.live.protocol import Step
from stream.retry import retry
from stream.settings import load_settings
from tests.eventgen import at, ev
from tests.unit.test_pipeline import FakeProducer


class FlakyStore(MemoryWindowStore):
    """Like the Redis store: a user not cached yet costs a load (I/O), and loads number ``fail_on`` fail."""

    def __init__(self, fail_on: set[int], fail_apply_on: int | None = None) -> None:
        super().__init__(keep_outbox=False)
        self.loaded: set[str] = set()
        self.loads = 0
        self.applies = 0
        self.fail_on = fail_on
        self.fail_apply_on = fail_apply_on

    def _io(self, users: list[str]) -> None:
        missing = [u for u in users if u not in self.loaded]
        if not missing:
            return
        self.loads += 1
        if self.loads in self.fail_on:
            raise StoreUnavailableError("simulated: Redis timed out loading users")
        self.loaded.update(missing)

    def prefetch(self, user_ids: list[str]) -> None:
        self._io(list(user_ids))

    def set_generation(self, generation: int) -> None:
        pass

    def apply(self, batches: Any, watermark_ms: int, commit_floor: Any = None) -> Any:
        self.applies += 1
        if self.applies == self.fail_apply_on:
            raise StoreUnavailableError("simulated: Redis failed after the loads")
        self._io([b.user_id for b in batches])
        return super().apply(batches, watermark_ms, commit_floor)

    def apply_fenced(self, parts: Any) -> Any:  # the live columnar path: the same failures
        self.applies += 1
        if self.applies == self.fail_apply_on:
            raise StoreUnavailableError("simulated: Redis failed after the loads")
        self._io([*dict.fromkeys(u for p in parts for u in (*p.cols.user_ids, *p.due))])
        return super().apply_fenced(parts)

    def finish_write(self) -> None:
        pass

    def invalidate(self) -> None:
        pass


def _pipeline(store: FlakyStore) -> tuple[Pipeline, FakeProducer]:
    s = load_settings(namespace="t", lateness_ms=0, checkpoint_ms=0)  # a write every step (checkpoints: test_checkpoint.py)
    prod = FakeProducer()
    p = Pipeline(s, Detector(store, AlertPolicy(load_policy_config(None))), prod, store=store)  # type: ignore[arg-type]
    return p, prod


def _alerts(p: Pipeline, prod: FakeProducer) -> list[tuple[str, str]]:
    recs = [orjson.loads(v) for t, _, v in prod.records if t == p.s.alerts_topic]
    return sorted({(r["user_id"], r["kind"]) for r in recs})


@pytest.mark.parametrize("fail_on", [set(), {1}, {2}, {1, 2}])
def test_a_retried_redis_error_while_loading_loses_no_decision(fail_on):
    """Two partitions in one step: a load failing after the first release was applied must not
    make the retry see its events as duplicates (the curfew alert of kid-a was lost)."""
    p, prod = _pipeline(FlakyStore(fail_on))
    msgs = []
    for part, user in ((0, "kid-a"), (1, "kid-b")):
        for i in range(3):  # a minor using the app at 23:00 local: curfew
            e = ev(user, at(0, 23, i), "click", age_band="u13", tz=0)
            msgs.append((p.s.clicks_topic, part, i, user.encode(), encode_event(e)))
    idle = {(q, k): True for q in (0, 1) for k in ("click", "view")}
    rep = p.step(Step(msgs, [0, 1], idle, {}, 0.0, at(30)))
    assert (len(rep.done), rep.applied, rep.duplicates) == (6, 6, 0)
    assert _alerts(p, prod) == [("kid-a", "rule:curfew"), ("kid-b", "rule:curfew")]


def test_a_retried_redis_error_does_not_forget_a_due_user():
    store = FlakyStore({2})  # the second load: the new user of step 2, with kid-a due in it
    p, prod = _pipeline(store)

    def c(u: str, ts: int, off: int, band: str | None = None) -> tuple:
        return (p.s.clicks_topic, 0, off, u.encode(), encode_event(ev(u, ts, "click", age_band=band, tz=0)))
    idle = {(0, "view"): True}
    p.step(Step([c("kid-a", at(0, 23, 0, 0), 0, "u13"), c("b", at(0, 23, 0, 30), 1)], [0], idle, {}, 0.0, at(30)))
    r2 = p.step(Step([c("c", at(0, 23, 5), 2)], [0], idle, {}, 0.0, at(30)))
    assert r2.redis_retries == 1 and sorted(o for _, _, o in r2.done) == [0, 1]
    assert ("kid-a", "rule:curfew") in _alerts(p, prod)


def test_a_store_error_in_the_apply_fails_the_step_instead_of_being_retried():
    store = FlakyStore(set(), fail_apply_on=1)  # the step's one apply (both partitions together)
    p, _ = _pipeline(store)
    msgs = [(p.s.clicks_topic, part, 0, u.encode(), encode_event(ev(u, at(0, 12), "click")))
            for part, u in ((0, "a"), (1, "b"))]
    idle = {(q, k): True for q in (0, 1) for k in ("click", "view")}
    with pytest.raises(StoreUnavailableError):
        p.step(Step(msgs, [0, 1], idle, {}, 0.0, at(30)))
    assert store.applies == 1  # not retried (an apply is not idempotent): redelivery redoes the batch


# -- D2: a deferred write whose reply could not be read ---------------------------------------------
def _store_with_write_in_flight(monkeypatch: pytest.MonkeyPatch, reads_fail: int) -> tuple[Any, list]:
    from stream.state import redis_store as RS

    st = RS.RedisWindowStore.__new__(RS.RedisWindowStore)
    MemoryWindowStore.__init__(st, keep_outbox=False)
    st._client, st._dirty, st._sending, st._version, st._decided = object(), set(), {"u"}, {"u": 4}, {}
    st._recent = {}
    st._unsettled = None
    st._wait, st._refresh_slots = [], False
    # sent on one connection (client, connection, indexes of its calls), reply not read yet
    st._in_flight = (["u"], [[b"rs:{u}:u", 4, "w", 1000]], [(object(), object(), [0])])
    reads = {"n": 0}

    def read(client: Any, conn: Any, n: int) -> list:
        reads["n"] += 1
        raise redis.TimeoutError("Timeout reading from socket")
    monkeypatch.setattr(RS, "_read_raw", read)
    resent: list = []

    def evalsha_all(calls: list) -> list:
        resent.append(calls)
        if len(resent) < reads_fail:
            raise StoreUnavailableError("still down")
        return [5] * len(calls)
    monkeypatch.setattr(st, "_evalsha_all", evalsha_all)
    return st, resent


def test_a_failed_read_of_a_deferred_write_is_not_retried_into_success(monkeypatch):
    st, resent = _store_with_write_in_flight(monkeypatch, reads_fail=10**9)  # Redis stays down
    with pytest.raises(StoreUnavailableError):
        retry("redis write", st.finish_write, attempts=4, base_s=0.0, retriable=(StoreUnavailableError,))
    assert len(resent) == 3 and st.write_in_flight() and "u" in st._dirty


def test_a_retried_deferred_write_is_sent_again_and_settled(monkeypatch):
    st, resent = _store_with_write_in_flight(monkeypatch, reads_fail=2)  # back on the second re-send
    retry("redis write", st.finish_write, attempts=8, base_s=0.0, retriable=(StoreUnavailableError,))
    assert resent == [[[b"rs:{u}:u", 4, "w", 1000]]] * 2  # the same write, by the same writer
    assert st._version["u"] == 5 and not st.write_in_flight()


# -- poison quarantine ----------------------------------------------------------------------------------
class PoisonDetector(Detector):
    """A detector that fails on the events of one user, as a bug triggered by one message would."""

    def process(self, releases: Any, position: Any = None) -> Any:
        for rel in releases:
            if "poison" in rel.cols.user_ids[:len(rel.cols) - rel.n_late]:  # released (not late) events
                raise ValueError("kernel blew up on this user's events")
        return super().process(releases, position)


def test_a_message_that_keeps_failing_the_pipeline_is_quarantined_and_the_loop_ends():
    from stream.state.poison import MemoryPoisonLedger

    ledger = MemoryPoisonLedger()  # survives the "restarts": in Redis live
    s = load_settings(namespace="t", lateness_ms=0, poison_max_attempts=3)
    msgs = [(s.clicks_topic, 0, off, u.encode(), encode_event(ev(u, at(0, 12, off), "click")))
            for off, u in enumerate(("a", "poison", "b"))]
    idle = {(0, "click"): True, (0, "view"): True}
    crashes = 0
    for _restart in range(10):
        prod = FakeProducer()
        det = PoisonDetector(MemoryWindowStore(keep_outbox=False), AlertPolicy(load_policy_config(None)))
        p = Pipeline(s, det, prod, ledger=ledger)  # type: ignore[arg-type]
        try:
            rep = p.step(Step(msgs, [0], idle, {}, 0.0, at(30)))
            break
        except ValueError:
            crashes += 1
    assert crashes == 1 + 3  # the batch once, then the suspect alone three times
    assert sorted(off for _, _, off in rep.done) == [0, 1, 2] and rep.applied == 2
    (rec,) = [orjson.loads(v) for t, _, v in prod.records if t == s.dlq_topic]
    assert (rec["reason"], rec["offset"], rec["index"]) == ("poison", 1, None)
    assert "ValueError: kernel blew up" in rec["detail"]
    assert ledger.attempts(s.clicks_topic, 0) == {1: 4}  # the innocent ones were cleared


def test_an_unavailable_service_does_not_make_messages_suspect():
    from stream.state.poison import MemoryPoisonLedger

    ledger = MemoryPoisonLedger()
    store = FlakyStore(set(), fail_apply_on=1)
    s = load_settings(namespace="t", lateness_ms=0, checkpoint_ms=0)
    p = Pipeline(s, Detector(store, AlertPolicy(load_policy_config(None))), FakeProducer(),  # type: ignore[arg-type]
                 store=store, ledger=ledger)
    msg = (s.clicks_topic, 0, 0, b"a", encode_event(ev("a", at(0, 12), "click")))
    with pytest.raises(StoreUnavailableError):
        p.step(Step([msg], [0], {(0, "click"): True, (0, "view"): True}, {}, 0.0, at(30)))
    assert ledger.attempts(s.clicks_topic, 0) == {}
