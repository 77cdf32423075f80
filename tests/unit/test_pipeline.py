"""The worker's pipeline without Kafka or Redis: which messages a step reports done, DLQ records,
flow-control state; and the link's framing."""

from __future__ import annotations

import socket
from typing import Any

import orjson
import pytest

from stream.core.detector import Detector
from stream.core.events import encode_event
from stream.core.ordering import tick_ceil
from stream.core.policy import AlertPolicy, load_policy_config
from stream.core.windows import MemoryWindowStore
from stream.live.link import recv_frame, send_frame, send_reply
from stream.live.pipeline import Pipeline
from stream.live.protocol import POSITION_STRIDE, Step
from stream.settings import load_settings
from tests.contracts import assert_valid_record
from tests.eventgen import at, ev


class FakeProducer:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes]] = []

    def produce(self, topic: str, key: bytes | None = None, value: bytes = b"") -> None:
        assert_valid_record(topic, value)  # docs/contracts.md
        self.records.append((topic, key, value))

    def flush(self, _timeout: float) -> int:
        return 0

    def poll(self, _timeout: float = 0) -> int:
        return 0


def pipeline(**overrides: Any) -> tuple[Pipeline, FakeProducer]:
    s = load_settings(namespace="t", lateness_ms=0, **overrides)
    producer = FakeProducer()
    detector = Detector(MemoryWindowStore(keep_outbox=False), AlertPolicy(load_policy_config(None)))
    return Pipeline(s, detector, producer), producer  # type: ignore[arg-type]


def step(p: Pipeline, messages: list, idle: dict | None = None, partitions: list[int] | None = None) -> Any:
    parts = sorted({m[1] for m in messages}) if partitions is None else partitions
    return p.step(Step(messages, parts, idle or {}, {}, 0.0, at(30)))


def click(p: Pipeline, user: str, ts: int, partition: int, offset: int) -> tuple:
    return (p.s.clicks_topic, partition, offset, user.encode(), encode_event(ev(user, ts, "click")))


def test_an_event_is_done_once_the_watermark_passes_its_tick_and_bad_messages_at_once():
    p, producer = pipeline()
    r = step(p, [click(p, "u1", at(0, 12), 0, 0), (p.s.clicks_topic, 0, 1, b"u1", b'{"broken')])
    assert r.done == [(p.s.clicks_topic, 0, 1)]  # the bad message; the event's tick is not decided
    (topic, key, value), = producer.records
    rec = orjson.loads(value)
    assert topic == p.s.dlq_topic and key == b"u1" and rec["reason"] == "malformed_json"
    assert (rec["topic"], rec["partition"], rec["offset"]) == (p.s.clicks_topic, 0, 1)
    # both inputs of partition 0 idle: the watermark moves to the end of the newest tick
    r = step(p, [], {(0, "click"): True, (0, "view"): True}, partitions=[])
    assert r.done == [(p.s.clicks_topic, 0, 0)] and r.watermarks == {0: tick_ceil(at(0, 12))}
    assert r.applied == 1  # buffered until now: the views input, with nothing yet, held it back


def test_a_views_input_with_nothing_yet_holds_the_watermark_back():
    p, _ = pipeline()
    r = step(p, [click(p, "u1", at(0, 12), 0, 0), click(p, "u1", at(0, 13), 0, 1)])
    assert r.done == [] and r.buffers[0] == (False, ["view"], 2)  # views are behind; nothing released
    r = step(p, [], {(0, "view"): True}, partitions=[])  # only views idle: clicks alone lead
    # the 12:00 click is released (decided: its tick ended before 13:00); 13:00 waits for more
    assert r.applied == 1 and r.done == [(p.s.clicks_topic, 0, 0)] and r.buffers[0] == (False, ["click"], 1)


def test_an_envelope_is_done_when_all_its_events_are():
    p, producer = pipeline()
    env = b'{"v":1,"events":[' + encode_event(ev("u2", at(0, 9), "view")) + b',{"type":"view"}]}'
    r = step(p, [(p.s.views_topic, 1, 7, b"u2", env)])
    assert r.done == [] and orjson.loads(producer.records[0][2])["index"] == 1
    r = step(p, [], {(1, "click"): True, (1, "view"): True}, partitions=[])
    assert r.done == [(p.s.views_topic, 1, 7)]


def test_a_full_buffer_reports_which_input_runs_ahead():
    p, _ = pipeline(buffer_max_events=100)
    r = step(p, [click(p, f"u{i}", at(0, 12, i), 2, i) for i in range(100)])
    assert r.buffers[2] == (True, ["view"], 100)


def test_dropped_partitions_are_forgotten():
    p, _ = pipeline()
    step(p, [click(p, "u1", at(0, 12), 0, 0)])
    p.drop([0])
    r = step(p, [], {(0, "click"): True, (0, "view"): True}, partitions=[])
    assert r.done == [] and 0 not in p.parts  # its message is not acked: the new owner gets it again


def test_fence_positions_leave_room_for_a_batch_envelope():
    from stream.core.events import MAX_BATCH_EVENTS
    assert MAX_BATCH_EVENTS < POSITION_STRIDE


def test_link_frames_round_trip_values_and_errors():
    a, b = socket.socketpair()
    with a, b:
        send_frame(a, ("step", {"x": b"\x00" * 30_000}))
        assert recv_frame(b) == ("step", {"x": b"\x00" * 30_000})
        send_reply(b, False, ValueError("no"))
        ok, err = recv_frame(a)
        assert not ok and isinstance(err, ValueError) and str(err) == "no"

        class Unpicklable(Exception):
            def __reduce__(self):  # type: ignore[no-untyped-def]
                raise TypeError("not me")
        send_reply(b, False, Unpicklable("deep"))
        ok, err = recv_frame(a)
        assert not ok and isinstance(err, RuntimeError) and "deep" in str(err)
        b.close()
        with pytest.raises(EOFError):
            recv_frame(a)
