"""Faust app factory: no module-level app, no import-time side effects.

Topics are created by ``riskstream topics create`` (the broker refuses auto-creation), so the app
never declares topics; there are no Faust tables (state is in Redis), hence no changelog topics and
no leader topic. Values are raw bytes: decoding is ours (orjson, docs/contracts.md §2).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import faust

from stream.kafka_conf import faust_credentials
from stream.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings, *, app_id: str | None = None, **overrides: Any) -> faust.App:
    """A configured Faust app; callers attach agents to it."""
    conf: dict[str, Any] = dict(
        broker=[f"kafka://{hp.strip()}" for hp in settings.kafka_bootstrap.split(",")],
        broker_credentials=faust_credentials(settings),  # SASL/TLS as every other client (kafka_conf)
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_interval=1.0,
        # A crashed worker's partitions move after 10 s instead of Faust's default 60 s; the
        # blocking work runs in a thread, so the event loop keeps heartbeating meanwhile.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        stream_buffer_maxsize=16_384,
        worker_redirect_stdouts=False,
        # On shutdown do not wait for un-acked messages: riskstream holds back acks on purpose
        # (buffered events, undecided ticks); they are redelivered to the next owner.
        stream_wait_empty=False,
        autodiscover=False,
        # Faust makes a data directory even without tables; keep it out of the working directory
        # (a read-only root filesystem in a container has a writable temp dir).
        datadir=str(Path(tempfile.gettempdir()) / "riskstream-faust-{conf.name}"),
    )
    conf.update(overrides)
    return faust.App(app_id or settings.group_id, **conf)
