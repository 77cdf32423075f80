"""The pipeline's composition root: Redis client, store, scorer, policy and producer from settings."""

from __future__ import annotations

import logging
from pathlib import Path

from confluent_kafka import Producer

from stream.core.detector import Detector
from stream.core.policy import AlertPolicy, load_policy_config
from stream.core.scoring import Scorer, load_scorer
from stream.core.warmup import warm_up
from stream.errors import (
    StoreUnavailableError,
)
from stream.kafka_conf import librdkafka_config
from stream.live.pipeline import Pipeline
from stream.retry import START_ATTEMPTS, retry
from stream.settings import Settings
from stream.state import RedisWindowStore, redis_client
from stream.state.poison import RedisPoisonLedger

__all__ = ["build_pipeline"]

log = logging.getLogger("riskstream.pipeline")
COMPILED_S = 3.0  # a kernel start-up slower than this compiled (loading the cache takes ≈ 0.5–1.2 s)


def build_pipeline(settings: Settings, model_path: Path | None, scorer: Scorer | None = None, *,
                   defer_writes: bool = False) -> Pipeline:
    """Everything a pipeline needs, connected; ``StoreUnavailableError`` after bounded retries."""
    took = warm_up()  # not while the first batch waits
    if took > COMPILED_S:
        log.warning("kernels compiled in %.1f s: numba's cache was cold or unwritable, so every start "
                    "pays this (warm it once: `make install`, or as the Dockerfile does)", took)
    else:
        log.info("kernels ready in %.2f s", took)
    if scorer is None and model_path is not None:
        scorer = load_scorer(model_path)
    client = redis_client(settings)
    store = retry("redis", lambda: RedisWindowStore(client, key_prefix=settings.key_prefix,
                                                    ttl_s=settings.state_ttl_s,
                                                    max_cached_users=settings.state_cache_users,
                                                    keep_outbox=False, defer_writes=defer_writes,
                                                    key_secret=settings.key_secret,
                                                    wait_replicas=settings.redis_replicas_to_wait,
                                                    wait_timeout_ms=settings.redis_wait_timeout_ms),
                  attempts=START_ATTEMPTS, base_s=0.25, retriable=(StoreUnavailableError,))
    policy = AlertPolicy(load_policy_config(settings.policy_config),
                         model_thresholds=None if scorer is None else scorer.info.thresholds)
    detector = Detector(store, policy, scorer)
    pipeline: Pipeline
    producer = Producer(librdkafka_config(settings, **{
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": int(settings.produce_timeout_s * 1000),
        "on_delivery": lambda err, msg: pipeline.on_delivery(err, msg),
    }))
    pipeline = Pipeline(settings, detector, producer, store=store,
                        ledger=RedisPoisonLedger(client, settings.key_prefix))
    return pipeline
