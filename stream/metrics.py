"""Prometheus metrics of a worker: one bundle, created against an injectable registry.

Labels are outcomes, kinds, reasons and partitions, never user ids. Latencies are in seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import ClassVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    """``child_pid`` (the pipeline process's pid, or None) adds ``riskstream_pipeline_process_*``:
    the same process metrics as the worker's own ``process_*``, read from /proc for the child.
    ``child_pids`` (several pipeline processes): the same names, over all of them (CPU, memory and
    descriptors summed, the latest start time, the lowest descriptor limit)."""

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 child_pid: Callable[[], int | None] | None = None,
                 child_pids: Sequence[Callable[[], int | None]] = ()) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.messages = Counter("riskstream_messages", "Kafka messages consumed", registry=r)
        self.events = Counter("riskstream_events", "Events by outcome", ["outcome"], registry=r)
        self.dlq = Counter("riskstream_dlq", "Records sent to the DLQ by reason", ["reason"], registry=r)
        self.alerts = Counter("riskstream_alerts", "Alerts published", ["kind", "level"], registry=r)
        self.dlq_failed = Counter("riskstream_dlq_failed", "DLQ records Kafka refused for good (skipped)",
                                  registry=r)
        self.redis_retries = Counter("riskstream_redis_retries", "Redis calls retried", registry=r)
        self.paused = Counter("riskstream_partition_pauses", "Input partitions paused (buffer full)",
                              registry=r)
        self.forced_releases = Counter(
            "riskstream_buffer_forced_releases",
            "Events a full reorder buffer released ahead of the watermark (nothing to pause)", registry=r)
        self.batch_seconds = Histogram("riskstream_batch_seconds", "Pipeline time of one step (micro-batch)",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.decidable_to_ack = Histogram(
            "riskstream_decidable_to_ack_seconds",
            "From the watermark passing an alert's tick to Kafka acknowledging the alert",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.watermark_lag = Gauge("riskstream_watermark_lag_seconds",
                                   "Wall clock minus the partition watermark (event time)", ["partition"],
                                   registry=r)
        self.consumer_lag = Gauge(
            "riskstream_consumer_lag",
            "Offset lag of an input partition: high watermark minus the offset the group committed",
            ["topic", "partition"], registry=r)
        self.pipeline_up = Gauge("riskstream_pipeline_up", "1 while the pipeline child process(es) are alive",
                                 registry=r)
        self.redis_memory = Gauge(
            "riskstream_redis_used_memory_bytes",
            "Memory Redis uses (INFO used_memory; summed over a cluster's primaries), sampled every 15 s",
            registry=r)
        self.model = Info("riskstream_model", "The ONNX model being served", registry=r)
        self.model_reloads = Counter("riskstream_model_reloads", "Model files hot-reloaded", registry=r)
        ProcessCollector(registry=r)  # process_* of this (the worker's) process
        if child_pid is not None:
            child_pids = (child_pid, *child_pids)
        if len(child_pids) == 1:
            only = child_pids[0]
            ProcessCollector(namespace="riskstream_pipeline", pid=lambda: _pid_or_none(only), registry=r)
        elif child_pids:
            r.register(_ChildrenCollector(child_pids))


def _pid_or_none(child_pid: Callable[[], int | None]) -> int | str:
    pid = child_pid()
    return "none" if pid is None else pid  # no /proc entry: ProcessCollector reports nothing


class _ChildrenCollector(Collector):
    """``riskstream_pipeline_process_*`` over several pipeline processes, under the names one has
    (dashboards and soak read them unchanged): a child that cannot be read adds nothing."""

    _COMBINE: ClassVar[dict[str, Callable[[Iterable[float]], float]]] = {"start_time_seconds": max, "max_fds": min}

    def __init__(self, pids: Sequence[Callable[[], int | None]]) -> None:
        self._each = [ProcessCollector(namespace="riskstream_pipeline", pid=partial(_pid_or_none, f), registry=None)
                      for f in pids]

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        values: dict[str, list[float]] = {}
        for one in self._each:
            for fam in one.collect():
                families.setdefault(fam.name, fam)
                values.setdefault(fam.name, []).extend(s.value for s in fam.samples)
        out = []
        for name, fam in families.items():
            suffix = name.removeprefix("riskstream_pipeline_process_")
            combined = self._COMBINE.get(suffix, sum)(values[name])
            merged = Metric(fam.name, fam.documentation, fam.type)
            sample = fam.samples[0]
            merged.add_sample(sample.name, sample.labels, combined)
            out.append(merged)
        return out
