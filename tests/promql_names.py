"""Metric names in PromQL expressions (parsed by ``promql-parser``), and the names a worker exports.

Shared by the checks of deploy/prometheus/rules/ and deploy/grafana/dashboards/: every series an
alert, recording rule or panel selects must be one the worker exports (or one Prometheus makes
itself, or a recording rule of ours), so a renamed metric cannot leave a dead panel or an alert
that never fires.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

import promql_parser

__all__ = ["PROMETHEUS_OWN", "exported_names", "metric_names", "series_names"]

PROMETHEUS_OWN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
"""Series Prometheus adds for every target."""

# Grafana's interval variables are not PromQL; they stand for a duration.
_GRAFANA_DURATIONS = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}")


def metric_names(expr: str) -> set[str]:
    """Every metric name the expression selects; a selector without a literal name is an error."""
    tree = promql_parser.parse(_GRAFANA_DURATIONS.sub("5m", expr))
    names: set[str] = set()
    nameless: list[str] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            else:
                nameless.append(str(node))

    promql_parser.walk(tree, visit)
    if nameless:
        raise ValueError(f"selector without a metric name in {expr!r}: {nameless}")
    return names


def exported_names() -> set[str]:
    """The series names of a worker's registry (stream/metrics.py), with its pipeline child's."""
    from prometheus_client import CollectorRegistry

    from stream.metrics import Metrics

    registry = CollectorRegistry()
    Metrics(registry, child_pid=os.getpid)
    return series_names(registry.collect())


def series_names(families: Iterable[Any]) -> set[str]:
    """The series names of metric families (a registry's, or parsed from a /metrics page): a family
    with no sample yet (a labelled counter before its first label) still names its series."""
    names: set[str] = set()
    for family in families:
        n = family.name
        names |= {
            "counter": {f"{n}_total", f"{n}_created"},
            "histogram": {f"{n}_bucket", f"{n}_count", f"{n}_sum", f"{n}_created"},
            "summary": {n, f"{n}_count", f"{n}_sum", f"{n}_created"},
            "info": {f"{n}_info"},
        }.get(family.type, {n})
    return names
