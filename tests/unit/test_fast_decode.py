"""The typed fast path of the decoder (``decode_message_into``) against the checks it stands in for.

``decode_message_into`` decodes a batch envelope of valid, contract-only events with msgspec and
falls back to ``decode_message``'s own checks for anything else. Whatever the input — valid,
near-valid, with unknown or duplicate fields, byte-mutated — its events and rejections must be
exactly those of ``decode_message_tuples``. And the fast path must really be taken for the common
case (or this file would pass while measuring nothing).
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core import events as E
from stream.core.events import EventLists, decode_message_into, decode_messages_into, decode_message_tuples
from stream.core.windows import EventColumns

NOW = 1_767_225_600_000  # 2026-01-01
TOPICS = (None, "click", "view")


def _reference(raw: bytes, topic_type: str | None, key: bytes | None) -> tuple[EventLists, list[E.Rejection]]:
    events, rejections = decode_message_tuples(raw, topic_type=topic_type, key=key, now_ms=NOW)
    lists = EventLists()
    lists.extend_tuples(events)
    return lists, rejections


def _check(raw: bytes, topic_type: str | None, key: bytes | None) -> int:
    """Assert both decoders agree; the number of valid events."""
    out = EventLists()
    n, rejections = decode_message_into(raw, topic_type=topic_type, key=key, now_ms=NOW, out=out)
    want, want_rej = _reference(raw, topic_type, key)
    assert rejections == want_rej
    assert out == want
    assert n == len(want)
    return n


def _fast(raw: bytes, topic_type: str | None, key: bytes | None) -> int:
    if b'"events"' in raw:
        return E._decode_envelope_fast(raw, topic_type, key, NOW, EventLists())
    return int(E._decode_one_fast(raw, topic_type, key, NOW, EventLists()))


# -- values: mostly valid, with every kind of near miss ----------------------------------------------
_ids = st.one_of(st.text(min_size=1, max_size=8), st.sampled_from(["", "u" * 128, "u" * 129, "é" * 128, "😀" * 129]),
                 st.integers(), st.none())
_ts = st.one_of(
    st.integers(min_value=E.MIN_TS_MS - 5, max_value=NOW + E.MAX_FUTURE_MS + 5),
    st.sampled_from([E.MIN_TS_MS, E.MIN_TS_MS - 1, NOW + E.MAX_FUTURE_MS, NOW + E.MAX_FUTURE_MS + 1, 2**63, 2**64,
                     -(2**63), 1.5, 1e12, True, None, "2025-01-01T10:00:00Z", "2025-01-01T10:00:00.5+01:00",
                     "2025-01-01 10:00:00.123456-00:00", "2025-02-30T10:00:00Z", "2025-01-01T10:00:00",
                     "1999-12-31T23:59:59Z", "garbage", ""]),
)
_type = st.sampled_from(["click", "view", "View", "", None, 1, "scroll"])
_dwell = st.one_of(st.integers(min_value=-2, max_value=5), st.sampled_from([E.MAX_DWELL_MS, E.MAX_DWELL_MS + 1, None,
                                                                             1.0, "5", True]))
_category = st.one_of(st.sampled_from(E.CATEGORIES), st.sampled_from(["GAMES", "Social", "", "x" * 64, "x" * 65,
                                                                        "unknown", None, 3, "İ"]))
_opt_str = st.one_of(st.none(), st.text(max_size=6), st.sampled_from(["a" * 256, "a" * 257, "b" * 32, "b" * 33]),
                     st.integers())
_tz = st.one_of(st.none(), st.integers(min_value=-841, max_value=841), st.sampled_from([1.0, "60", False]))
_v = st.sampled_from([1, None, 2, "1", 1.0, True])

FIELDS = {
    "event_id": _ids, "user_id": _ids, "ts": _ts, "type": _type, "dwell_ms": _dwell, "category": _category,
    "item_id": _opt_str, "session_id": _opt_str, "tz_offset_min": _tz, "age_band": _opt_str, "v": _v,
}


@st.composite
def event_objects(draw: st.DrawFn, valid_bias: bool) -> dict[str, object]:
    """An event object: usually valid (when ``valid_bias``), sometimes with fields missing, odd or extra."""
    user = draw(st.sampled_from(["u1", "u2"]))
    obj: dict[str, object] = {"event_id": f"e{draw(st.integers(0, 9))}", "user_id": user,
                              "ts": NOW - draw(st.integers(0, 10**9)), "type": draw(st.sampled_from(["click", "view"]))}
    if obj["type"] == "view" or draw(st.booleans()):
        obj["dwell_ms"] = draw(st.integers(0, 600_000))
    for name in ("category", "item_id", "session_id", "tz_offset_min", "age_band", "v"):
        if draw(st.booleans()):
            obj[name] = draw(st.sampled_from({"category": ["games", "social", "GAMES", None], "item_id": ["i1", ""],
                                              "session_id": ["s", ""], "tz_offset_min": [-300, 0, 840, None],
                                              "age_band": ["13-15", "", None], "v": [1, None]}[name]))
    n_odd = draw(st.integers(0, 3)) if not valid_bias or draw(st.integers(0, 3)) == 0 else 0
    for _ in range(n_odd):
        name = draw(st.sampled_from([*FIELDS, "extra", "events"]))
        if name in ("extra", "events"):
            obj[name] = draw(st.one_of(st.integers(), st.text(max_size=3), st.none(), st.lists(st.integers(), max_size=2)))
        elif draw(st.integers(0, 5)) == 0:
            obj.pop(name, None)
        else:
            obj[name] = draw(FIELDS[name])
    return obj


def _dumps(obj: object) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:  # an int beyond 64 bits: write it by hand (JSON has no such limit)
        import json

        return json.dumps(obj).encode()


@st.composite
def envelopes(draw: st.DrawFn, valid_bias: bool = True) -> bytes:
    items = draw(st.lists(event_objects(valid_bias), min_size=0 if not valid_bias else 1, max_size=6))
    env: dict[str, object] = {"events": items}
    if draw(st.booleans()):
        env["v"] = draw(_v) if not valid_bias else 1
    if not valid_bias and draw(st.integers(0, 4)) == 0:
        env["sdk"] = "x"
    raw = _dumps(env)
    if draw(st.integers(0, 6)) == 0:  # a duplicate key (JSON allows it; the last one counts)
        raw = raw[:-1] + b',"events":' + _dumps(draw(st.lists(event_objects(valid_bias), max_size=2))) + b"}"
    return raw


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=envelopes(valid_bias=True), topic=st.sampled_from(TOPICS), keyed=st.booleans())
def test_mostly_valid_envelopes_decode_as_the_checks_decode(raw: bytes, topic: str | None, keyed: bool) -> None:
    _check(raw, topic, b"u1" if keyed else None)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=envelopes(valid_bias=False), topic=st.sampled_from(TOPICS), keyed=st.booleans())
def test_odd_envelopes_decode_as_the_checks_decode(raw: bytes, topic: str | None, keyed: bool) -> None:
    _check(raw, topic, b"u2" if keyed else None)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=st.one_of(event_objects(valid_bias=True), event_objects(valid_bias=False)),
       topic=st.sampled_from(TOPICS), keyed=st.booleans())
def test_single_events_decode_as_the_checks_decode(obj: dict[str, object], topic: str | None, keyed: bool) -> None:
    _check(_dumps(obj), topic, b"u1" if keyed else None)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.one_of(envelopes(valid_bias=True), event_objects(valid_bias=True).map(_dumps)), data=st.data())
def test_byte_mutations_decode_as_the_checks_decode(raw: bytes, data: st.DataObject) -> None:
    """Syntax the two JSON parsers might judge differently: bytes inserted, deleted or replaced."""
    b = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(b)))
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = data.draw(st.one_of(st.sampled_from(list(b'{}[]",:01-+.eE \t\n\r\x0c\x0b\\u0\xff\xc3\xef')),
                                   st.integers(0, 255)))
        if op == "insert":
            b[i:i] = bytes([byte])
        elif i < len(b):
            if op == "delete":
                del b[i]
            else:
                b[i] = byte
    _check(bytes(b), data.draw(st.sampled_from(TOPICS)), None)


PINNED = [
    b'{"events":[{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"click"}],"v":1}',
    # numbers orjson refuses but a skipping parser might not
    b'{"events":[{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"click","x":1e999}]}',
    b'{"events":[{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"click"}],"x":1e999}',
    b'{"events":[{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"click","x":' + b"[" * 1100 + b"]" * 1100
    + b"}]}",
    # integers: leading zeros, plus sign, beyond 64 bits, floats for ints
    b'{"events":[{"event_id":"e","user_id":"u1","ts":01767225500000,"type":"click"}]}',
    b'{"events":[{"event_id":"e","user_id":"u1","ts":+1767225500000,"type":"click"}]}',
    b'{"events":[{"event_id":"e","user_id":"u1","ts":18446744073709551616,"type":"click"}]}',
    b'{"events":[{"event_id":"e","user_id":"u1","ts":1767225500000.0,"type":"click"}]}',
    b'{"events":[{"event_id":"e","user_id":"u1","ts":1.7672255e12,"type":"click"}]}',
    # strings: escapes, lone surrogates, invalid UTF-8, a BOM, control characters
    b'{"events":[{"event_id":"e","user_id":"u\\u0031","ts":1767225500000,"type":"click"}]}',
    b'{"events":[{"event_id":"e","user_id":"\\ud800","ts":1767225500000,"type":"click"}]}',
    b'{"events":[{"event_id":"e","user_id":"\\ud83d\\ude00","ts":1767225500000,"type":"click"}]}',
    b'{"events":[{"event_id":"e","user_id":"\xff","ts":1767225500000,"type":"click"}]}',
    b'\xef\xbb\xbf{"events":[{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"click"}]}',
    b'{"events":[{"event_id":"e\x01","user_id":"u1","ts":1767225500000,"type":"click"}]}',
    b'{"\\u0065vents":[{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"click"}]}',
    b'{"events":[{"\\u0065vent_id":"e","user_id":"u1","ts":1767225500000,"type":"click"}]}',
    # whitespace JSON does not allow, trailing content
    b'{"events":[{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"click"}]}\x0c',
    b'\x0b{"events":[{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"click"}]}',
    b'{"events":[{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"click"}]} {}',
    # an "events" that is not the envelope's
    b'{"event_id":"events","user_id":"u1","ts":1767225500000,"type":"click"}',
    b'{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"click","events":[]}',
    b'{"events":[{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"click","events":1}]}',
    b'{"events":[]}', b'{"events":null}', b'{"events":{}}', b"[]", b'"events"',
    # single events: valid, with an unknown field, an RFC 3339 time, a non-canonical category
    b'{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"view","dwell_ms":5,"category":"news"}',
    b'{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"click","app":"x"}',
    b'{"event_id":"e","user_id":"u1","ts":"2025-01-01T10:00:00Z","type":"click"}',
    b'{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"click","category":"NEWS"}',
    b'{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"view"}',
    b'{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"click","\\u0065vents":1}',
    # a view without its dwell, a click with one out of range, 1,000 and 1,001 elements
    b'{"events":[{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"view"}]}',
    b'{"events":[{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"click","dwell_ms":-1}]}',
    b'{"events":[' + b",".join([b'{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"click"}'] * 1000) + b"]}",
    b'{"events":[' + b",".join([b'{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"click"}'] * 1001) + b"]}",
    # over the size limit
    b'{"events":[' + b",".join([b'{"event_id":"e","user_id":"u1","ts":1767225500000,"type":"click","item_id":"'
                                + b"i" * 200 + b'"}'] * 300) + b"]}",
]


@pytest.mark.parametrize("raw", PINNED)
@pytest.mark.parametrize("topic", TOPICS)
def test_pinned_edge_cases_decode_as_the_checks_decode(raw: bytes, topic: str | None) -> None:
    _check(raw, topic, None)
    _check(raw, topic, b"u1")


def test_the_fast_path_takes_valid_contract_envelopes() -> None:
    """Valid envelopes of contract fields (any topic, key or not, RFC 3339 or int times, categories
    in any case, clicks with a dwell) never fall back; unknown fields and bad events always do."""
    events = [
        {"v": 1, "event_id": "e1", "user_id": "u1", "ts": NOW - 5000, "type": "view", "dwell_ms": 1200,
         "category": "GAMES", "item_id": "i", "session_id": "s", "tz_offset_min": -300, "age_band": "13-15"},
        {"event_id": "e2", "user_id": "u1", "ts": "2025-06-01T10:00:00.250+02:00", "type": "view", "dwell_ms": 0,
         "category": None, "age_band": None},
    ]
    clicks = [{"event_id": "e3", "user_id": "u1", "ts": NOW, "type": "click", "dwell_ms": 7, "category": "Nope"}]
    views = orjson.dumps({"v": 1, "events": events})
    assert _fast(views, "view", b"u1") == 2 == _check(views, "view", b"u1")
    assert _fast(views, None, None) == 2 == _check(views, None, None)
    assert _fast(orjson.dumps({"events": clicks}), "click", b"u1") == 1
    assert _fast(orjson.dumps({"events": events + clicks}), None, None) == 3
    assert _fast(orjson.dumps(events[0]), "view", b"u1") == 1 == _check(orjson.dumps(events[0]), "view", b"u1")
    assert _fast(orjson.dumps(clicks[0]), None, None) == 1 == _check(orjson.dumps(clicks[0]), None, None)
    assert _fast(orjson.dumps(events[1]), "view", b"u1") == 0  # one event with an RFC 3339 time: the slow path
    for refused in ({"events": events, "sent_at": 1}, {"events": [{**events[0], "app": "x"}]},
                    {"events": events, "v": 2}, {"events": [{**events[0], "ts": NOW + E.MAX_FUTURE_MS + 1}]}):
        raw = orjson.dumps(refused)
        assert _fast(raw, "view", b"u1") == 0
        _check(raw, "view", b"u1")


def test_columns_from_lists_equal_columns_from_tuples() -> None:
    raw = orjson.dumps({"events": [
        {"event_id": "e1", "user_id": "u1", "ts": NOW, "type": "view", "dwell_ms": 3, "tz_offset_min": 60,
         "age_band": "16-17", "category": "news"},
        {"event_id": "e2", "user_id": "u1", "ts": NOW - 1, "type": "click"}]})
    out = EventLists()
    decode_message_into(raw, topic_type=None, key=None, now_ms=NOW, out=out)
    a = EventColumns.from_lists(out)
    b = EventColumns.from_tuples(decode_message_tuples(raw, topic_type=None, key=None, now_ms=NOW)[0])
    for name in ("ts", "view", "dwell", "cat", "tz", "has_band", "late", "bands", "user_ids", "event_ids"):
        assert getattr(a, name).tolist() == getattr(b, name).tolist(), name
    assert a.tz.tolist()[1] < -(2**30)  # absent


# -- several messages at once (the live pipeline decodes a partition's messages of one input together) --
def _one_by_one(raws: list[bytes], topic_type: str | None, keys: list[bytes | None]
                ) -> tuple[EventLists, list[int], list[list[E.Rejection]]]:
    out = EventLists()
    counts, bads = [], []
    for raw, key in zip(raws, keys):
        n, bad = decode_message_into(raw, topic_type=topic_type, key=key, now_ms=NOW, out=out)
        counts.append(n)
        bads.append(bad)
    return out, counts, bads


def _first_user(raw: bytes) -> bytes:
    """The user of a message's first event (its key, when the producer keys correctly), else b"u1"."""
    try:
        obj = orjson.loads(raw)
        first = obj["events"][0] if "events" in obj else obj
        return str(first["user_id"]).encode()
    except Exception:
        return b"u1"


def _check_many(raws: list[bytes], topic_type: str | None, keys: list[bytes | None]) -> list[int]:
    out = EventLists()
    counts, bads = decode_messages_into(raws, topic_type=topic_type, keys=keys, now_ms=NOW, out=out)
    want, want_counts, want_bads = _one_by_one(raws, topic_type, keys)
    assert out == want
    assert counts == want_counts
    assert [list(b) for b in bads] == want_bads
    return counts


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raws=st.lists(st.one_of(envelopes(valid_bias=True), envelopes(valid_bias=True), envelopes(valid_bias=False),
                               event_objects(valid_bias=True).map(_dumps)), min_size=1, max_size=5),
       topic=st.sampled_from(TOPICS), data=st.data())
def test_messages_decoded_together_decode_as_one_by_one(raws: list[bytes], topic: str | None,
                                                        data: st.DataObject) -> None:
    """Whatever the messages — valid, odd, single events, keyed by the right user or not — decoding
    them together gives each one's events, counts and rejections exactly as decoding it alone."""
    keying = data.draw(st.sampled_from(["none", "u1", "mixed", "own"]))
    keys: list[bytes | None] = ([None] * len(raws) if keying == "none" else
                                [b"u1"] * len(raws) if keying == "u1" else
                                [_first_user(raw) for raw in raws] if keying == "own" else
                                [data.draw(st.sampled_from([b"u1", b"u2", None])) for _ in raws])
    _check_many(raws, topic, keys)


def _valid_envelope(user: str, k: int, etype: str) -> bytes:
    return orjson.dumps({"events": [
        {"event_id": f"{user}-{i}", "user_id": user, "ts": NOW - 1000 * i, "type": etype,
         **({"dwell_ms": 40 * i} if etype == "view" else {}), "category": "GAMES" if i % 2 else "news",
         "tz_offset_min": 60 if i % 3 else None, "age_band": "13-15" if user == "u2" else None}
        for i in range(k)]})


def test_valid_envelopes_of_several_users_are_decoded_together() -> None:
    """The case the live pipeline has (messages of several users, each keyed by its own) takes the
    joint fast path; one bad message, a wrong key or a wrong topic anywhere sends all of them one by one."""
    lone = orjson.dumps({"event_id": "u3-0", "user_id": "u3", "ts": "2025-06-01T10:00:00Z", "type": "view",
                         "dwell_ms": 9})  # a single event (no envelope), with an RFC 3339 time
    raws = [_valid_envelope("u1", 3, "view"), _valid_envelope("u2", 1, "view"), lone, _valid_envelope("u1", 5, "view")]
    keys: list[bytes | None] = [b"u1", b"u2", b"u3", b"u1"]
    out = EventLists()
    assert E._decode_envelopes_fast(raws, "view", keys, NOW, out) == [3, 1, 1, 5]
    assert len(out) == 10
    assert _check_many(raws, "view", keys) == [3, 1, 1, 5]
    assert _check_many(raws, None, [None] * 4) == [3, 1, 1, 5]
    raws, keys = raws[:2] + raws[3:], keys[:2] + keys[3:]
    for bad_raws, bad_keys, topic in (
        (raws, [b"u1", b"u1", b"u1"], "view"),  # the second message's events are not its key's user
        (raws, keys, "click"),  # views on the clicks topic
        ([*raws[:2], b'{"events":[]}', raws[2]], [*keys[:2], b"u1", b"u1"], "view"),  # an empty envelope
        ([raws[0], raws[1][:-1]], keys[:2], "view"),  # a truncated one
    ):
        assert E._decode_envelopes_fast(bad_raws, topic, bad_keys, NOW, EventLists()) is None
        _check_many(bad_raws, topic, bad_keys)
