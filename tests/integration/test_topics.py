"""`topics create` against one broker and against the 3-broker cluster: replication that matches."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import ConfigResource

from stream.errors import ConfigError
from stream.settings import load_settings
from stream.tools.namespace import delete_namespace
from stream.topics import admin_client, ensure_topics, replication

CLUSTER_BOOTSTRAP = "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"


def _replicas_and_min_isr(s, topic: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    admin = admin_client(s)
    deadline = time.monotonic() + 15
    while True:  # the broker asked may not have the new topic's partitions yet (KRaft metadata lag)
        md = admin.list_topics(topic, timeout=10).topics[topic]
        if 0 in md.partitions or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    r = ConfigResource(ConfigResource.Type.TOPIC, topic)
    while True:  # the broker asked may not know a topic created a moment ago (KRaft metadata lag)
        try:
            cfg = admin.describe_configs([r])[r].result()
            break
        except KafkaException as e:
            if e.args[0].code() != 3 or time.monotonic() > deadline:  # UNKNOWN_TOPIC_OR_PART
                raise
            time.sleep(0.2)
    return len(md.partitions[0].replicas), cfg["min.insync.replicas"].value


@pytest.mark.parametrize(("bootstrap", "want"), [("127.0.0.1:9092", (1, "1")), (CLUSTER_BOOTSTRAP, (3, "2"))])
def test_new_topics_get_the_replication_their_cluster_can_hold(stack: None, cluster_stack: None, bootstrap: str,
                                                               want: tuple[int, str]) -> None:
    s = load_settings(kafka_bootstrap=bootstrap, namespace=f"it{uuid.uuid4().hex[:10]}", partitions=2)
    try:
        lines = ensure_topics(s)
        assert any(f"replication factor {want[0]}, min.insync.replicas {want[1]}" in line for line in lines)
        for topic in (s.clicks_topic, s.views_topic, s.alerts_topic, s.dlq_topic, s.levels_topic):
            assert _replicas_and_min_isr(s, topic) == want
    finally:
        delete_namespace(s)


def test_a_factor_the_cluster_cannot_hold_is_one_clear_error(stack: None) -> None:
    s = load_settings(namespace=f"it{uuid.uuid4().hex[:10]}", replication_factor=3)
    with pytest.raises(ConfigError, match="replication factor 3 needs at least 3 brokers"):
        ensure_topics(s)


def test_replication_defaults() -> None:
    s = load_settings()
    assert [replication(s, n) for n in (1, 2, 3, 5)] == [(1, 1), (1, 1), (3, 2), (3, 2)]
    assert replication(load_settings(replication_factor=2), 3) == (2, 1)
