"""DLQ records (docs/contracts.md §4): one per bad message, capped, produced with back-pressure, and
never able to stop the worker (reliability review D3, D4, D13)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException

from stream.live.pipeline import Pipeline
from tests.eventgen import at
from tests.unit.test_pipeline import FakeProducer, click, pipeline, step


class QueueProducer(FakeProducer):
    """librdkafka's local queue: ``produce`` raises BufferError past ``capacity`` undelivered records;
    ``poll`` delivers them. ``refuse``: values larger than this get a permanent error."""

    def __init__(self, capacity: int = 100_000, refuse: int | None = None, sync: bool = False) -> None:
        super().__init__()
        self.capacity, self.queued, self.refuse, self.sync = capacity, 0, refuse, sync
        self.pipeline: Pipeline | None = None

    def produce(self, topic: str, key: bytes | None = None, value: bytes = b"") -> None:
        if self.refuse is not None and len(value) > self.refuse:
            err = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")
            if self.sync:
                raise KafkaException(err)
            assert self.pipeline is not None
            self.pipeline.on_delivery(err, _Msg(topic, key))
            return
        if self.queued >= self.capacity:
            raise BufferError("Local: Queue full")
        self.queued += 1
        super().produce(topic, key, value)

    def poll(self, _timeout: float = 0) -> int:
        n, self.queued = self.queued, 0
        return n


class _Msg:
    def __init__(self, topic: str, key: bytes | None) -> None:
        self._t, self._k = topic, key

    def topic(self) -> str:
        return self._t

    def key(self) -> bytes | None:
        return self._k


def _with(producer: QueueProducer, **overrides: Any) -> Pipeline:
    p, _ = pipeline(**overrides)
    p.producer = producer  # type: ignore[assignment]
    producer.pipeline = p
    return p


def _dlq(p: Pipeline, producer: FakeProducer) -> list[dict[str, Any]]:
    return [orjson.loads(v) for t, _, v in producer.records if t == p.s.dlq_topic]


def _bad_envelope(n: int, pad: int = 0) -> bytes:
    obj: dict[str, Any] = {"v": 1, "events": [{}] * n}
    if pad:
        obj["pad"] = "x" * pad
    return json.dumps(obj, separators=(",", ":")).encode()


def test_one_record_per_bad_envelope_listing_its_rejections():
    producer = QueueProducer()
    p = _with(producer)
    raw = _bad_envelope(1000, 65536 - 3020 - 12)
    r = step(p, [(p.s.views_topic, 0, 0, b"u", raw)])
    (rec,) = _dlq(p, producer)
    assert r.done == [(p.s.views_topic, 0, 0)] and r.dlq == {"missing_field": 1000}
    assert [x["index"] for x in rec["rejections"]] == list(range(1000))
    assert {x["reason"] for x in rec["rejections"]} == {"missing_field"}
    assert (rec["reason"], rec["index"]) == ("missing_field", 0)  # the first rejection's
    total = sum(len(v) for _, _, v in producer.records)
    assert total < 2 * len(raw)  # was 87.6 MB (1,336×) for this message


def test_101_bad_envelopes_in_one_step_do_not_overflow_the_producer_queue():
    producer = QueueProducer(capacity=50)  # smaller than the records of the step: back-pressure needed
    p = _with(producer)
    msgs = [(p.s.views_topic, 0, i, b"u", _bad_envelope(1000)) for i in range(101)]
    r = step(p, msgs)
    assert len(_dlq(p, producer)) == 101 and len(r.done) == 101


def test_the_original_value_is_capped_with_its_size_and_hash():
    producer = QueueProducer()
    p = _with(producer, dlq_max_original_bytes=1024)
    raw = b'{"v":1,"pad":"' + b"x" * 900_000 + b'"}'
    r = step(p, [(p.s.views_topic, 0, 0, b"u", raw)])
    (rec,) = _dlq(p, producer)
    assert rec["reason"] == "oversized" and r.done == [(p.s.views_topic, 0, 0)]
    assert base64.b64decode(rec["original_b64"]) == raw[:1024] and rec["original_truncated"] is True
    assert rec["original_size"] == len(raw) and rec["original_sha256"] == hashlib.sha256(raw).hexdigest()
    assert len(producer.records[0][2]) < 4096
    small = b'{"broken'
    step(p, [(p.s.views_topic, 0, 1, b"u", small)])
    rec = _dlq(p, producer)[-1]
    assert base64.b64decode(rec["original_b64"]) == small and rec["original_truncated"] is False


def test_a_dlq_record_kafka_refuses_for_good_is_counted_and_skipped():
    for sync in (True, False):  # refused by produce() itself, or in its delivery report
        producer = QueueProducer(refuse=100, sync=sync)
        p = _with(producer)
        r = step(p, [(p.s.clicks_topic, 0, 0, b"u1", b'{"broken')])
        assert r.done == [(p.s.clicks_topic, 0, 0)] and r.dlq_failed == 1 and r.dlq == {"malformed_json": 1}


def test_too_late_records_of_single_events_carry_no_index():
    p, producer = pipeline()
    step(p, [click(p, "late-user", at(29, 12), 0, 0)])
    step(p, [], {(0, "click"): True, (0, "view"): True}, partitions=[])
    step(p, [click(p, "late-user", at(0, 12), 0, 1)])
    rec = _dlq(p, producer)[-1]
    assert (rec["reason"], rec["index"], rec["offset"]) == ("too_late", None, 1)
    assert rec["rejections"][0]["index"] is None


def test_a_message_without_a_key_goes_to_the_dlq_as_missing_key():
    p, producer = pipeline()
    valid = click(p, "u1", at(0, 12), 0, 0)[4]
    r = step(p, [(p.s.clicks_topic, 0, 0, None, valid)], {(0, "click"): True, (0, "view"): True})
    (rec,) = _dlq(p, producer)
    assert (rec["reason"], rec["index"], rec["offset"]) == ("missing_key", None, 0)
    assert r.done == [(p.s.clicks_topic, 0, 0)] and r.applied == 0 and producer.records[0][1] is None


def test_keep_original_false_puts_nothing_of_the_input_in_the_record():
    from tests.contracts import assert_valid_dlq

    producer = QueueProducer()
    p = _with(producer, dlq_keep_original=False)
    secret = "alice.personal@example.org"
    bad_type = orjson.dumps({"v": 1, "event_id": f"id-{secret}", "user_id": secret, "type": f"doom-{secret}",
                             "ts": at(0, 12), "session_id": "s", "item_id": "i"})
    broken = f'{{"user_id":"{secret}", oops'.encode()
    step(p, [(p.s.views_topic, 0, 0, secret.encode(), bad_type), (p.s.views_topic, 0, 1, secret.encode(), broken)])
    recs = _dlq(p, producer)
    assert [r["reason"] for r in recs] == ["out_of_range", "malformed_json"]
    for (_, key, value), raw, rec in zip(producer.records, (bad_type, broken), recs, strict=True):
        assert key is None and secret.encode() not in value and b"doom" not in value
        assert_valid_dlq(value)
        assert rec["original_b64"] == "" and rec["original_truncated"] is True
        assert rec["original_size"] == len(raw) and rec["original_sha256"] == hashlib.sha256(raw).hexdigest()
        assert rec["detail"] == "" and all(r["detail"] == "" and r["event_id"] is None for r in rec["rejections"])
