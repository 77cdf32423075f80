"""deploy/grafana/dashboards/riskstream.json is what deploy/grafana/build_dashboard.py (Grafana's
``grafana-foundation-sdk`` builders) generates, and every panel's PromQL selects a metric the worker
exports (stream/metrics.py) or a recording rule of deploy/prometheus/rules/."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

import yaml

from tests.promql_names import PROMETHEUS_OWN, exported_names, metric_names

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "riskstream.json"
RULES = ROOT / "deploy" / "prometheus" / "rules" / "riskstream.rules.yml"


def _builder() -> Any:
    spec = importlib.util.spec_from_file_location("build_dashboard", ROOT / "deploy" / "grafana" / "build_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _known() -> set[str]:
    recorded = {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r}
    return exported_names() | PROMETHEUS_OWN | recorded


def unknown_metrics(model: dict[str, Any], known: set[str]) -> dict[str, set[str]]:
    """Panel title -> the metric names its queries select that nobody exports."""
    out: dict[str, set[str]] = {}
    for panel in model["panels"]:
        for target in panel.get("targets", []):
            missing = metric_names(target["expr"]) - known
            if missing:
                out.setdefault(panel["title"], set()).update(missing)
    return out


def _queried(model: dict[str, Any]) -> set[str]:
    return {n for p in model["panels"] for t in p.get("targets", []) for n in metric_names(t["expr"])}


def test_the_committed_json_is_the_generators_output() -> None:
    assert DASHBOARD.read_text() == _builder().render(), \
        "stale dashboard: run python deploy/grafana/build_dashboard.py --write"


def test_every_panel_queries_an_exported_metric() -> None:
    model = json.loads(DASHBOARD.read_text())
    assert unknown_metrics(model, _known()) == {}


def test_a_panel_with_a_bogus_metric_fails_the_check() -> None:
    model = json.loads(DASHBOARD.read_text())
    broken = copy.deepcopy(model)
    panel = next(p for p in broken["panels"] if p["title"] == "DLQ by reason")
    panel["targets"][0]["expr"] = 'sum by (reason) (rate(riskstream_dlq_records_total{job=~"$job"}[$__rate_interval]))'
    assert unknown_metrics(broken, _known()) == {"DLQ by reason": {"riskstream_dlq_records_total"}}


def test_the_panels_the_issue_asks_for() -> None:
    model = json.loads(DASHBOARD.read_text())
    panels = [p for p in model["panels"] if p["type"] != "row"]
    assert {"riskstream_messages_total", "riskstream_events_total", "riskstream_consumer_lag",
            "riskstream_alerts_total", "riskstream_dlq_total", "riskstream_batch_seconds_bucket",
            "riskstream_decidable_to_ack_seconds_bucket", "riskstream_redis_used_memory_bytes",
            "process_resident_memory_bytes", "riskstream_pipeline_process_resident_memory_bytes",
            "process_cpu_seconds_total"} <= _queried(model)
    quantiles = [t["expr"] for p in panels for t in p["targets"] if t["expr"].startswith("histogram_quantile(")]
    assert {q.split(",")[0] for q in quantiles} == {"histogram_quantile(0.5", "histogram_quantile(0.99"}
    # one data source variable, used by every panel and query
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
        assert all('job=~"$job"' in t["expr"] for t in p["targets"]), p["title"]
    assert len({p["id"] for p in model["panels"]}) == len(model["panels"])
    assert model["uid"] == "riskstream"
