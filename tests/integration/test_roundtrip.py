"""Produce/consume round trips through the real broker, and a Lua round trip through real Redis."""

from __future__ import annotations

import asyncio
import time

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Consumer, Producer

from stream.core.events import decode_message, encode_event
from tests.eventgen import at, ev


def test_confluent_kafka_round_trip_keeps_key_timestamp_and_bytes(settings):
    topic = settings.clicks_topic
    p = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True, "acks": "all"})
    sent = [ev(f"user-{i % 7}", at(0, 9, i), "click") for i in range(50)]
    for e in sent:
        p.produce(topic, key=e.user_id.encode(), value=encode_event(e), timestamp=e.ts_ms)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"{settings.group_id}-rt",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got = []
    deadline = time.monotonic() + 60
    while len(got) < len(sent) and time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is None or m.error():
            continue
        events, bad = decode_message(m.value(), topic_type="click", key=m.key(), now_ms=int(time.time() * 1000))
        assert bad == []
        assert m.timestamp()[1] == events[0].ts_ms
        got.extend(events)
    c.close()
    assert sorted(got, key=lambda e: e.event_id) == sorted(sent, key=lambda e: e.event_id)


def test_aiokafka_round_trip(settings):
    topic = settings.views_topic

    async def run() -> list[bytes]:
        prod = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
        await prod.start()
        try:
            for i in range(20):
                await prod.send_and_wait(topic, f"m{i}".encode(), key=b"k", timestamp_ms=at(0, 1, i))
        finally:
            await prod.stop()
        cons = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap,
                                group_id=f"{settings.group_id}-aio", auto_offset_reset="earliest")
        await cons.start()
        out: list[bytes] = []
        try:
            async with asyncio.timeout(60):
                while len(out) < 20:
                    batch = await cons.getmany(timeout_ms=1000)
                    for msgs in batch.values():
                        out.extend(m.value for m in msgs)
        finally:
            await cons.stop()
        return out

    got = asyncio.run(run())
    assert got == [f"m{i}".encode() for i in range(20)]  # one key: one partition, order kept


def test_redis_lua_round_trip_is_atomic_and_cluster_safe(settings):
    r = redis.Redis.from_url(settings.redis_url.get_secret_value())
    script = r.register_script(
        "local v = redis.call('HINCRBY', KEYS[1], 'n', ARGV[1]) "
        "redis.call('EXPIRE', KEYS[1], ARGV[2]) "
        "return {v, redis.call('TTL', KEYS[1])}")
    key = f"{settings.key_prefix}{{user-1}}:probe"
    assert script(keys=[key], args=[5, 600]) == [5, 600]
    assert script(keys=[key], args=[3, 600])[0] == 8
    assert r.hget(key, "n") == b"8"
    r.close()


def test_topics_create_raises_a_shorter_input_retention_and_never_lowers_one(stack):
    import uuid

    from stream.settings import load_settings
    from stream.topics import admin_client, ensure_topics, input_retention_ms

    ns = f"ret{uuid.uuid4().hex[:8]}"
    short = load_settings(namespace=ns, partitions=1)
    ensure_topics(short)
    admin = admin_client(short)
    assert input_retention_ms(admin, short) == short.input_retention_ms
    longer = load_settings(namespace=ns, partitions=1, input_retention_ms=30 * 86_400_000)
    lines = ensure_topics(longer)
    assert sum(line.startswith("raised") for line in lines) == 2, lines
    assert input_retention_ms(admin, longer) == 30 * 86_400_000
    lines = ensure_topics(short)  # asking for less keeps what the topics have
    assert not any(line.startswith("raised") for line in lines)
    assert input_retention_ms(admin, short) == 30 * 86_400_000
