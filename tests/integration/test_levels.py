"""risk.levels on the real stack: the compacted topic a worker writes equals the offline final levels.

A log is replayed into Kafka, a real worker drains it, and ``risk.levels`` is read from the
beginning and rebuilt as a compacted-topic reader would (latest value per key, a tombstone deletes
the key). The result must equal the final levels of the offline run of the same log
(``stream.offline.final_levels``); without a crash, every user's sequence of records must also be
the offline sequence exactly. Every record read is validated against levels.v1.schema.json.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource, NewTopic

from stream.core.events import encode_event
from stream.core.features import FEATURE_NAMES, FEATURE_SPEC_HASH
from stream.core.levels import LevelsUpdate, levels_to_json
from stream.core.policy import load_policy_config
from stream.core.scoring import OnnxScorer
from stream.errors import ConfigError
from stream.offline import (
    Summary,
    build_detector,
    decode_log,
    final_levels,
    run_detector,
)
from stream.settings import load_settings
from stream.state import redis_client, user_key
from stream.tools.namespace import delete_namespace
from stream.topics import LEVELS_CONFIG, admin_client, ensure_topics
from tests.contracts import assert_valid_levels
from tests.eventgen import ev
from tests.integration.test_worker_parity import (  # noqa: F401  (artifacts is a fixture)
    artifacts,
    published_alerts,
    replay,
    sigkill_mid_stream,
    start_worker,
    stop,
    wait_drained,
)


def offline_levels(art: dict[str, Any]) -> tuple[set[str], list[LevelsUpdate]]:
    scorer = OnnxScorer(art["model"], expected_spec_hash=FEATURE_SPEC_HASH, expected_feature_names=FEATURE_NAMES)
    det, _ = build_detector(load_policy_config(art["policy"]), scorer)
    alerts: list = []
    updates: list[LevelsUpdate] = []
    summary = Summary()
    run_detector(decode_log(art["log"], summary), det, alerts.append, summary, emit_levels=updates.append)
    return {a.alert_id for a in alerts}, updates


def as_obj(u: LevelsUpdate) -> dict | None:
    raw = levels_to_json(u.record)
    return None if raw is None else orjson.loads(raw)


def read_levels(settings) -> list[tuple[str, dict | None]]:
    """Every record of risk.levels from the beginning to the current end: (key, value or None)."""
    topic = settings.levels_topic
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"{settings.namespace}-levels",
                  "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        got: list[tuple[str, dict | None]] = []
        pos = {p: 0 for p in parts}
        deadline = time.monotonic() + 60
        while any(pos[p] < ends[p] for p in parts):
            assert time.monotonic() < deadline, f"read {pos} of {ends}"
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            key = m.key().decode()
            value = assert_valid_levels(m.value())
            assert value is None or value["user_id"] == key, "the key is the record's user id"
            got.append((key, value))
            pos[m.partition()] = m.offset() + 1
        return got
    finally:
        c.close()


def rebuild(records: list[tuple[str, dict | None]]) -> dict[str, dict]:
    """What a reader of the compacted topic holds: the latest value per key; a tombstone deletes."""
    state: dict[str, dict] = {}
    for key, value in records:
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    return state


def per_user(records: list[tuple[str, dict | None]]) -> dict[str, list[dict | None]]:
    out: dict[str, list[dict | None]] = {}
    for key, value in records:
        out.setdefault(key, []).append(value)
    return out


def test_levels_rebuilt_from_the_topic_equal_the_offline_final_levels(settings, artifacts):
    want_alerts, updates = offline_levels(artifacts)
    want = {u: orjson.loads(levels_to_json(r) or b"") for u, r in final_levels(updates).items()}
    assert len(want) >= 5, "the scenario should leave users with current levels"
    assert {u.user_id for u in updates} - set(want), "and at least one user whose latest write is a tombstone"
    assert any(len(v["levels"]) > 1 for v in want.values()), "and a user with more than one current kind"
    replay(settings, artifacts)
    proc = start_worker(settings, artifacts)
    try:
        published_alerts(settings, want_alerts, proc)
        wait_drained(settings)
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out.decode()[-3000:]
    records = read_levels(settings)
    assert rebuild(records) == want
    # no crash: every user's records are exactly the offline ones, in order (one partition per user)
    offline_seq: dict[str, list[dict | None]] = {}
    for u in updates:
        offline_seq.setdefault(u.user_id, []).append(as_obj(u))
    assert per_user(records) == offline_seq


def test_sigkill_mid_stream_and_restart_leaves_the_offline_final_levels(settings, artifacts):
    """Killed while draining a backlog, restarted: records may repeat (at least once, the same values),
    none is lost, and the rebuilt levels are the offline final ones."""
    want_alerts, updates = offline_levels(artifacts)
    want = {u: orjson.loads(levels_to_json(r) or b"") for u, r in final_levels(updates).items()}
    offline_values: dict[str, list[dict | None]] = {}
    for u in updates:
        offline_values.setdefault(u.user_id, []).append(as_obj(u))
    replay(settings, artifacts)
    fast = {"RISKSTREAM_COMMIT_INTERVAL_S": "0.02", "RISKSTREAM_CHECKPOINT_MS": "20"}  # a kill mid-stream
    proc = start_worker(settings, artifacts, "--batch-size", "10", env=fast)
    try:
        sigkill_mid_stream(settings, proc)
        proc = start_worker(settings, artifacts, "--batch-size", "10")
        published_alerts(settings, want_alerts, proc)
        wait_drained(settings)
    finally:
        stop(proc)
    records = read_levels(settings)
    assert rebuild(records) == want
    live = per_user(records)
    assert set(live) == set(offline_values)
    for user, values in live.items():
        # a repeat is a value the offline run wrote too, and every offline value was written
        assert all(v in offline_values[user] for v in values), f"{user}: a record offline never wrote"
        assert all(v in values for v in offline_values[user]), f"{user}: an offline record is missing"


def test_a_user_whose_state_expired_gets_a_tombstone_at_the_next_event(settings, artifacts):
    """Redis TTL expiry is silent; the next evaluation of the user finds no stored levels and
    writes what is current then (here: nothing, a tombstone), replacing the stale value."""
    want_alerts, updates = offline_levels(artifacts)
    user, rec = sorted(final_levels(updates).items())[0]
    assert rec.levels, "a user with current levels"
    replay(settings, artifacts)
    proc = start_worker(settings, artifacts)
    try:
        published_alerts(settings, want_alerts, proc)
        wait_drained(settings)
    finally:
        stop(proc)
    assert rebuild(read_levels(settings))[user]["levels"], "the topic holds the user's levels"
    client = redis_client(settings)
    key = user_key(settings.key_prefix, user)
    assert client.delete(key) == 1  # what TTL expiry does after 30 idle days (the worker is stopped:
    client.close()                  # a running one may still hold the user in its cache)
    # one quiet click at noon (UTC, tz 0) a day later: no rule fires, one tick is no ml persistence
    later = (rec.event_time_ms // 86_400_000 + 1) * 86_400_000 + 12 * 3_600_000
    p = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    p.produce(settings.clicks_topic, key=user.encode(), value=encode_event(ev(user, later, kind="click")),
              timestamp=later)
    assert p.flush(10) == 0
    proc = start_worker(settings, artifacts)
    try:
        deadline = time.monotonic() + 120
        while True:
            records = [v for k, v in read_levels(settings) if k == user]
            if records[-1] is None:
                break
            assert time.monotonic() < deadline, f"no tombstone for {user}; last: {records[-1]}"
            assert proc.poll() is None, stop(proc).decode()[-3000:]
            time.sleep(0.5)
        wait_drained(settings)
    finally:
        stop(proc)
    assert user not in rebuild(read_levels(settings))


def test_topics_create_makes_risk_levels_compacted_and_refuses_a_deleting_one(stack) -> None:
    s = load_settings(namespace=f"it{uuid.uuid4().hex[:10]}", partitions=2)
    try:
        lines = ensure_topics(s)
        assert any(s.levels_topic in line for line in lines)
        admin = admin_client(s)
        r = ConfigResource(ConfigResource.Type.TOPIC, s.levels_topic)
        cfg = admin.describe_configs([r])[r].result()
        assert {k: cfg[k].value for k in LEVELS_CONFIG} == LEVELS_CONFIG
        assert len(admin.list_topics(s.levels_topic, timeout=10).topics[s.levels_topic].partitions) == 2
    finally:
        delete_namespace(s)
    s = load_settings(namespace=f"it{uuid.uuid4().hex[:10]}", partitions=2)
    try:
        admin = admin_client(s)
        admin.create_topics([NewTopic(s.levels_topic, 2, 1, config={"cleanup.policy": "delete"})])[
            s.levels_topic].result()
        with pytest.raises(ConfigError, match="cleanup.policy=delete; it must be compacted"):
            ensure_topics(s)
    finally:
        delete_namespace(s)
