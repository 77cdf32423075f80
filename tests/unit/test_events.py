"""Contract-v1 event decoding and validation (docs/contracts.md §2): stream/core/events.py."""

from __future__ import annotations

import dataclasses
import pickle
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.events import (
    CATEGORIES,
    MAX_BATCH_EVENTS,
    MAX_DWELL_MS,
    MAX_FUTURE_MS,
    MAX_MESSAGE_BYTES,
    MIN_TS_MS,
    Event,
    Reason,
    Rejection,
    decode_message,
    encode_event,
)

NOW_MS = 1_717_000_000_000  # 2024-05-29T16:26:40Z
TS_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
USER = "user-42"
KEY = USER.encode()


def click(**overrides: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"v": 1, "event_id": "e-1", "user_id": USER, "ts": TS_MS, "type": "click"}
    ev.update(overrides)
    return ev


def view(**overrides: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "v": 1,
        "event_id": "e-2",
        "user_id": USER,
        "ts": TS_MS,
        "type": "view",
        "dwell_ms": 4_200,
    }
    ev.update(overrides)
    return ev


def without(ev: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in ev.items() if k != field}


def decode(
    message: Any, *, topic_type: str | None = None, key: bytes | None = None, now_ms: int = NOW_MS
) -> tuple[list[Event], list[Rejection]]:
    raw = message if isinstance(message, bytes) else orjson.dumps(message)
    return decode_message(raw, topic_type=topic_type, key=key, now_ms=now_ms)


def accepted(message: Any, **kwargs: Any) -> Event:
    events, rejections = decode(message, **kwargs)
    assert rejections == []
    assert len(events) == 1
    return events[0]


def rejected(message: Any, **kwargs: Any) -> Rejection:
    events, rejections = decode(message, **kwargs)
    assert events == []
    assert len(rejections) == 1
    return rejections[0]


# --- public constants and types -------------------------------------------------------------


def test_reason_values_are_the_contract_strings() -> None:
    assert {r.value for r in Reason} == {
        "oversized",
        "malformed_json",
        "not_an_object",
        "unsupported_version",
        "missing_field",
        "wrong_type",
        "out_of_range",
        "type_topic_mismatch",
        "user_key_mismatch",
        "future_ts",
        "invalid_batch",
        "too_late",
        "missing_key",
        "poison",
    }
    # StrEnum: usable directly as the DLQ string, and parsed back from it
    assert f"{Reason.TOO_LATE}" == "too_late" and orjson.dumps(Reason.OUT_OF_RANGE) == b'"out_of_range"'
    assert Reason("missing_field") is Reason.MISSING_FIELD


def test_constants() -> None:
    assert CATEGORIES == ("social", "short_video", "messaging", "games", "web", "news", "other")
    assert MAX_MESSAGE_BYTES == 65_536
    assert MAX_FUTURE_MS == 300_000
    y2k = datetime(2000, 1, 1, tzinfo=timezone.utc)
    assert datetime.fromtimestamp(MIN_TS_MS / 1000, tz=timezone.utc) == y2k
    assert MAX_DWELL_MS == 86_400_000


# --- happy paths --------------------------------------------------------------------------------


def test_click_with_all_fields() -> None:
    message = click(
        category="social",
        item_id="item-9",
        session_id="s-1",
        tz_offset_min=-300,
        age_band="13-15",
        dwell_ms=900,
    )
    ev = accepted(message, topic_type="click", key=KEY)
    assert ev == Event(
        user_id=USER,
        ts_ms=TS_MS,
        type="click",
        event_id="e-1",
        category="social",
        dwell_ms=0,  # a click's dwell is validated, then ignored
        tz_offset_min=-300,
        age_band="13-15",
        item_id="item-9",
        session_id="s-1",
    )


def test_minimal_view() -> None:
    ev = accepted(view(), topic_type="view", key=KEY)
    assert ev == Event(USER, TS_MS, "view", "e-2", "other", 4_200, None, None, None, None)


def test_version_defaults_to_1() -> None:
    assert accepted(without(click(), "v")) == accepted(click())
    assert accepted(click(v=None)) == accepted(click())  # null counts as absent


def test_null_optional_fields_count_as_absent() -> None:
    optional = ("category", "item_id", "session_id", "tz_offset_min", "age_band", "dwell_ms")
    message = click(**dict.fromkeys(optional))
    ev = accepted(message)
    assert (ev.category, ev.item_id, ev.session_id, ev.tz_offset_min, ev.age_band, ev.dwell_ms) == (
        "other",
        None,
        None,
        None,
        None,
        0,
    )


def test_unknown_fields_are_ignored() -> None:
    extra = {
        "extra": {"nested": [1, 2, {"x": None}]},
        "__class__": "os.system",
        "eval": "__import__('os').system('true')",
        "ts_ms": "not the ts",
        "Type": "view",
    }
    assert accepted(click(**extra)) == accepted(click())


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("social", "social"),
        ("Social", "social"),
        ("SHORT_VIDEO", "short_video"),
        ("Messaging", "messaging"),
        ("games", "games"),
        ("WEB", "web"),
        ("news", "news"),
        ("Other", "other"),
        ("podcasts", "other"),
        ("", "other"),
        (" social", "other"),  # no trimming: unknown value
        ("x" * 64, "other"),
    ],
)
def test_category_normalisation(given: str, expected: str) -> None:
    assert accepted(click(category=given)).category == expected


def test_missing_category_is_other() -> None:
    assert accepted(click()).category == "other"


@pytest.mark.parametrize(
    ("text", "epoch_ms"),
    [
        ("2024-01-01T00:00:00Z", TS_MS),
        ("2024-01-01T02:00:00+02:00", TS_MS),
        ("2023-12-31T18:30:00-05:30", TS_MS),
        ("2024-01-01T00:00:00-00:00", TS_MS),
        ("2024-01-01t00:00:00z", TS_MS),
        ("2024-01-01 00:00:00Z", TS_MS),
        ("2024-01-01T00:00:00.5Z", TS_MS + 500),
        ("2024-01-01T00:00:00.123Z", TS_MS + 123),
        ("2024-01-01T00:00:00.123999999Z", TS_MS + 123),  # floored to the millisecond
        ("2024-01-01T02:00:00.001+02:00", TS_MS + 1),
        ("2000-01-01T00:00:00Z", MIN_TS_MS),
    ],
)
def test_rfc3339_ts_converts_to_epoch_ms(text: str, epoch_ms: int) -> None:
    assert accepted(click(ts=text)).ts_ms == epoch_ms


def test_boundaries_are_accepted() -> None:
    ev = accepted(
        view(
            event_id="e" * 128,
            user_id="u" * 128,
            dwell_ms=MAX_DWELL_MS,
            tz_offset_min=840,
            item_id="i" * 256,
            session_id="s" * 128,
            age_band="a" * 32,
            category="c" * 64,
        )
    )
    assert (len(ev.event_id), len(ev.user_id), ev.dwell_ms, ev.tz_offset_min) == (128, 128, MAX_DWELL_MS, 840)
    assert accepted(view(dwell_ms=0, tz_offset_min=-840)).tz_offset_min == -840
    assert accepted(click(ts=MIN_TS_MS)).ts_ms == MIN_TS_MS
    assert accepted(click(ts=NOW_MS + MAX_FUTURE_MS)).ts_ms == NOW_MS + MAX_FUTURE_MS
    assert accepted(click(item_id="", session_id="", age_band="")).item_id == ""


def test_decoded_event_is_a_real_frozen_event() -> None:
    # Pins the fast construction path in _decode_event against the dataclass constructor.
    ev = accepted(click(category="games", item_id="i", session_id="s", tz_offset_min=60, age_band="u13"))
    built = Event(USER, TS_MS, "click", "e-1", "games", 0, 60, "u13", "i", "s")
    assert type(ev) is Event
    assert ev == built and hash(ev) == hash(built) and repr(ev) == repr(built)
    assert dataclasses.astuple(ev) == dataclasses.astuple(built)
    assert pickle.loads(pickle.dumps(ev)) == built
    assert not hasattr(ev, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.ts_ms = 0  # type: ignore[misc]


# --- message-level rejections ---------------------------------------------------------------


def test_oversized_message() -> None:
    base = orjson.dumps(click(pad=""))
    pad = MAX_MESSAGE_BYTES - len(base)
    at_limit = orjson.dumps(click(pad="x" * pad))
    assert len(at_limit) == MAX_MESSAGE_BYTES
    assert accepted(at_limit).event_id == "e-1"

    over = orjson.dumps(click(pad="x" * (pad + 1)))
    rej = rejected(over, key=KEY)
    assert rej.reason is Reason.OVERSIZED
    assert (rej.index, rej.event_id, rej.user_id) == (None, None, None)
    assert str(MAX_MESSAGE_BYTES) in rej.detail


def test_oversized_is_checked_before_parsing() -> None:
    assert rejected(b"{" * (MAX_MESSAGE_BYTES + 1)).reason is Reason.OVERSIZED


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b'{"event_id": "e-1",}', b"\xff\xfe", b"NaN", b'{"a": Infinity}', b'"\\ud800"', b"{} {}"],
)
def test_malformed_json(raw: bytes) -> None:
    rej = rejected(raw)
    assert rej.reason is Reason.MALFORMED_JSON
    assert rej.detail.startswith("invalid JSON")


@pytest.mark.parametrize("raw", [b"[]", b'[{"event_id": "e"}]', b"1", b'"click"', b"null", b"true"])
def test_not_an_object(raw: bytes) -> None:
    assert rejected(raw).reason is Reason.NOT_AN_OBJECT


# --- per-field rejections -------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 2, -1, 2**64 - 1])
def test_unsupported_version(version: int) -> None:
    rej = rejected(click(v=version))
    assert rej.reason is Reason.UNSUPPORTED_VERSION
    assert (rej.event_id, rej.user_id) == ("e-1", USER)


@pytest.mark.parametrize("version", ["1", 1.0, True, [1], {}])
def test_version_of_wrong_type(version: Any) -> None:
    assert rejected(click(v=version)).reason is Reason.WRONG_TYPE


@pytest.mark.parametrize("field", ["event_id", "user_id", "ts", "type"])
def test_missing_required_field(field: str) -> None:
    rej = rejected(without(click(), field))
    assert rej.reason is Reason.MISSING_FIELD
    assert f"'{field}'" in rej.detail
    rej_null = rejected(click(**{field: None}))
    assert (rej_null.reason, rej_null.detail) == (rej.reason, rej.detail)


def test_view_requires_dwell() -> None:
    rej = rejected(without(view(), "dwell_ms"))
    assert rej.reason is Reason.MISSING_FIELD
    assert "dwell_ms" in rej.detail
    assert rejected(view(dwell_ms=None)).reason is Reason.MISSING_FIELD


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", 17),
        ("event_id", ["e-1"]),
        ("user_id", 42),
        ("user_id", {"id": "u"}),
        ("ts", 1.704067200e12),
        ("ts", float(TS_MS)),
        ("ts", [TS_MS]),
        ("type", 1),
        ("type", ["click"]),
        ("dwell_ms", "4200"),
        ("dwell_ms", 4200.0),
        ("category", 3),
        ("category", ["social"]),
        ("item_id", 9),
        ("session_id", False),
        ("tz_offset_min", "+02:00"),
        ("tz_offset_min", 60.0),
        ("age_band", 13),
    ],
)
def test_wrong_type(field: str, value: Any) -> None:
    rej = rejected(view(**{field: value}))
    assert rej.reason is Reason.WRONG_TYPE
    assert f"'{field}'" in rej.detail


def test_integer_beyond_64_bits_is_wrong_type() -> None:
    # orjson parses integers beyond the 64-bit range as floats.
    raw = orjson.dumps(click()).replace(str(TS_MS).encode(), str(2**64).encode())
    rej = rejected(raw)
    assert (rej.reason, rej.event_id) == (Reason.WRONG_TYPE, "e-1")


@pytest.mark.parametrize("field", ["ts", "dwell_ms", "tz_offset_min", "v"])
def test_bool_is_not_an_int(field: str) -> None:
    for value in (True, False):
        rej = rejected(view(**{field: value}))
        assert rej.reason is Reason.WRONG_TYPE, (field, value)


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-01T00:00:00",  # naive: no offset
        "2024-01-01T00:00:00.123",  # naive with fraction
        "2024-01-01",
        "2024-01-01T00Z",
        "2024-01-01T00:00Z",
        "20240101T000000Z",
        "2024-01-01T00:00:00+0200",
        "2024-01-01T00:00:00+02",
        "2024-01-01T00:00:00.Z",
        "2024-01-01T00:00:00,5Z",
        "2024-13-01T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2016-12-31T23:59:60Z",  # leap seconds are not representable
        "2024-01-01T00:00:00+24:00",
        "0000-01-01T00:00:00Z",
        "２０２４-01-01T00:00:00Z",
        "2024-01-01T00:00:00.123٤Z",  # Arabic-Indic digit in the sub-millisecond part
        "2024-01-01T00:00:00Z ",
        "1717000000000",
        "",
        "yesterday",
    ],
)
def test_ts_string_that_is_not_rfc3339_is_wrong_type(text: str) -> None:
    rej = rejected(click(ts=text))
    assert rej.reason is Reason.WRONG_TYPE
    assert "'ts'" in rej.detail


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", ""),
        ("event_id", "e" * 129),
        ("user_id", ""),
        ("user_id", "u" * 129),
        ("ts", MIN_TS_MS - 1),
        ("ts", 0),
        ("ts", -1),
        ("ts", "1999-12-31T23:59:59.999Z"),
        ("type", "scroll"),
        ("type", "Click"),
        ("type", ""),
        ("dwell_ms", -1),
        ("dwell_ms", MAX_DWELL_MS + 1),
        ("category", "c" * 65),
        ("item_id", "i" * 257),
        ("tz_offset_min", 841),
        ("tz_offset_min", -841),
        ("age_band", "a" * 33),
    ],
)
def test_out_of_range(field: str, value: Any) -> None:
    rej = rejected(view(**{field: value}))
    assert rej.reason is Reason.OUT_OF_RANGE
    assert f"'{field}'" in rej.detail


def test_click_dwell_is_validated_then_ignored() -> None:
    assert accepted(click(dwell_ms=5_000)).dwell_ms == 0
    assert rejected(click(dwell_ms="5000")).reason is Reason.WRONG_TYPE
    assert rejected(click(dwell_ms=-1)).reason is Reason.OUT_OF_RANGE
    assert rejected(click(dwell_ms=MAX_DWELL_MS + 1)).reason is Reason.OUT_OF_RANGE


def test_future_ts() -> None:
    assert accepted(click(ts=NOW_MS + MAX_FUTURE_MS)).ts_ms == NOW_MS + MAX_FUTURE_MS
    rej = rejected(click(ts=NOW_MS + MAX_FUTURE_MS + 1))
    assert rej.reason is Reason.FUTURE_TS
    assert (rej.event_id, rej.user_id) == ("e-1", USER)
    assert rejected(click(ts=2**63)).reason is Reason.FUTURE_TS
    assert rejected(click(ts="2024-05-29T16:31:40.001Z")).reason is Reason.FUTURE_TS  # NOW + 5 min + 1 ms


def test_old_events_are_valid() -> None:
    """Event time drives everything: a replayed log from years ago decodes fine."""
    assert accepted(click(ts="2001-09-09T01:46:40Z"), now_ms=NOW_MS).ts_ms == 1_000_000_000_000


@pytest.mark.parametrize(("message", "topic"), [(click(), "view"), (view(), "click")])
def test_type_topic_mismatch(message: dict[str, Any], topic: str) -> None:
    rej = rejected(message, topic_type=topic, key=KEY)
    assert rej.reason is Reason.TYPE_TOPIC_MISMATCH
    assert (rej.event_id, rej.user_id) == (message["event_id"], USER)


def test_offline_topic_accepts_both_types() -> None:
    assert accepted(click(), topic_type=None).type == "click"
    assert accepted(view(), topic_type=None).type == "view"


@pytest.mark.parametrize("key", [b"user-43", b"", b"USER-42", b"user-42 ", b"\xff\xfe"])
def test_user_key_mismatch(key: bytes) -> None:
    rej = rejected(click(), topic_type="click", key=key)
    assert rej.reason is Reason.USER_KEY_MISMATCH
    assert rej.user_id == USER


def test_key_compares_utf8_bytes() -> None:
    user = "ユーザー-é"
    assert accepted(click(user_id=user), key=user.encode("utf-8")).user_id == user
    assert rejected(click(user_id=user), key=user.encode("utf-16")).reason is Reason.USER_KEY_MISMATCH
    assert accepted(click(user_id=user), key=None).user_id == user


@pytest.mark.parametrize(
    ("message", "kwargs", "reason"),
    [
        # content checks in field order
        (click(event_id="", user_id=""), {}, Reason.OUT_OF_RANGE),
        (without(click(user_id=5), "event_id"), {}, Reason.MISSING_FIELD),
        (click(v=2, event_id=""), {}, Reason.UNSUPPORTED_VERSION),
        (click(user_id=7, ts="naive"), {}, Reason.WRONG_TYPE),
        (view(ts=0, dwell_ms=None), {}, Reason.OUT_OF_RANGE),
        (view(type="scroll", dwell_ms="x"), {}, Reason.OUT_OF_RANGE),
        (view(dwell_ms="1", tz_offset_min=9999), {}, Reason.WRONG_TYPE),
        # content before context
        (click(category=1), {"topic_type": "view", "key": b"x"}, Reason.WRONG_TYPE),
        (click(ts=NOW_MS + 10**9, age_band=1), {}, Reason.WRONG_TYPE),
        # context: topic, then key, then clock
        (click(ts=NOW_MS + 10**9), {"topic_type": "view", "key": b"x"}, Reason.TYPE_TOPIC_MISMATCH),
        (click(ts=NOW_MS + 10**9), {"topic_type": "click", "key": b"x"}, Reason.USER_KEY_MISMATCH),
    ],
)
def test_first_failing_check_wins(message: dict[str, Any], kwargs: dict[str, Any], reason: Reason) -> None:
    assert rejected(message, **kwargs).reason is reason


def test_rejection_names_only_readable_ids() -> None:
    rej = rejected(click(event_id=5, user_id="u" * 129))
    assert (rej.reason, rej.event_id, rej.user_id, rej.index) == (Reason.WRONG_TYPE, None, None, None)
    rej = rejected(click(event_id="e-9", ts="nope"))
    assert (rej.event_id, rej.user_id) == ("e-9", USER)


# --- batch envelopes ----------------------------------------------------------------------


def envelope(*items: Any, **extra: Any) -> dict[str, Any]:
    return {"v": 1, "events": list(items), **extra}


def test_envelope_of_valid_events_keeps_order() -> None:
    items = [click(event_id=f"c{i}", ts=TS_MS + i) for i in range(5)]
    events, rejections = decode(envelope(*items), topic_type="click", key=KEY)
    assert rejections == []
    assert [e.event_id for e in events] == ["c0", "c1", "c2", "c3", "c4"]
    assert [e.ts_ms for e in events] == [TS_MS + i for i in range(5)]


def test_envelope_mixed_good_and_bad_elements_keep_indices() -> None:
    items = [
        click(event_id="ok-0"),
        click(event_id="bad-1", type="scroll"),
        5,
        click(event_id="ok-3", category="NEWS"),
        without(click(event_id="bad-4"), "ts"),
        [click()],
        click(event_id="bad-6", ts=NOW_MS + MAX_FUTURE_MS + 1),
        click(event_id="bad-7", v=2),
    ]
    events, rejections = decode(envelope(*items), topic_type="click", key=KEY)
    assert [e.event_id for e in events] == ["ok-0", "ok-3"]
    assert events[1].category == "news"
    assert [(r.index, r.reason, r.event_id) for r in rejections] == [
        (1, Reason.OUT_OF_RANGE, "bad-1"),
        (2, Reason.NOT_AN_OBJECT, None),
        (4, Reason.MISSING_FIELD, "bad-4"),
        (5, Reason.NOT_AN_OBJECT, None),
        (6, Reason.FUTURE_TS, "bad-6"),
        (7, Reason.UNSUPPORTED_VERSION, "bad-7"),
    ]


def test_envelope_key_mismatch_of_one_element() -> None:
    items = [click(event_id="a"), click(event_id="b", user_id="someone-else"), click(event_id="c")]
    events, rejections = decode(envelope(*items), topic_type="click", key=KEY)
    assert [e.event_id for e in events] == ["a", "c"]
    assert [(r.index, r.reason, r.user_id) for r in rejections] == [
        (1, Reason.USER_KEY_MISMATCH, "someone-else")
    ]


def test_envelope_topic_mismatch_of_one_element() -> None:
    items = [view(event_id="a"), click(event_id="b"), view(event_id="c")]
    events, rejections = decode(envelope(*items), topic_type="view", key=KEY)
    assert [e.event_id for e in events] == ["a", "c"]
    assert [(r.index, r.reason, r.event_id) for r in rejections] == [(1, Reason.TYPE_TOPIC_MISMATCH, "b")]


def test_envelope_offline_mixes_types() -> None:
    events, rejections = decode(envelope(view(), click()), topic_type=None, key=None)
    assert rejections == []
    assert [e.type for e in events] == ["view", "click"]


def test_oversized_envelope_is_one_rejection() -> None:
    items = [click(event_id=f"e{i}", item_id="i" * 200) for i in range(300)]
    raw = orjson.dumps(envelope(*items))
    assert len(raw) > MAX_MESSAGE_BYTES
    rej = rejected(raw, topic_type="click", key=KEY)
    assert (rej.reason, rej.index) == (Reason.OVERSIZED, None)


@pytest.mark.parametrize("items", [[], None, {}, "events", 3, {"0": click()}])
def test_invalid_batch_shape(items: Any) -> None:
    rej = rejected({"v": 1, "events": items})
    assert (rej.reason, rej.index, rej.event_id) == (Reason.INVALID_BATCH, None, None)
    assert "'events'" in rej.detail


def test_batch_cap() -> None:
    events, rejections = decode(envelope(*([0] * MAX_BATCH_EVENTS)))
    assert events == []
    assert [r.index for r in rejections] == list(range(MAX_BATCH_EVENTS))
    assert {r.reason for r in rejections} == {Reason.NOT_AN_OBJECT}

    rej = rejected(envelope(*([0] * (MAX_BATCH_EVENTS + 1))))
    assert rej.reason is Reason.INVALID_BATCH
    assert str(MAX_BATCH_EVENTS) in rej.detail


@pytest.mark.parametrize(("version", "reason"), [(2, Reason.UNSUPPORTED_VERSION), ("1", Reason.WRONG_TYPE)])
def test_envelope_version_rejects_whole_message(version: Any, reason: Reason) -> None:
    rej = rejected({"v": version, "events": [click()]})
    assert (rej.reason, rej.index) == (reason, None)


def test_envelope_version_defaults_to_1_and_other_fields_are_ignored() -> None:
    events, rejections = decode({"events": [click()], "user_id": 5, "sdk": "ios-3.1"}, key=KEY)
    assert rejections == []
    assert [e.event_id for e in events] == ["e-1"]


def test_envelope_elements_are_validated_as_events() -> None:
    # 'events' inside an element is just an unknown field; envelopes do not nest.
    events, rejections = decode(envelope(click(events=[view()])))
    assert rejections == []
    assert [e.type for e in events] == ["click"]


# --- encoding -------------------------------------------------------------------------------


def test_encode_event_omits_none_and_click_dwell() -> None:
    ev = Event(USER, TS_MS, "click", "e-1", "social", 0, None, None, "i-1", None)
    assert orjson.loads(encode_event(ev)) == {
        "v": 1,
        "event_id": "e-1",
        "user_id": USER,
        "ts": TS_MS,
        "type": "click",
        "category": "social",
        "item_id": "i-1",
    }
    full = Event(USER, TS_MS, "view", "e-2", "games", 10, 60, "adult", "i", "s")
    assert orjson.loads(encode_event(full)) == {
        "v": 1,
        "event_id": "e-2",
        "user_id": USER,
        "ts": TS_MS,
        "type": "view",
        "category": "games",
        "dwell_ms": 10,
        "item_id": "i",
        "session_id": "s",
        "tz_offset_min": 60,
        "age_band": "adult",
    }


# --- properties -----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
FIELD_NAMES = [
    "v",
    "event_id",
    "user_id",
    "ts",
    "type",
    "dwell_ms",
    "category",
    "item_id",
    "session_id",
    "tz_offset_min",
    "age_band",
    "events",
]
field_values = (
    json_values
    | st.sampled_from(["click", "view", "social", "Games", USER, "2024-01-01T00:00:00Z", "2024-01-01T00:00"])
    | st.integers(min_value=MIN_TS_MS - 10, max_value=NOW_MS + MAX_FUTURE_MS + 10)
    | st.integers(min_value=-1000, max_value=1000)
)
event_like = st.dictionaries(st.sampled_from(FIELD_NAMES[:-1]), field_values)


def check_outcome(events: list[Event], rejections: list[Rejection]) -> None:
    assert all(type(e) is Event for e in events)
    assert all(type(r) is Rejection and isinstance(r.reason, Reason) for r in rejections)
    assert all(r.reason is not Reason.TOO_LATE for r in rejections)
    assert len(events) + len(rejections) >= 1
    for e in events:
        assert e.category in CATEGORIES
        assert MIN_TS_MS <= e.ts_ms <= NOW_MS + MAX_FUTURE_MS
        assert 0 <= e.dwell_ms <= MAX_DWELL_MS and (e.type == "view" or e.dwell_ms == 0)


@settings(max_examples=300)
@given(st.binary(max_size=200), st.sampled_from([None, "click", "view"]), st.none() | st.binary(max_size=8))
def test_arbitrary_bytes_never_raise(raw: bytes, topic: str | None, key: bytes | None) -> None:
    check_outcome(*decode_message(raw, topic_type=topic, key=key, now_ms=NOW_MS))


@settings(max_examples=300)
@given(json_values)
def test_arbitrary_json_never_raises(value: Any) -> None:
    events, rejections = decode(value)
    check_outcome(events, rejections)
    if not isinstance(value, dict):
        assert [r.reason for r in rejections] == [Reason.NOT_AN_OBJECT]


@settings(max_examples=500)
@given(event_like, st.sampled_from([None, "click", "view"]), st.sampled_from([None, KEY, b"\xff"]))
def test_event_shaped_objects_give_exactly_one_outcome(
    obj: dict[str, Any], topic: str | None, key: bytes | None
) -> None:
    events, rejections = decode(obj, topic_type=topic, key=key)
    check_outcome(events, rejections)
    assert len(events) + len(rejections) == 1
    for r in rejections:
        assert r.index is None


@settings(max_examples=200)
@given(st.lists(event_like | json_values, min_size=1, max_size=20))
def test_envelope_gives_one_outcome_per_element(items: list[Any]) -> None:
    events, rejections = decode({"v": 1, "events": items})
    check_outcome(events, rejections)
    assert len(events) + len(rejections) == len(items)
    indices = [r.index if r.index is not None else -1 for r in rejections]
    assert indices == sorted(set(indices))  # message order, one rejection per element
    assert all(0 <= i < len(items) for i in indices)


def optional_text(max_size: int) -> st.SearchStrategy[str | None]:
    return st.none() | st.text(max_size=max_size)


@st.composite
def valid_events(draw: st.DrawFn) -> Event:
    etype = draw(st.sampled_from(["click", "view"]))
    return Event(
        user_id=draw(st.text(min_size=1, max_size=128)),
        ts_ms=draw(st.integers(min_value=MIN_TS_MS, max_value=NOW_MS + MAX_FUTURE_MS)),
        type=etype,
        event_id=draw(st.text(min_size=1, max_size=128)),
        category=draw(st.sampled_from(CATEGORIES)),
        dwell_ms=draw(st.integers(min_value=0, max_value=MAX_DWELL_MS)) if etype == "view" else 0,
        tz_offset_min=draw(st.none() | st.integers(min_value=-840, max_value=840)),
        age_band=draw(optional_text(32)),
        item_id=draw(optional_text(256)),
        session_id=draw(optional_text(128)),
    )


@settings(max_examples=300)
@given(valid_events())
def test_encode_decode_round_trip(ev: Event) -> None:
    decoded = accepted(encode_event(ev), topic_type=ev.type, key=ev.user_id.encode("utf-8"))
    assert decoded == ev
    assert encode_event(decoded) == encode_event(ev)


@settings(max_examples=100)
@given(st.lists(valid_events(), min_size=1, max_size=10))
def test_envelope_round_trip(evs: list[Event]) -> None:
    raw = b'{"v":1,"events":[' + b",".join(encode_event(e) for e in evs) + b"]}"
    events, rejections = decode_message(raw, topic_type=None, key=None, now_ms=NOW_MS)
    assert rejections == []
    assert events == evs


@settings(max_examples=300)
@given(
    st.datetimes(min_value=datetime(2000, 1, 1, 14, 0), max_value=datetime(2100, 1, 1)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_rfc3339_with_any_offset_gives_the_same_instant(local: datetime, offset_min: int) -> None:
    moment = local.replace(tzinfo=timezone(timedelta(minutes=offset_min)))
    text = moment.isoformat(timespec="microseconds")
    expected_ms = (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)
    ev = accepted(click(ts=text), now_ms=expected_ms)
    assert ev.ts_ms == expected_ms


RFC3339_REFERENCE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)


def reference_rfc3339_ms(text: str) -> int | None:
    """Slow, obviously-correct RFC 3339 -> epoch ms, to check the fast parser against."""
    match = RFC3339_REFERENCE.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, sign, off_h, off_m = match.group(7), match.group(8), match.group(9), match.group(10)
    offset = timedelta(0)
    if sign is not None:
        if int(off_h) > 23 or int(off_m) > 59:
            return None
        offset = timedelta(hours=int(off_h), minutes=int(off_m)) * (1 if sign == "+" else -1)
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
    except ValueError:
        return None
    millis = int((fraction or "0").ljust(3, "0")[:3])
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1) + millis


@st.composite
def near_rfc3339(draw: st.DrawFn) -> str:
    """Mostly well-formed timestamps with values at and beyond every field's range."""

    def number(low: int, high: int) -> int:
        return draw(st.integers(min_value=low, max_value=high))

    date_time = "{:04d}-{:02d}-{:02d}{}{:02d}:{:02d}:{:02d}".format(
        number(1990, 2100) if draw(st.booleans()) else number(0, 9999),
        number(0, 13),
        number(0, 32),
        draw(st.sampled_from("Tt x")),
        number(0, 24),
        number(0, 60),
        number(0, 60),
    )
    fraction = draw(st.sampled_from(["", "."]))
    if fraction:
        fraction += draw(st.text(alphabet="0123456789", max_size=9))
    sign = draw(st.sampled_from("+-"))
    offset = draw(
        st.sampled_from(["Z", "z", "", "+0200", "+02", " Z", "Z "])
        | st.builds("{}{:02d}:{:02d}".format, st.just(sign), st.integers(0, 24), st.integers(0, 60))
    )
    return date_time + fraction + offset


@settings(max_examples=1000)
@given(near_rfc3339() | st.text(alphabet="0123456789-:.TtZz+ ", min_size=18, max_size=32))
def test_ts_strings_match_a_reference_rfc3339_parser(text: str) -> None:
    expected = reference_rfc3339_ms(text)
    far_future = 10**15
    if expected is None:
        assert rejected(click(ts=text), now_ms=far_future).reason is Reason.WRONG_TYPE
    elif expected < MIN_TS_MS:
        assert rejected(click(ts=text), now_ms=far_future).reason is Reason.OUT_OF_RANGE
    else:
        assert accepted(click(ts=text), now_ms=far_future).ts_ms == expected


def test_session_id_has_no_length_limit() -> None:
    """The contract sets none (reliability review D12): only the message's 64 KiB bound it."""
    assert accepted(click(session_id="s" * 10_000)).session_id == "s" * 10_000
    assert rejected(click(session_id=5)).reason is Reason.WRONG_TYPE
