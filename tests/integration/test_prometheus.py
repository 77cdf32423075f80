"""A real Prometheus server (Debian's ``prometheus``) scrapes a live worker every second and loads
deploy/prometheus/rules/: the events the test sends come back through Prometheus' HTTP API as
``riskstream_events_total``, the rejected ones as ``riskstream_dlq_total{reason}``, Redis' memory
is sampled, the rule groups
load and evaluate without error, the DLQ-share alert goes pending on real series, and every series
the dashboard and the rules select is on the live worker's /metrics page.

Missing prometheus: skipped on a developer machine, a failure in CI (``CI=true``).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from stream.core.events import encode_event
from tests.integration.test_worker_failures import _worker
from tests.promql_names import PROMETHEUS_OWN, metric_names, series_names
from tests.scenarios import random_log
from tests.tools import tool_missing

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "riskstream.rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "riskstream.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


class _Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = _get_json(f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert body["status"] == "success", body
        return body["data"]["result"]  # type: ignore[no-any-return]

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait(self, what: str, pred: Any, timeout: float = 120, diag: Any = None) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = pred()
                if last:
                    return last
            except OSError as e:  # not serving yet
                last = e
            time.sleep(0.5)
        raise AssertionError(f"{what}: last {last!r}" + (f" {diag()}" if diag else ""))


def _start_prometheus(tmp_path: Path, worker_port: int) -> tuple[subprocess.Popen[bytes], _Prometheus]:
    tool = shutil.which("prometheus")
    if tool is None:
        tool_missing("prometheus not installed (apt-get install prometheus)")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "riskstream", "static_configs": [
            {"targets": [f"127.0.0.1:{worker_port}"]}]}],
    }))
    port = _free_port()
    proc = subprocess.Popen(
        [tool, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    prom = _Prometheus(port)
    try:
        prom.wait("prometheus never became ready",
                  lambda: proc.poll() is None and urllib.request.urlopen(f"{prom.base}/-/ready", timeout=5).status == 200,
                  timeout=60)
    except AssertionError:  # not ready in time: show its log
        proc.kill()
        raise AssertionError(proc.communicate(timeout=10)[0].decode()[-3000:]) from None
    return proc, prom


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return False


def _publish(settings: Any, events: list[Any], malformed: int) -> None:
    p = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for e in events:
        topic = settings.clicks_topic if e.type == "click" else settings.views_topic
        p.produce(topic, encode_event(e), key=e.user_id.encode())
    for i in range(malformed):
        p.produce(settings.clicks_topic, b'{"v": 1, "type": "click", ', key=f"bad-{i}".encode())
    assert p.flush(10) == 0


def test_prometheus_scrapes_the_worker_and_loads_the_rules(settings, tmp_path: Path) -> None:
    worker_port = _free_port()
    worker = _worker("--namespace", settings.namespace, env={"RISKSTREAM_HTTP_ADDR": f"127.0.0.1:{worker_port}"})
    prom_proc = None
    try:
        prom_proc, prom = _start_prometheus(tmp_path, worker_port)

        def up() -> bool:
            assert worker.poll() is None, worker.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
            return prom.scalar('up{job="riskstream"}') == 1 and prom.scalar("riskstream_pipeline_up") == 1

        prom.wait("the worker never showed up in Prometheus", up)
        # joined, with its partitions assigned (as the HTTP endpoint test waits for it)
        prom.wait("the worker never got ready", lambda: _ready(worker_port), timeout=90)
        events = random_log(7, users=4, hours=0.2)  # 31 events
        first, second = events[:10], events[10:]
        # Phase 1 creates the labelled series (a counter's first value is no increase to rate()).
        _publish(settings, first, malformed=1)
        # every event sent is applied (a late one too: "late" is a subset of "applied") or a duplicate
        total = 'sum(riskstream_events_total{job="riskstream", outcome!="late"})'
        dlq = 'sum(riskstream_dlq_total{job="riskstream", reason="malformed_json"})'

        def counts() -> tuple[Any, ...]:  # what a failed wait shows
            return (prom.scalar(total), prom.scalar(dlq), prom.scalar("riskstream_messages_total"),
                    [(r["metric"].get("topic"), r["metric"]["partition"], r["value"][1]) for r in prom.query(
                        "riskstream_consumer_lag or riskstream_watermark_lag_seconds")],
                    prom.scalar("riskstream_partition_pauses_total"),
                    prom.scalar("riskstream_buffer_forced_releases_total"))

        prom.wait("phase 1 not in Prometheus", lambda: counts()[:2] == (len(first), 1), diag=counts)
        _publish(settings, second, malformed=4)
        prom.wait("phase 2 not in Prometheus", lambda: counts()[:2] == (len(first) + len(second), 5), diag=counts)
        time.sleep(3)  # three more scrapes: nothing counted twice, nothing else rejected
        assert prom.scalar(total) == len(first) + len(second)
        assert {r["metric"]["reason"]: float(r["value"][1])
                for r in prom.query('riskstream_dlq_total{job="riskstream"}')} == {"malformed_json": 5.0}
        by_outcome = {r["metric"]["outcome"]: float(r["value"][1])
                      for r in prom.query('riskstream_events_total{job="riskstream"}')}
        assert set(by_outcome) == {"applied", "late", "duplicate"}
        assert by_outcome["late"] <= by_outcome["applied"]
        assert prom.scalar("riskstream_messages_total") == len(first) + len(second) + 5
        # Every series the dashboard and the rules select is on this live worker's /metrics page
        # (or is Prometheus' own, or a recording rule).
        with urllib.request.urlopen(f"http://127.0.0.1:{worker_port}/metrics", timeout=5) as r:
            live = series_names(text_string_to_metric_families(r.read().decode()))
        rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
        known = live | PROMETHEUS_OWN | {r["record"] for r in rules if "record" in r}
        dashboard = json.loads(DASHBOARD.read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])] + [r["expr"] for r in rules]
        assert {e: metric_names(e) - known for e in exprs if metric_names(e) - known} == {}
        # Redis' INFO memory, sampled by the worker every 15 s (the stack's Redis holds at least our state)
        prom.wait("no Redis memory sample", lambda: (prom.scalar("riskstream_redis_used_memory_bytes") or 0) > 1e5,
                  timeout=60)

        # The rule file loads in this server, every rule evaluates without error ...
        def rules_ok() -> dict[str, list[dict[str, Any]]] | None:
            groups = _get_json(f"{prom.base}/api/v1/rules")["data"]["groups"]
            rules = {g["name"]: g["rules"] for g in groups}
            return rules if rules and all(r["health"] == "ok" for g in rules.values() for r in g) else None

        groups = prom.wait("rules not evaluated", rules_ok, timeout=60)
        assert set(groups) == {"riskstream"}
        assert {r["name"] for r in groups["riskstream"] if r["type"] == "alerting"} == {
            "RiskstreamWorkerDown", "RiskstreamAbsent", "RiskstreamLagGrowing", "RiskstreamDlqRateHigh",
            "RiskstreamLatencyP99High", "RiskstreamRestarts"}
        assert all(not r.get("lastError") for g in groups.values() for r in g)
        # ... on the worker's real series: offset lag per topic back to 0, and 4 of the 25 input events
        # of phase 2 in the DLQ, far above 1 %: the DLQ alert goes pending (it needs 10 min to fire).
        topics = {settings.clicks_topic, settings.views_topic}
        prom.wait("recorded lag not back to 0", lambda: {
            r["metric"]["topic"] for r in prom.query("riskstream:consumer_lag:sum") if r["value"][1] == "0"} == topics)

        def dlq_alert() -> list[dict[str, Any]]:
            alerts = _get_json(f"{prom.base}/api/v1/alerts")["data"]["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "RiskstreamDlqRateHigh"]

        pending = prom.wait("the DLQ-share alert never went pending", dlq_alert, timeout=60)
        assert pending[0]["state"] == "pending" and pending[0]["labels"]["severity"] == "warning"
        assert not [a for a in _get_json(f"{prom.base}/api/v1/alerts")["data"]["alerts"]
                    if a["labels"]["alertname"] in ("RiskstreamWorkerDown", "RiskstreamAbsent")]
    finally:
        if prom_proc is not None:
            prom_proc.send_signal(signal.SIGTERM)
            try:
                prom_proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                prom_proc.kill()
                prom_proc.communicate()
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
