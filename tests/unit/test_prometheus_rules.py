"""deploy/prometheus/rules/: ``promtool check rules`` and ``promtool test rules`` (Debian's
``prometheus`` package) pass, a broken copy fails them, and every series the rules select is one
the worker exports.

Missing promtool: skipped on a developer machine, a failure in CI (``CI=true``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.promql_names import PROMETHEUS_OWN, exported_names, metric_names
from tests.tools import tool_missing

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
RULES = RULES_DIR / "riskstream.rules.yml"
RULE_TESTS = RULES_DIR / "tests" / "riskstream.test.yml"
ALERTS = {"RiskstreamWorkerDown", "RiskstreamAbsent", "RiskstreamLagGrowing", "RiskstreamDlqRateHigh",
          "RiskstreamLatencyP99High", "RiskstreamRestarts"}


def promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        tool_missing("promtool not installed (apt-get install prometheus)")
    return tool


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, timeout=120,
                          cwd=cwd, check=False)


def _rules() -> list[dict]:  # type: ignore[type-arg]
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_promtool_check_rules() -> None:
    proc = _run("check", "rules", RULES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in proc.stdout


def test_promtool_test_rules() -> None:
    proc = _run("test", "rules", RULE_TESTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def _copy(tmp_path: Path, rules_text: str) -> Path:
    (tmp_path / "tests").mkdir()
    (tmp_path / "riskstream.rules.yml").write_text(rules_text)
    shutil.copy(RULE_TESTS, tmp_path / "tests" / "riskstream.test.yml")
    return tmp_path


def test_a_broken_rule_file_fails_the_check(tmp_path: Path) -> None:
    text = RULES.read_text()
    broken = text.replace("sum by (job) (rate(riskstream_messages_total[5m]))",
                          "sum by (job) (rate(riskstream_messages_total[5m])")  # unbalanced
    assert broken != text
    proc = _run("check", "rules", _copy(tmp_path, broken) / "riskstream.rules.yml")
    assert proc.returncode != 0
    assert "riskstream:messages:rate5m" in proc.stderr and "unclosed left parenthesis" in proc.stderr


@pytest.mark.parametrize(("old", "new"), [
    # the lag alert on the watermark's event-time lag: the replay case must catch it
    ("riskstream:consumer_lag:sum > 1000 and deriv(riskstream:consumer_lag:sum[10m]) > 0",
     "riskstream:consumer_lag:sum > 1000 or max by (job) (deriv(riskstream_watermark_lag_seconds[10m])) > 0"),
    ("riskstream:dlq_share:ratio_rate5m > 0.01", "riskstream:dlq_share:ratio_rate5m > 0.05"),  # too lax
    ("riskstream:decidable_to_ack_seconds:p99_5m > 0.2", "riskstream:decidable_to_ack_seconds:p99_5m > 0.02"),
    ("changes(process_start_time_seconds{job=\"riskstream\"}[30m]) > 2",
     "changes(process_start_time_seconds{job=\"riskstream\"}[30m]) > 1"),
    ("for: 3m", "for: 10s"),  # a worker down for one scrape would page
])
def test_the_unit_tests_catch_a_wrong_rule(tmp_path: Path, old: str, new: str) -> None:
    text = RULES.read_text()
    assert old in text
    proc = _run("test", "rules", _copy(tmp_path, text.replace(old, new)) / "tests" / "riskstream.test.yml")
    assert proc.returncode != 0, proc.stdout
    assert "FAILED" in proc.stdout + proc.stderr


def test_alerts_are_labelled_and_annotated() -> None:
    alerts = {r["alert"]: r for r in _rules() if "alert" in r}
    assert set(alerts) == ALERTS
    readme = (ROOT / "README.md").read_text()
    assert "\n### Metrics, alerts and the dashboard\n" in readme  # the runbook anchor
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, name
        assert rule["annotations"]["runbook_url"].endswith("#metrics-alerts-and-the-dashboard"), name
        assert name in readme, f"{name} is not explained in the README"
    # offsets, not event time: a history replay makes the watermark lag huge by design
    assert "riskstream_consumer_lag" in RULES.read_text()
    assert all("watermark" not in r["expr"] for r in alerts.values())


def test_every_selected_series_is_exported_or_recorded() -> None:
    rules = _rules()
    recorded = {r["record"] for r in rules if "record" in r}
    known = exported_names() | PROMETHEUS_OWN | recorded
    for rule in rules:
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('record') or rule.get('alert')}: {unknown} not exported"


def test_the_name_check_can_fail() -> None:
    known = exported_names()
    assert metric_names("sum(rate(riskstream_events_total[5m]))") <= known
    assert metric_names("rate(riskstream_event_total[5m]) + up") - known - PROMETHEUS_OWN == {"riskstream_event_total"}
    with pytest.raises(ValueError, match="without a metric name"):
        metric_names('sum(rate({__name__=~"riskstream_.*"}[5m]))')


def test_redis_memory_of_a_server_or_of_a_clusters_primaries() -> None:
    from stream.live.worker import used_memory

    assert used_memory({"used_memory": 1_048_576, "maxmemory": 0}) == 1_048_576
    assert used_memory({"127.0.0.1:7001": {"used_memory": 10}, "127.0.0.1:7002": {"used_memory": 32}}) == 42
