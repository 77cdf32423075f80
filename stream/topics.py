"""Topic creation with the Kafka AdminClient (idempotent: existing topics are checked, not an error)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from stream.errors import BrokerUnavailableError, ConfigError
from stream.kafka_conf import librdkafka_config, metadata, watch_of
from stream.settings import Settings

__all__ = [
    "ADMIN_TIMEOUT_S",
    "ALERT_RETENTION_MS",
    "LEVELS_CONFIG",
    "TopicSpec",
    "admin_client",
    "delete_namespace_topics",
    "ensure_topics",
    "input_retention_ms",
    "replication",
    "topic_specs",
]

ADMIN_TIMEOUT_S = 15.0
ALERT_RETENTION_MS = 30 * 86_400_000
_HOUR_MS = 3_600_000
# risk.levels keeps the latest record per user (docs/contracts.md §1): compaction only cleans closed
# segments, so segment.ms bounds how long superseded values stay (6 h); min.compaction.lag.ms lets a
# consumer that follows the topic see every change made in the last hour; a tombstone stays a day
# (delete.retention.ms), so a consumer that rebuilds from the beginning at most a day behind sees it.
LEVELS_CONFIG = {
    "cleanup.policy": "compact",
    "min.compaction.lag.ms": str(_HOUR_MS),
    "segment.ms": str(6 * _HOUR_MS),
    "delete.retention.ms": str(24 * _HOUR_MS),
}


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
        TopicSpec(s.levels_topic, s.partitions, dict(LEVELS_CONFIG)),
        TopicSpec(s.dlq_topic, s.partitions, {"retention.ms": str(ALERT_RETENTION_MS)}),
    ]


def admin_client(s: Settings) -> AdminClient:
    """An admin client with the settings' Kafka security (stream/kafka_conf.py); its
    ``security_watch`` attribute is the :class:`~stream.kafka_conf.SecurityWatch` for
    :func:`~stream.kafka_conf.metadata`."""
    conf = librdkafka_config(s, **{"socket.timeout.ms": 10_000})
    admin = AdminClient(conf)
    admin.security_watch = watch_of(conf)  # type: ignore[attr-defined]
    return admin


def _metadata(admin: AdminClient, s: Settings) -> Any:
    """Cluster metadata; SecurityError at once on an authentication/TLS failure,
    BrokerUnavailableError after ADMIN_TIMEOUT_S."""
    return metadata(admin, getattr(admin, "security_watch", None), s, timeout_s=ADMIN_TIMEOUT_S)


def _list_topics(admin: AdminClient, s: Settings) -> dict[str, int]:
    return {name: len(t.partitions) for name, t in _metadata(admin, s).topics.items()}


def replication(s: Settings, brokers: int) -> tuple[int, int]:
    """``(replication factor, min.insync.replicas)`` for new topics on a cluster of ``brokers``.

    Unset, the factor is 3 on a cluster of 3 or more brokers and 1 on fewer (a single broker cannot
    hold replicas); ``min.insync.replicas`` is 2 whenever the factor is 3 or more, so an ``acks=all``
    write survives the loss of one broker, and 1 otherwise.
    """
    rf = s.replication_factor if s.replication_factor is not None else (3 if brokers >= 3 else 1)
    if rf > brokers:
        raise ConfigError(f"replication factor {rf} needs at least {rf} brokers; {s.kafka_bootstrap} has "
                          f"{brokers} (RISKSTREAM_REPLICATION_FACTOR)")
    return rf, 2 if rf >= 3 else 1


def ensure_topics(s: Settings) -> list[str]:
    """Create missing topics; check existing ones. Returns one human line per topic."""
    admin = admin_client(s)
    md = _metadata(admin, s)
    existing = {name: len(t.partitions) for name, t in md.topics.items()}
    specs = topic_specs(s)
    lines: list[str] = []
    missing = [t for t in specs if t.name not in existing]
    if missing:
        rf, min_isr = replication(s, len(md.brokers))
        futures = admin.create_topics(
            [NewTopic(t.name, num_partitions=t.partitions, replication_factor=rf,
                      config={**t.config, "min.insync.replicas": str(min_isr)}) for t in missing],
            operation_timeout=ADMIN_TIMEOUT_S, request_timeout=ADMIN_TIMEOUT_S)
        for name, fut in futures.items():
            try:
                fut.result()
                lines.append(f"created {name} (replication factor {rf}, min.insync.replicas {min_isr})")
            except KafkaException as e:
                err = e.args[0]
                if err.code() != 36:  # TOPIC_ALREADY_EXISTS: a concurrent creator won the race
                    raise ConfigError(f"could not create topic {name}: {err.str()}") from e
                lines.append(f"exists  {name}")
        existing = _list_topics(admin, s)
    for t in specs:
        if t not in missing:
            lines.append(f"exists  {t.name} ({existing[t.name]} partitions)")
    # Co-partitioning is a contract (docs/contracts.md §1): the two input topics must match.
    pc, pv = existing.get(s.clicks_topic), existing.get(s.views_topic)
    if pc != pv:
        raise ConfigError(
            f"{s.clicks_topic} has {pc} partitions but {s.views_topic} has {pv}; the input topics "
            "must be co-partitioned (same partition count)")
    lines += _raise_input_retention(admin, s, [t.name for t in specs[:2] if t not in missing])
    _check_retention(admin, s)
    _check_compacted(admin, s.levels_topic)
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


def _raise_input_retention(admin: AdminClient, s: Settings, names: list[str]) -> list[str]:
    """Existing input topics that keep less than ``input_retention_ms`` are raised to it (never
    lowered: an operator may keep more on purpose). Replaying history depends on it."""
    lines = []
    for name in names:
        r = ConfigResource(ConfigResource.Type.TOPIC, name)
        try:
            cur = int(admin.describe_configs([r], request_timeout=ADMIN_TIMEOUT_S)[r].result()["retention.ms"].value)
        except KafkaException as e:
            raise BrokerUnavailableError(f"cannot read the configuration of {name}: {e.args[0]}") from e
        want = s.input_retention_ms
        if cur < 0 or cur >= want:
            continue
        alter = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
            ConfigEntry("retention.ms", str(want), incremental_operation=AlterConfigOpType.SET)])
        try:
            admin.incremental_alter_configs([alter], request_timeout=ADMIN_TIMEOUT_S)[alter].result()
        except KafkaException as e:
            raise ConfigError(f"could not raise retention.ms of {name} to {want}: {e.args[0].str()}") from e
        lines.append(f"raised  {name} retention.ms {cur} -> {want}")
    return lines


def _check_retention(admin: AdminClient, s: Settings) -> None:
    input_retention_ms(admin, s)


def _check_compacted(admin: AdminClient, name: str, wait_s: float = 15.0) -> None:
    """risk.levels must be compacted: with time-based deletion a quiet user's current levels vanish."""
    r = ConfigResource(ConfigResource.Type.TOPIC, name)
    deadline = time.monotonic() + wait_s
    while True:  # a topic created a moment ago may not be known to every broker yet
        try:
            policy = admin.describe_configs([r], request_timeout=ADMIN_TIMEOUT_S)[r].result()["cleanup.policy"].value
            break
        except KafkaException as e:
            if e.args[0].code() != 3 or time.monotonic() > deadline:  # UNKNOWN_TOPIC_OR_PART
                raise BrokerUnavailableError(f"cannot read the configuration of {name}: {e.args[0]}") from e
            time.sleep(0.2)
    if "compact" not in policy.split(","):
        raise ConfigError(f"topic {name} has cleanup.policy={policy}; it must be compacted "
                          "(kafka-configs --alter --add-config cleanup.policy=compact)")


def delete_namespace_topics(s: Settings) -> list[str]:
    """Delete every topic of the settings' namespace; returns their names. Refuses the empty namespace."""
    if not s.namespace:
        raise ConfigError("refusing to delete the empty namespace")
    admin = admin_client(s)
    mine = sorted(t for t in _list_topics(admin, s) if t.startswith(s.namespace + "."))
    if mine:
        for fut in admin.delete_topics(mine, operation_timeout=ADMIN_TIMEOUT_S).values():
            fut.result()
    return mine
