"""--log-format json: every line a worker and its pipeline child write is one JSON object, and
librdkafka's errors while Kafka is unreachable come through Python logging, rate-limited."""

from __future__ import annotations

import json
import signal
import time

from tests.integration.test_worker_failures import _worker


def _json_lines(out: bytes) -> list[dict]:
    lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
    assert lines, "the worker logged nothing"
    bad = [line for line in lines if not line.startswith("{")]
    assert not bad, f"not JSON: {bad[:5]}"
    return [json.loads(line) for line in lines]


def test_a_worker_and_its_pipeline_log_json_lines(settings) -> None:  # type: ignore[no-untyped-def]
    proc = _worker("--namespace", settings.namespace, "--loglevel", "INFO", "--log-format", "json")
    time.sleep(12)  # joins, the pipeline process warms its kernels up and logs it
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    records = _json_lines(out)
    processes = {r["process"] for r in records}
    assert "MainProcess" in processes and "riskstream-pipeline" in processes, processes
    assert any(r["logger"] == "riskstream.worker" and r["message"].startswith("settings ") for r in records)


def test_kafka_unreachable_is_a_few_json_lines_not_hundreds(settings) -> None:  # type: ignore[no-untyped-def]
    """librdkafka's own stderr lines (one per failed connection attempt) are routed into Python
    logging (``riskstream.kafka``, rate-limited), so nothing but JSON reaches stderr."""
    proc = _worker("--namespace", settings.namespace, "--bootstrap", "127.0.0.1:1", "--log-format", "json")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75
    records = _json_lines(out)
    assert len(records) < 40, f"{len(records)} lines for one outage"
    assert records[-1]["level"] == "CRITICAL" and "Kafka at 127.0.0.1:1" in records[-1]["message"]
