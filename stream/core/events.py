"""Decoding and validation of contract-v1 input events (docs/contracts.md §2).

`decode_message` turns one Kafka message value (or one log line) into valid `Event`s plus typed
`Rejection`s; it never raises on bad input, so one bad event cannot stop a worker.

Decisions where the contract is silent (also pinned by tests/unit/test_events.py):

* A field whose value is JSON ``null`` counts as absent: a required one is ``missing_field``, an
  optional one takes its default (``category`` -> ``"other"``).
* ``ts`` as a string must be strict RFC 3339 (``YYYY-MM-DD[T|t| ]HH:MM:SS[.frac](Z|z|±HH:MM)``);
  anything else, including naive timestamps (no offset), other ISO 8601 forms and leap seconds
  (``:60``), is ``wrong_type``. Fractions finer than a millisecond are floored.
* Length limits count characters (code points), not bytes. Required strings must be non-empty;
  optional strings may be empty and are kept as given. ``category`` is at most 64 characters.
  ``session_id`` has no length limit (the contract sets none; the 64 KiB message limit bounds it,
  and it is never stored); ``age_band`` is at most 32 characters (it is kept in the user's state:
  docs/contracts.md §2 says why).
* A click's ``dwell_ms``, when present, is validated like a view's and then set to 0.
* A top-level object with an ``events`` key is a batch envelope (the key is reserved); its other
  fields except ``v`` are ignored, and an element may carry its own ``v`` (checked too).
* Message-level rejections (oversized, malformed_json, not_an_object, the envelope's version,
  invalid_batch) carry ``index``, ``event_id`` and ``user_id`` = None. JSON nested deeper than
  orjson's limit (1024) is ``malformed_json``.

Check order, first failure wins:

1. message: ``oversized`` -> ``malformed_json`` -> ``not_an_object`` -> (envelope: ``v`` ->
   ``invalid_batch`` -> each element: ``not_an_object`` or the event checks below);
2. event, content first, in this order: ``v``, ``event_id``, ``user_id``, ``ts``, ``type``,
   ``dwell_ms``, ``category``, ``item_id``, ``session_id``, ``tz_offset_min``, ``age_band``
   (per field: ``missing_field`` -> ``wrong_type`` -> ``out_of_range``);
3. event, context last (they depend on where and when it was read): ``type_topic_mismatch``,
   ``user_key_mismatch``, ``future_ts``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from enum import StrEnum
from itertools import chain, repeat
from typing import Annotated, Any, Literal

import msgspec
import orjson
from msgspec import Meta

__all__ = [
    "CATEGORIES",
    "MAX_BATCH_EVENTS",
    "MAX_DWELL_MS",
    "MAX_FUTURE_MS",
    "MAX_MESSAGE_BYTES",
    "MIN_TS_MS",
    "Event",
    "Reason",
    "Rejection",
    "EventLists",
    "EventTuple",
    "decode_message",
    "decode_message_into",
    "decode_messages_into",
    "decode_message_tuples",
    "encode_event",
]

CATEGORIES: tuple[str, ...] = ("social", "short_video", "messaging", "games", "web", "news", "other")
MAX_MESSAGE_BYTES = 64 * 1024
MAX_FUTURE_MS = 5 * 60 * 1000  # events more than 5 min ahead of wall clock are invalid
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z; earlier is out of range
MAX_DWELL_MS = 24 * 3600 * 1000
MAX_BATCH_EVENTS = 1_000

MAX_ID_CHARS = 128  # event_id, user_id
MAX_ITEM_ID_CHARS = 256
MAX_CATEGORY_CHARS = 64
MAX_AGE_BAND_CHARS = 32
MAX_TZ_OFFSET_MIN = 840


class Reason(StrEnum):
    """Machine-readable rejection reasons (the DLQ ``reason`` field)."""

    OVERSIZED = "oversized"
    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    UNSUPPORTED_VERSION = "unsupported_version"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    TYPE_TOPIC_MISMATCH = "type_topic_mismatch"
    USER_KEY_MISMATCH = "user_key_mismatch"
    FUTURE_TS = "future_ts"
    INVALID_BATCH = "invalid_batch"
    TOO_LATE = "too_late"  # assigned by the window stage, never by the decoder
    MISSING_KEY = "missing_key"  # assigned by the live worker (offline lines have no key), never by the decoder
    POISON = "poison"  # assigned by the live worker: the message failed processing too often


@dataclass(frozen=True, slots=True)
class Event:
    """One valid contract-v1 event, normalised (ts in epoch ms, category canonical)."""

    user_id: str
    ts_ms: int
    type: str
    event_id: str
    category: str
    dwell_ms: int
    tz_offset_min: int | None
    age_band: str | None
    item_id: str | None
    session_id: str | None



@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one message or one event of it was refused."""

    reason: Reason
    detail: str
    index: int | None
    event_id: str | None
    user_id: str | None


# A frozen dataclass's __init__ sets each field through object.__setattr__: measured 1.3 µs per
# event, as much as orjson.loads and every check together. The hot path instead fills a plain
# slotted twin with the same layout and retypes it as Event, which CPython allows between classes
# with identical __slots__; the result is indistinguishable from Event(...) (pinned by a test).
_EventBuilder: Any = type("_EventBuilder", (), {"__slots__": tuple(f.name for f in fields(Event))})
_new_builder = _EventBuilder.__new__

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
_CANONICAL_CATEGORY: dict[str, str] = {c: c for c in CATEGORIES}
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# Every RFC 3339 numeric offset ("+05:30", "-00:00", ...) -> minutes east of UTC: one lookup both
# validates and converts it.
_RFC3339_OFFSET_MIN: dict[str, int] = {
    f"{sign}{h:02d}:{m:02d}": factor * (h * 60 + m)
    for sign, factor in (("+", 1), ("-", -1))
    for h in range(24)
    for m in range(60)
}
# Every 1-3 digit fraction of a second ("5", "05", "050", ...) -> milliseconds.
_RFC3339_FRACTION_MS: dict[str, int] = {
    f"{ms:03d}"[:width]: ms for width in (3, 2, 1) for ms in range(0, 1000, 10 ** (3 - width))
}


def decode_message(
    raw: bytes, *, topic_type: str | None, key: bytes | None, now_ms: int
) -> tuple[list[Event], list[Rejection]]:
    return _decode_message(raw, topic_type, key, now_ms, _make_event)


EventTuple = tuple[str, int, str, str, str, int, int | None, str | None, str | None, str | None]
"""A valid event as a plain tuple in :class:`Event` field order (the offline columnar path)."""


def decode_message_tuples(
    raw: bytes, *, topic_type: str | None, key: bytes | None, now_ms: int
) -> tuple[list[EventTuple], list[Rejection]]:
    """:func:`decode_message`, but valid events come back as :data:`EventTuple` (no objects built)."""
    return _decode_message(raw, topic_type, key, now_ms, _make_tuple)


@dataclass(slots=True)
class EventLists:
    """Valid events as parallel lists in :class:`Event` field order (without ``item_id`` and
    ``session_id``, which nothing downstream keeps): the columns of
    :class:`~stream.core.windows.types.EventColumns` before they become arrays."""

    user_ids: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    dwell: list[int] = field(default_factory=list)
    tz: list[int | None] = field(default_factory=list)
    bands: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.user_ids)

    def add(self, user_id: str, ts: int, etype: str, event_id: str, category: str, dwell: int,
            tz: int | None, band: str | None) -> None:
        """Append one event."""
        self.user_ids.append(user_id)
        self.ts.append(ts)
        self.types.append(etype)
        self.event_ids.append(event_id)
        self.categories.append(category)
        self.dwell.append(dwell)
        self.tz.append(tz)
        self.bands.append(band)

    def extend_tuples(self, events: list[EventTuple]) -> None:
        if events:
            user, ts, etype, event_id, category, dwell, tz, band, _, _ = zip(*events)
            self.user_ids += user
            self.ts += ts
            self.types += etype
            self.event_ids += event_id
            self.categories += category
            self.dwell += dwell
            self.tz += tz
            self.bands += band


def decode_message_into(raw: bytes, *, topic_type: str | None, key: bytes | None, now_ms: int,
                        out: EventLists) -> tuple[int, list[Rejection]]:
    """:func:`decode_message`, the valid events appended to ``out``: (how many, the rejections).

    A single event or a batch envelope whose every element is a valid event with only contract
    fields (the common case) is decoded by a typed decoder (msgspec) straight into the lists.
    Anything else — a bad element, an unknown field, an RFC 3339 time in a single event — goes
    through :func:`decode_message`'s own checks, so the result (events, rejections and their
    details) is always exactly that of :func:`decode_message` (pinned by a differential property
    test, tests/unit/test_fast_decode.py).
    """
    if len(raw) <= MAX_MESSAGE_BYTES:
        if b'"events"' in raw:
            n = _decode_envelope_fast(raw, topic_type, key, now_ms, out)
            if n:
                return n, []
        elif _decode_one_fast(raw, topic_type, key, now_ms, out):
            return 1, []
    events, rejections = _decode_message(raw, topic_type, key, now_ms, _make_tuple)
    if len(events) == 1:  # one event per message (or per log line): no zip
        out.add(*events[0][:8])
    elif events:
        out.extend_tuples(events)
    return len(events), rejections


# The fast path's shape of a valid event: every contract field typed and bounded as the checks of
# _decode_event bound it, unknown fields refused (the contract ignores them: those messages take the
# slow path, which does; this decoder then never skips a value, so it can never accept JSON that
# orjson refuses, e.g. a number overflowing a double or nesting deeper than orjson's limit).
_Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]


class _FastEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    event_id: _Id
    user_id: _Id
    ts: int | str
    type: Literal["click", "view"]
    dwell_ms: Annotated[int, Meta(ge=0, le=MAX_DWELL_MS)] | None = None
    category: Annotated[str, Meta(max_length=MAX_CATEGORY_CHARS)] | None = None
    item_id: Annotated[str, Meta(max_length=MAX_ITEM_ID_CHARS)] | None = None
    session_id: str | None = None
    tz_offset_min: Annotated[int, Meta(ge=-MAX_TZ_OFFSET_MIN, le=MAX_TZ_OFFSET_MIN)] | None = None
    age_band: Annotated[str, Meta(max_length=MAX_AGE_BAND_CHARS)] | None = None
    v: Literal[1] | None = None


class _FastEnvelope(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    events: Annotated[list[_FastEvent], Meta(min_length=1, max_length=MAX_BATCH_EVENTS)]
    v: Literal[1] | None = None


_decode_envelope = msgspec.json.Decoder(_FastEnvelope).decode
_decode_one = msgspec.json.Decoder(_FastEvent).decode
_MsgspecError = msgspec.DecodeError  # ValidationError is a subclass
# category as sent -> canonical name; None (absent or null) -> "other"; anything else: the slow path's rule
_CATEGORY_FAST: dict[str | None, str] = {name: canonical for name, canonical in _CANONICAL_CATEGORY.items()}
_CATEGORY_FAST[None] = "other"


def _decode_one_fast(raw: bytes, topic_type: str | None, key: bytes | None, now_ms: int, out: EventLists) -> bool:
    """:func:`_decode_envelope_fast` for a message of one event (no envelope): True if appended."""
    try:
        e = _decode_one(raw)
    except _MsgspecError:
        return False
    ts = e.ts
    if type(ts) is not int or ts < MIN_TS_MS or ts > now_ms + MAX_FUTURE_MS:
        return False  # (an RFC 3339 time: the slow path parses it)
    etype = e.type
    if topic_type is not None and etype != topic_type:
        return False
    if key is not None and e.user_id != key.decode("utf-8", "surrogateescape"):
        return False
    dwell = e.dwell_ms
    if etype != "view":
        dwell = 0
    elif dwell is None:
        return False
    category = _CATEGORY_FAST.get(e.category)
    if category is None:  # not canonical as sent: the slow path's rule
        category = _canonical_category(e.category)  # type: ignore[arg-type]
    out.add(e.user_id, ts, etype, e.event_id, category, dwell, e.tz_offset_min, e.age_band)
    return True


def _decode_envelope_fast(raw: bytes, topic_type: str | None, key: bytes | None, now_ms: int,
                          out: EventLists) -> int:
    """Append an envelope of valid events to ``out`` and return their number; 0 (nothing appended)
    when any check of :func:`_decode_event` might refuse something: the caller then decodes it the
    slow way."""
    counts = _decode_envelopes_fast((raw,), topic_type, (key,), now_ms, out)
    return 0 if counts is None else counts[0]


def _events_of(raw: bytes) -> list[_FastEvent]:
    """A message's events as the fast path's typed decoder reads them: an envelope's elements, or a
    single event as a list of one. Raises the decoder's error on anything else."""
    return _decode_envelope(raw).events if b'"events"' in raw else [_decode_one(raw)]


def _decode_envelopes_fast(raws: Sequence[bytes], topic_type: str | None, keys: Sequence[bytes | None],
                           now_ms: int, out: EventLists) -> list[int] | None:
    """Append the events of messages of valid events (envelopes, or single events) to ``out`` and
    return each one's number; None (nothing appended) when any check of :func:`_decode_event` might
    refuse something in any of them: the caller then decodes them one by one. Each message is
    parsed on its own (never joined with the others); every check is one of :func:`_decode_event`'s,
    done over all the messages' events at once, in C (counts, min/max, lookups, list comparisons).
    A single event (no envelope) counts as an envelope of one."""
    try:
        if len(raws) == 1:  # (one message: the same checks, without the per-message lists)
            raw = raws[0]
            if len(raw) > MAX_MESSAGE_BYTES:
                return None
            evs = _events_of(raw)
            counts = [len(evs)]
        else:
            if max(map(len, raws)) > MAX_MESSAGE_BYTES:
                return None
            lists = list(map(_events_of, raws))
            counts = list(map(len, lists))
            evs = list(chain.from_iterable(lists))
    except _MsgspecError:
        return None
    n = len(evs)
    users = [e.user_id for e in evs]
    if None in keys:
        if keys.count(None) != len(keys):
            return None  # some keyed, some not (no caller does that): one by one
    elif len(keys) == 1:
        if users.count(keys[0].decode("utf-8", "surrogateescape")) != n:  # type: ignore[union-attr]
            return None
    else:
        key_users = [k.decode("utf-8", "surrogateescape") for k in keys]  # type: ignore[union-attr]
        if list(chain.from_iterable(map(repeat, key_users, counts))) != users:
            return None
    types: list[str] = [e.type for e in evs]
    if topic_type is not None and types.count(topic_type) != n:
        return None
    ts: list[Any] = [e.ts for e in evs]
    if list(map(type, ts)).count(int) != n:  # RFC 3339 strings among them
        ts = [t if type(t) is int else _parse_rfc3339_ms(t) for t in ts]
        if None in ts:
            return None
    if min(ts) < MIN_TS_MS or max(ts) > now_ms + MAX_FUTURE_MS:
        return None
    dwell: list[Any]
    if topic_type == "click":
        dwell = [0] * n
    else:
        dwell = [e.dwell_ms for e in evs]
        if topic_type == "view":
            if None in dwell:
                return None
        else:
            dwell = [(-1 if d is None else d) if t == "view" else 0 for t, d in zip(types, dwell)]
            if -1 in dwell:
                return None
    categories: list[Any] = list(map(_CATEGORY_FAST.get, [e.category for e in evs]))
    if None in categories:  # not canonical as sent: the slow path's rule (case-folded, else "other")
        categories = [c if c is not None else _canonical_category(e.category)  # type: ignore[arg-type]
                      for c, e in zip(categories, evs)]
    out.user_ids += users
    out.ts += ts
    out.types += types
    out.event_ids += [e.event_id for e in evs]
    out.categories += categories
    out.dwell += dwell
    out.tz += [e.tz_offset_min for e in evs]
    out.bands += [e.age_band for e in evs]
    return counts


def decode_messages_into(raws: Sequence[bytes], *, topic_type: str | None, keys: Sequence[bytes | None],
                         now_ms: int, out: EventLists) -> tuple[list[int], list[Sequence[Rejection]]]:
    """:func:`decode_message_into` of each message in order (all of one topic type): each one's
    number of valid events and rejections, in order. When the fast path takes every message
    (envelopes and single events of contract fields), the checks run over all their events at once
    (the per-message Python is what costs at a few events per message); otherwise each message is
    decoded on its own, with exactly the same result (tests/unit/test_fast_decode.py)."""
    if len(raws) > 1:
        counts = _decode_envelopes_fast(raws, topic_type, keys, now_ms, out)
        if counts is not None:
            return counts, [()] * len(counts)
    done = [decode_message_into(raw, topic_type=topic_type, key=key, now_ms=now_ms, out=out)
            for raw, key in zip(raws, keys)]
    return [n for n, _ in done], [bad for _, bad in done]


def _decode_message(raw: bytes, topic_type: str | None, key: bytes | None, now_ms: int,
                    make: Any) -> tuple[list[Any], list[Rejection]]:
    """Decode one Kafka message value (or one log line) into valid events and rejections.

    Args:
        raw: the message value; a single event object or a batch envelope ``{"events": [...]}``.
        topic_type: ``"click"`` for events.clicks, ``"view"`` for events.views, None offline.
        key: the Kafka message key (user_id bytes), or None when there is no key to check.
        now_ms: wall-clock time in epoch ms, for the future-timestamp check.

    Returns:
        The valid events in message order and the rejections (with ``index`` inside an envelope).
        Never raises on bad input.
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        detail = f"message is {len(raw)} bytes, limit {MAX_MESSAGE_BYTES}"
        return [], [_message_rejection(Reason.OVERSIZED, detail)]
    try:
        obj = _loads(raw)
    except _JSONDecodeError as exc:
        return [], [_message_rejection(Reason.MALFORMED_JSON, f"invalid JSON: {exc}"[:200])]
    if type(obj) is not dict:
        detail = f"message is a JSON {_json_type(obj)}, expected object"
        return [], [_message_rejection(Reason.NOT_AN_OBJECT, detail)]
    # Invalid UTF-8 in the key becomes lone surrogates, which no decoded user_id can contain
    # (orjson rejects them), so such a key mismatches every event instead of raising.
    key_user = None if key is None else key.decode("utf-8", "surrogateescape")
    limit_ms = now_ms + MAX_FUTURE_MS

    if "events" not in obj:
        result = _decode_event(obj, None, topic_type, key_user, limit_ms, make)
        if type(result) is Rejection:
            return [], [result]
        return [result], []

    version = obj.get("v")
    if version is not None and (type(version) is not int or version != 1):
        return [], [_message_rejection(*_version_error(version))]
    items = obj["events"]
    if type(items) is not list or not items:
        what = "an empty list" if type(items) is list else f"a JSON {_json_type(items)}"
        detail = f"'events' must be a non-empty list, got {what}"
        return [], [_message_rejection(Reason.INVALID_BATCH, detail)]
    if len(items) > MAX_BATCH_EVENTS:
        detail = f"'events' has {len(items)} elements, limit {MAX_BATCH_EVENTS}"
        return [], [_message_rejection(Reason.INVALID_BATCH, detail)]
    events: list[Any] = []
    rejections: list[Rejection] = []
    for index, item in enumerate(items):
        if type(item) is not dict:
            detail = f"element is a JSON {_json_type(item)}, expected object"
            rejections.append(Rejection(Reason.NOT_AN_OBJECT, detail, index, None, None))
            continue
        result = _decode_event(item, index, topic_type, key_user, limit_ms, make)
        if type(result) is Rejection:
            rejections.append(result)
        else:
            events.append(result)
    return events, rejections


def encode_event(ev: Event) -> bytes:
    """Serialise an event as contract-v1 JSON: ts as int epoch ms, None fields omitted.

    Clicks carry no ``dwell_ms`` (the decoder sets it to 0), so ``decode_message`` of the result
    gives back an equal event.
    """
    out: dict[str, Any] = {
        "v": 1,
        "event_id": ev.event_id,
        "user_id": ev.user_id,
        "ts": ev.ts_ms,
        "type": ev.type,
        "category": ev.category,
    }
    if ev.type == "view":
        out["dwell_ms"] = ev.dwell_ms
    if ev.item_id is not None:
        out["item_id"] = ev.item_id
    if ev.session_id is not None:
        out["session_id"] = ev.session_id
    if ev.tz_offset_min is not None:
        out["tz_offset_min"] = ev.tz_offset_min
    if ev.age_band is not None:
        out["age_band"] = ev.age_band
    return orjson.dumps(out)


def _decode_event(
    obj: dict[str, Any], index: int | None, topic_type: str | None, key_user: str | None, limit_ms: int,
    make: Any = None,
) -> Any:
    """Validate one event object; the order of checks is the one in the module docstring."""
    get = obj.get
    version = get("v")
    if version is not None and (type(version) is not int or version != 1):
        return _rejection(obj, index, *_version_error(version))

    event_id = get("event_id")
    if type(event_id) is not str or not 0 < len(event_id) <= MAX_ID_CHARS:
        return _field_rejection(obj, index, "event_id", event_id, str, f"1..{MAX_ID_CHARS} characters")
    user_id = get("user_id")
    if type(user_id) is not str or not 0 < len(user_id) <= MAX_ID_CHARS:
        return _field_rejection(obj, index, "user_id", user_id, str, f"1..{MAX_ID_CHARS} characters")

    ts = get("ts")
    if type(ts) is not int:
        parsed = _parse_rfc3339_ms(ts) if type(ts) is str else None
        if parsed is None:
            if ts is None:
                return _rejection(obj, index, Reason.MISSING_FIELD, "field 'ts' is required")
            return _rejection(
                obj,
                index,
                Reason.WRONG_TYPE,
                f"field 'ts': expected int epoch ms or RFC 3339 string with offset, got {_shown(ts)}",
            )
        ts = parsed
    if ts < MIN_TS_MS:
        return _rejection(obj, index, Reason.OUT_OF_RANGE, f"field 'ts': {ts} is before 2000-01-01T00:00:00Z")

    etype = get("type")
    if etype == "view":
        is_view = True
    elif etype == "click":
        is_view = False
    elif type(etype) is str:
        detail = f"field 'type': {_shown(etype)} is not 'click' or 'view'"
        return _rejection(obj, index, Reason.OUT_OF_RANGE, detail)
    else:
        return _field_rejection(obj, index, "type", etype, str, "")

    dwell_ms = get("dwell_ms")
    if dwell_ms is None:
        if is_view:
            return _rejection(obj, index, Reason.MISSING_FIELD, "field 'dwell_ms' is required for views")
        dwell_ms = 0
    elif type(dwell_ms) is not int or not 0 <= dwell_ms <= MAX_DWELL_MS:
        return _field_rejection(obj, index, "dwell_ms", dwell_ms, int, f"0..{MAX_DWELL_MS}")
    elif not is_view:
        dwell_ms = 0

    category = get("category")
    if category is None:
        category = "other"
    elif type(category) is not str or len(category) > MAX_CATEGORY_CHARS:
        allowed = f"at most {MAX_CATEGORY_CHARS} characters"
        return _field_rejection(obj, index, "category", category, str, allowed)
    else:
        category = _canonical_category(category)

    item_id = get("item_id")
    if item_id is not None and (type(item_id) is not str or len(item_id) > MAX_ITEM_ID_CHARS):
        allowed = f"at most {MAX_ITEM_ID_CHARS} characters"
        return _field_rejection(obj, index, "item_id", item_id, str, allowed)
    session_id = get("session_id")
    if session_id is not None and type(session_id) is not str:  # no length limit (the contract sets none)
        return _field_rejection(obj, index, "session_id", session_id, str, "")
    tz_offset_min = get("tz_offset_min")
    if tz_offset_min is not None and (
        type(tz_offset_min) is not int or not -MAX_TZ_OFFSET_MIN <= tz_offset_min <= MAX_TZ_OFFSET_MIN
    ):
        return _field_rejection(
            obj, index, "tz_offset_min", tz_offset_min, int, f"-{MAX_TZ_OFFSET_MIN}..{MAX_TZ_OFFSET_MIN}"
        )
    age_band = get("age_band")
    if age_band is not None and (type(age_band) is not str or len(age_band) > MAX_AGE_BAND_CHARS):
        allowed = f"at most {MAX_AGE_BAND_CHARS} characters"
        return _field_rejection(obj, index, "age_band", age_band, str, allowed)

    if topic_type is not None and etype != topic_type:
        return _rejection(
            obj, index, Reason.TYPE_TOPIC_MISMATCH, f"a {etype} event on the {topic_type} topic"
        )
    if key_user is not None and user_id != key_user:
        return _rejection(obj, index, Reason.USER_KEY_MISMATCH, "user_id differs from the message key")
    if ts > limit_ms:
        detail = f"field 'ts': {ts} is more than {MAX_FUTURE_MS} ms ahead of the clock"
        return _rejection(obj, index, Reason.FUTURE_TS, detail)

    return (make or _make_event)(user_id, ts, etype, event_id, category, dwell_ms, tz_offset_min, age_band,
                                 item_id, session_id)


def _make_event(user_id: str, ts: int, etype: str, event_id: str, category: str, dwell_ms: int,
                tz_offset_min: int | None, age_band: str | None, item_id: str | None,
                session_id: str | None) -> Event:
    ev = _new_builder(_EventBuilder)
    ev.user_id = user_id
    ev.ts_ms = ts
    ev.type = etype
    ev.event_id = event_id
    ev.category = category
    ev.dwell_ms = dwell_ms
    ev.tz_offset_min = tz_offset_min
    ev.age_band = age_band
    ev.item_id = item_id
    ev.session_id = session_id
    ev.__class__ = Event
    return ev  # type: ignore[no-any-return]


def _canonical_category(category: str) -> str:
    """The contract's category for one sent: as is, else case-folded, else ``"other"``."""
    canonical = _CANONICAL_CATEGORY.get(category)
    return canonical if canonical is not None else _CANONICAL_CATEGORY.get(category.lower(), "other")


def _make_tuple(*fields: Any) -> tuple[Any, ...]:
    return fields


def _parse_rfc3339_ms(text: str) -> int | None:
    """Epoch ms of a strict RFC 3339 timestamp with offset, or None if it is not one.

    The shape (separators, fraction, offset) is checked here; ``datetime.fromisoformat`` parses
    the 19-character date-time, which also rejects non-digits and impossible calendar values.
    """
    n = len(text)
    if n < 20 or text[4] != "-" or text[7] != "-" or text[13] != ":" or text[16] != ":":
        return None
    if text[10] not in "Tt ":
        return None
    if not text.isascii():  # str.isdigit would accept other scripts' digits
        return None
    last = text[-1]
    if last == "Z" or last == "z":
        end = n - 1
        offset_min: int | None = 0
    else:
        end = n - 6
        offset_min = _RFC3339_OFFSET_MIN.get(text[end:])
    if offset_min is None or end < 19:
        return None
    if end == 19:
        fraction_ms: int | None = 0
    elif text[19] != "." or end == 20:
        return None
    else:  # digits beyond the third (finer than a millisecond) are checked, then floored away
        fraction_ms = _RFC3339_FRACTION_MS.get(text[20:end] if end <= 23 else text[20:23])
        if end > 23 and not text[23:end].isdigit():
            return None
    if fraction_ms is None:
        return None
    try:
        local = datetime.fromisoformat(text[:19])
    except ValueError:  # month 13, Feb 30, hour 24, leap second 60, ...
        return None
    hours = (local.toordinal() - _EPOCH_ORDINAL) * 24 + local.hour
    minutes = hours * 60 + local.minute - offset_min
    return (minutes * 60 + local.second) * 1_000 + fraction_ms


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if type(value) is bool:
        return "boolean"
    if type(value) is int or type(value) is float:
        return "number"
    if type(value) is str:
        return "string"
    if type(value) is list:
        return "array"
    if type(value) is dict:
        return "object"
    return type(value).__name__


def _shown(value: object) -> str:
    """A short, inert rendering of an untrusted value for a rejection detail."""
    if type(value) is str:
        return repr(value[:40] + "…" if len(value) > 40 else value)
    return f"JSON {_json_type(value)}"


def _readable_id(value: object) -> str | None:
    return value if type(value) is str and 0 < len(value) <= MAX_ID_CHARS else None


def _message_rejection(reason: Reason, detail: str) -> Rejection:
    return Rejection(reason, detail, None, None, None)


def _rejection(obj: dict[str, Any], index: int | None, reason: Reason, detail: str) -> Rejection:
    event_id = _readable_id(obj.get("event_id"))
    return Rejection(reason, detail, index, event_id, _readable_id(obj.get("user_id")))


def _field_rejection(
    obj: dict[str, Any], index: int | None, name: str, value: object, expected: type, allowed: str
) -> Rejection:
    """Classify a failed field check: missing, wrong JSON type, or outside the allowed values."""
    if value is None:
        return _rejection(obj, index, Reason.MISSING_FIELD, f"field '{name}' is required")
    if type(value) is not expected:
        wanted = "string" if expected is str else "int"
        return _rejection(
            obj, index, Reason.WRONG_TYPE, f"field '{name}': expected {wanted}, got JSON {_json_type(value)}"
        )
    if type(value) is str:
        detail = f"field '{name}': {len(value)} characters, allowed {allowed}"
    else:
        detail = f"field '{name}': {value} is outside {allowed}"
    return _rejection(obj, index, Reason.OUT_OF_RANGE, detail)


def _version_error(version: object) -> tuple[Reason, str]:
    if type(version) is not int:
        return Reason.WRONG_TYPE, f"field 'v': expected int, got {_shown(version)}"
    return Reason.UNSUPPORTED_VERSION, f"schema version {version} is not supported (only 1)"
