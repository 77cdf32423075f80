"""Topic creation with the Kafka AdminClient (idempotent: existing topics are checked, not an error)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # type: ignore[attr-defined]

from stream.errors import BrokerUnavailableError, ConfigError
from stream.settings import Settings

ADMIN_TIMEOUT_S = 15.0
ALERT_RETENTION_MS = 30 * 86_400_000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def topic_specs(s: Settings) -> list[TopicSpec]:
    inputs = {"retention.ms": str(s.input_retention_ms), "cleanup.policy": "delete"}
    return [
        TopicSpec(s.clicks_topic, s.partitions, inputs),
        TopicSpec(s.views_topic, s.partitions, inputs),
        TopicSpec(s.alerts_topic, s.partitions, {"retention.ms": str(ALERT_RETENTION_MS)}),
        TopicSpec(s.dlq_topic, s.partitions, {"retention.ms": str(ALERT_RETENTION_MS)}),
    ]


def admin_client(s: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": s.kafka_bootstrap, "socket.timeout.ms": 10_000})


def _list_topics(admin: AdminClient, bootstrap: str) -> dict[str, int]:
    try:
        md = admin.list_topics(timeout=ADMIN_TIMEOUT_S)
    except KafkaException as e:
        raise BrokerUnavailableError(
            f"Kafka at {bootstrap} did not answer within {ADMIN_TIMEOUT_S:.0f} s "
            f"({e.args[0]}); is it running? (deploy/local/stack up)") from e
    return {name: len(t.partitions) for name, t in md.topics.items()}


def ensure_topics(s: Settings) -> list[str]:
    """Create missing topics; check existing ones. Returns one human line per topic."""
    admin = admin_client(s)
    existing = _list_topics(admin, s.kafka_bootstrap)
    specs = topic_specs(s)
    lines: list[str] = []
    missing = [t for t in specs if t.name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(t.name, num_partitions=t.partitions, replication_factor=s.replication_factor,
                      config=t.config) for t in missing],
            operation_timeout=ADMIN_TIMEOUT_S, request_timeout=ADMIN_TIMEOUT_S)
        for name, fut in futures.items():
            try:
                fut.result()
                lines.append(f"created {name}")
            except KafkaException as e:
                err = e.args[0]
                if err.code() != 36:  # TOPIC_ALREADY_EXISTS: a concurrent creator won the race
                    raise ConfigError(f"could not create topic {name}: {err.str()}") from e
                lines.append(f"exists  {name}")
        existing = _list_topics(admin, s.kafka_bootstrap)
    for t in specs:
        if t not in missing:
            lines.append(f"exists  {t.name} ({existing[t.name]} partitions)")
    # Co-partitioning is a contract (DESIGN §3): the two input topics must match.
    pc, pv = existing.get(s.clicks_topic), existing.get(s.views_topic)
    if pc != pv:
        raise ConfigError(
            f"{s.clicks_topic} has {pc} partitions but {s.views_topic} has {pv}; the input topics "
            "must be co-partitioned (same partition count)")
    _check_retention(admin, s)
    return lines


def input_retention_ms(admin: AdminClient, s: Settings, wait_s: float = 15.0) -> int:
    """The smaller ``retention.ms`` of the two input topics (-1: unlimited)."""
    res = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in (s.clicks_topic, s.views_topic)]
    deadline = time.monotonic() + wait_s
    out: list[int] = []
    for r in res:
        while True:  # a topic created a moment ago may not be known to every broker yet
            try:
                cfg = admin.describe_configs([r], request_timeout=ADMIN_TIMEOUT_S)[r].result()
                break
            except KafkaException as e:
                if e.args[0].code() != 3 or time.monotonic() > deadline:  # UNKNOWN_TOPIC_OR_PART
                    raise BrokerUnavailableError(f"cannot read the configuration of {r.name}: {e.args[0]}") from e
                time.sleep(0.2)
        ret = int(cfg["retention.ms"].value)
        if 0 <= ret < 8 * 86_400_000:
            raise ConfigError(
                f"topic {r.name} keeps data for {ret} ms; inputs need retention >= 8 days "
                f"(kafka-configs --alter --add-config retention.ms={s.input_retention_ms})")
        out.append(ret)
    limited = [r for r in out if r >= 0]
    return min(limited) if limited else -1


def _check_retention(admin: AdminClient, s: Settings) -> None:
    input_retention_ms(admin, s)