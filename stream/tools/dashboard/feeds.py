"""The dashboard's inputs: one Kafka consumer in a thread, and the workers' /metrics scraped.

The consumer joins no group and commits nothing: it is *assigned* ``risk.levels`` from the
beginning (a compacted topic: the fold is every user's current levels), the last alerts of each
``risk.alerts`` partition (``backfill`` records, so the per-minute chart starts filled), and the
input topics from their end (only the message keys are read: the active users). Every few seconds it
also reads the worker group's committed offsets against the topics' ends: the consumer lag.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

from stream.settings import Settings
from stream.tools.dashboard.board import ActiveUsers, AlertLog, LevelsBoard

__all__ = ["LEVELS_TOPIC", "StreamFeed"]

LEVELS_TOPIC = "risk.levels"
log = logging.getLogger("riskstream.dashboard")


class StreamFeed:
    """Reads the topics in a daemon thread; ``snapshot()`` is safe from any thread."""

    def __init__(self, settings: Settings, *, backfill: int = 1000, active_window_s: float = 300.0,
                 lag_every_s: float = 5.0) -> None:
        self.settings = settings
        self.backfill = backfill
        self.lag_every_s = lag_every_s
        self.levels_topic = settings.topic(LEVELS_TOPIC)
        self.lock = threading.Lock()
        self.board = LevelsBoard()        # from risk.levels
        self.alert_board = LevelsBoard()  # from risk.alerts: the fallback while risk.levels does not exist
        self.alerts = AlertLog()
        self.active = ActiveUsers(active_window_s)
        self.has_levels = False
        self.consumer_lag: int | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-kafka", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    # -- the thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._consume()
            except KafkaException as e:
                self.error = f"Kafka: {e}"
                log.warning("dashboard consumer: %s (retrying in 5 s)", e)
                self._stop.wait(5)

    def _consume(self) -> None:
        s = self.settings
        c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"dashboard-{uuid.uuid4().hex}",
                      "enable.auto.commit": False, "enable.partition.eof": False})
        try:
            assigned = self._assign(c)
            next_lag = 0.0
            while not self._stop.is_set():
                now = time.time()
                if now >= next_lag:
                    next_lag = now + self.lag_every_s
                    self.consumer_lag = self._lag(c)
                    if not self.has_levels or not assigned:
                        assigned = self._assign(c)
                msgs = c.consume(num_messages=5000, timeout=0.5)
                if msgs:
                    self._fold(msgs, time.time())
                self.error = None
        finally:
            c.close()

    def _assign(self, c: Consumer) -> bool:
        s = self.settings
        md = c.list_topics(timeout=10)
        tps: list[TopicPartition] = []
        levels = self.levels_topic in md.topics and not md.topics[self.levels_topic].error
        if levels and not self.has_levels:
            tps += [TopicPartition(self.levels_topic, p, OFFSET_BEGINNING) for p in md.topics[self.levels_topic].partitions]
        if not getattr(self, "_base_assigned", False):
            for topic in (s.alerts_topic, s.clicks_topic, s.views_topic):
                if topic not in md.topics or md.topics[topic].error:
                    return False  # not created yet: try again at the next round
            for p in md.topics[s.alerts_topic].partitions:
                lo, hi = c.get_watermark_offsets(TopicPartition(s.alerts_topic, p), timeout=10)
                tps.append(TopicPartition(s.alerts_topic, p, max(lo, hi - self.backfill)))
            tps += [TopicPartition(t, p, OFFSET_END) for t in (s.clicks_topic, s.views_topic)
                    for p in md.topics[t].partitions]
            self._base_assigned = True
        if tps:
            c.incremental_assign(tps)
        if levels:
            self.has_levels = True
        return True

    def _fold(self, msgs: list[Any], now: float) -> None:
        s = self.settings
        keys: list[bytes] = []
        with self.lock:
            for m in msgs:
                if m.error():
                    continue
                topic = m.topic()
                if topic == self.levels_topic:
                    try:
                        self.board.apply_record(m.key(), m.value())
                        if m.value() is not None:
                            rec = orjson.loads(m.value())
                            self.alerts.add_score(rec["user_id"], rec.get("event_time"), rec.get("score"))
                    except (orjson.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
                        log.warning("dashboard: skipped an unreadable %s record at offset %s", topic, m.offset())
                elif topic == s.alerts_topic:
                    try:
                        alert = orjson.loads(m.value())
                    except (orjson.JSONDecodeError, TypeError):
                        continue
                    if isinstance(alert, dict):
                        self.alerts.add(alert, now)
                        self.alert_board.apply_alert(alert)
                elif m.key() is not None:
                    keys.append(m.key())
            self.active.saw(keys, now)

    def _lag(self, c: Consumer) -> int | None:
        """Records of the input topics the worker group has not committed yet."""
        s = self.settings
        try:
            md = c.list_topics(timeout=5)
            tps = [TopicPartition(t, p) for t in (s.clicks_topic, s.views_topic) if t in md.topics
                   for p in md.topics[t].partitions]
            if not tps:
                return None
            probe = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": s.group_id,
                              "enable.auto.commit": False})
            try:
                committed = probe.committed(tps, timeout=5)
            finally:
                probe.close()
            lag = 0
            for tp in committed:
                lo, hi = c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=5)
                lag += hi - (tp.offset if tp.offset >= 0 else lo)
            return lag
        except KafkaException:
            return None

    # -- readers ------------------------------------------------------------------------------------
    def snapshot(self, now: float, top_n: int = 20) -> dict[str, Any]:
        with self.lock:
            board = self.board if self.has_levels else self.alert_board
            return {"levels_source": "risk.levels" if self.has_levels else "risk.alerts",
                    "users_with_levels": len(board),
                    "active_users": self.active.count(now),
                    "active_window_s": self.active.window_s,
                    "alerts_per_min": self.alerts.per_minute(now),
                    "alerts_series": self.alerts.series(now),
                    "alerts_seen": self.alerts.total,
                    "distribution": board.distribution(),
                    "top": board.top(top_n, self.alerts.reasons()),
                    "consumer_lag": self.consumer_lag,
                    "kafka_error": self.error}

    def history(self, user_id: str) -> dict[str, Any]:
        with self.lock:
            return self.alerts.history(user_id)
