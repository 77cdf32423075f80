"""The columnar offline path: tuple decoding, event columns, canonical order, snapshot batches.

Each fast path is pinned against the object path it replaces, so both give the same results.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.alerts import alert_to_json
from stream.core.detector import Detector, Release
from stream.core.events import decode_message, decode_message_tuples, encode_event
from stream.core.ordering import canonical_key, canonical_order
from stream.core.policy import AlertPolicy
from stream.core.windows import EventColumns, Item, MemoryWindowStore, Snapshots, UserBatch
from stream.offline import Summary, build_detector, run_detector
from tests.eventgen import at, ev
from tests.scenarios import feature_scorer, random_log, short_policy

NOW = at(400)
FAR = 2**62

MESSAGES = [
    encode_event(ev("u1", at(0, 9), "view", dwell_ms=1234, tz=-300, age_band="13-15")),
    encode_event(ev("u2", at(0, 9), "click", tz=None, age_band=None)),
    b'{"event_id":"e","user_id":"u","ts":"2025-01-01T10:00:00.5+01:00","type":"view","dwell_ms":1,"category":"GAMES"}',
    orjson.dumps({"events": [orjson.loads(encode_event(ev("u3", at(0, 9, m)))) for m in range(3)] + [{"x": 1}]}),
    b'{"event_id":"e","user_id":"u","ts":1,"type":"view"}',
    b"not json",
    b"[1, 2]",
]


def test_tuple_decoding_equals_event_decoding() -> None:
    for raw in MESSAGES:
        events, rejections = decode_message(raw, topic_type=None, key=None, now_ms=NOW)
        tuples, rejections2 = decode_message_tuples(raw, topic_type=None, key=None, now_ms=NOW)
        assert tuples == [dataclasses.astuple(e) for e in events]
        assert rejections2 == rejections
    assert sum(len(decode_message_tuples(m, topic_type=None, key=None, now_ms=NOW)[0]) for m in MESSAGES) == 6


def _columns_equal(a: EventColumns, b: EventColumns) -> None:
    for f in dataclasses.fields(EventColumns):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y), f.name
        else:
            assert x == y, f.name


def test_columns_from_tuples_equal_columns_from_events() -> None:
    events = random_log(5) + [ev("u9", at(0, 1), "click", tz=None, age_band=None, category="other")]
    _columns_equal(EventColumns.from_tuples([dataclasses.astuple(e) for e in events]),
                   EventColumns.from_events(events))
    assert len(EventColumns.from_tuples([])) == 0


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["click", "view"]), st.sampled_from([None, "13-15", "18+"]),
                          st.sampled_from([None, 0, -300])), min_size=1, max_size=30),
       st.sampled_from([None, "click", "view"]), st.booleans())
def test_columns_from_tuples_equal_columns_from_events_for_one_type_and_absent_bands(
        rows: list[tuple[str, str | None, int | None]], one_type: str | None, no_bands: bool) -> None:
    """from_tuples (from_lists) counts types and bands in C first: all of one type, all without a
    band, and mixes give the columns of from_events."""
    events = [ev("u", at(0) + i, one_type or t, dwell_ms=5 if (one_type or t) == "view" else 0,
                 age_band=None if no_bands else band, tz=tz)
              for i, (t, band, tz) in enumerate(rows)]
    _columns_equal(EventColumns.from_tuples([dataclasses.astuple(e) for e in events]),
                   EventColumns.from_events(events))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.sampled_from(["a", "b", "c", "aa"])), max_size=60))
def test_canonical_order_sorts_like_the_canonical_key(rows: list[tuple[int, bool, str]]) -> None:
    events = [ev("u", at(0) + t, "view" if v else "click", event_id=e) for t, v, e in rows]
    cols = EventColumns.from_events(events)
    order = canonical_order(cols.ts, cols.view, cols.event_ids).tolist()
    assert [canonical_key(events[i]) for i in order] == sorted(canonical_key(e) for e in events)


def test_snapshots_behave_like_a_list_of_rows() -> None:
    store = MemoryWindowStore()
    [res] = store.apply([UserBatch("u", [Item(ev("u", at(0, 7, m))) for m in range(3)])], FAR)
    snaps = res.snapshots
    assert isinstance(snaps, Snapshots) and len(snaps) == 3
    rows = list(snaps)
    assert [s.tick_end_ms for s in rows] == [at(0, 7, 1), at(0, 7, 2), at(0, 7, 3)]
    assert snaps == rows and snaps[1:] == rows[1:] and snaps[-1] == rows[2]
    assert Snapshots.from_rows(rows) == snaps
    assert Snapshots.concat([snaps[:1], Snapshots.empty(), snaps[1:]]) == rows
    assert rows[2].rings == store.state_of("u")[2]  # the last row is the state at the end


def test_offline_fast_path_equals_the_release_path_through_the_store_protocol() -> None:
    """Resident policy + apply_columns (offline) == outbox store + load/confirm (the live shape)."""
    events = random_log(21)
    fast, fast_store = build_detector(short_policy(), feature_scorer())
    got: list = []
    run_detector(list(events), fast, got.append, Summary())
    store = MemoryWindowStore()
    slow = Detector(store, AlertPolicy(short_policy()), feature_scorer())
    want: list = []
    ordered = sorted(events, key=canonical_key)
    for k in range(0, len(ordered), 97):
        chunk = ordered[k:k + 97]
        wm = ordered[k + 97].ts_ms if k + 97 < len(ordered) else FAR
        out = slow.process(Release([(e, None) for e in chunk], wm))
        want += out.alerts
        slow.commit(out)
    assert want and sorted(a.alert_id for a in got) == sorted(a.alert_id for a in want)
    assert sorted(map(alert_to_json, got)) == sorted(map(alert_to_json, want))
    users = sorted(store.users())
    assert sorted(fast_store.users()) == users
    assert all(fast_store.state_of(u) == store.state_of(u) for u in users)
    assert fast.policy_fields(users) == slow.policy_fields(users)


def test_a_numpy_integer_watermark_decides_what_the_same_int_decides() -> None:
    """A watermark that is a numpy integer (what ``ts[...]`` gives) is one watermark for every user,
    not an array of them."""
    events = random_log(5)
    cols = EventColumns.from_events(events)
    cols = cols.take(canonical_order(cols.ts, cols.view, cols.event_ids))
    wm = cols.ts[len(cols) // 2]
    assert isinstance(wm, np.integer)
    a, b = MemoryWindowStore(keep_outbox=False), MemoryWindowStore(keep_outbox=False)
    got, want = a.apply_columns(cols, wm), b.apply_columns(cols, int(wm))
    assert len(want.snapshots) and list(got.too_late) == list(want.too_late)
    assert got.snapshots.user_ids == want.snapshots.user_ids
    assert (got.snapshots.tick_end == want.snapshots.tick_end).all()
    assert sorted(a.users()) == sorted(b.users())
    assert all(a.state_of(u) == b.state_of(u) for u in b.users())
