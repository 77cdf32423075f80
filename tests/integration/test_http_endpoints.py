"""The worker's /livez, /readyz and /metrics (RISKSTREAM_HTTP_ADDR) on the real stack: readiness
goes 503 -> 200 as the worker joins, and back to 503 when Redis stops; liveness stays 200."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request

from tests.integration.test_worker_failures import _own_redis, _worker

PORT = 19481


def _get(path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _wait(pred, what: str, proc, timeout: float = 90) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: tuple[int, bytes] = (0, b"")
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        try:
            last = _get("/readyz")
            if pred(last):
                return last
        except OSError:
            pass  # not serving yet
        time.sleep(0.3)
    raise AssertionError(f"{what}: last /readyz answer {last}")


def _publish(settings, n: int) -> None:
    from confluent_kafka import Producer

    from stream.core.events import encode_event
    from tests.scenarios import random_log

    p = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for e in random_log(7, users=4, hours=0.2)[:n]:
        topic = settings.clicks_topic if e.type == "click" else settings.views_topic
        p.produce(topic, encode_event(e), key=e.user_id.encode())
    assert p.flush(10) == 0


def _metric_lines(prefix: str, proc, until, timeout: float = 60) -> list[str]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        lines = [ln for ln in _get("/metrics")[1].decode().splitlines() if ln.startswith(prefix)]
        if until(lines):
            return lines
        time.sleep(0.5)
    raise AssertionError(f"{prefix}: last {lines}")


def test_readiness_follows_the_group_and_redis_liveness_stays(settings):
    rs = _own_redis(16393)
    proc = _worker("--namespace", settings.namespace, "--redis-url", "redis://127.0.0.1:16393/0",
                   env={"RISKSTREAM_HTTP_ADDR": f"127.0.0.1:{PORT}"})
    try:
        status, body = _wait(lambda r: r[0] in (200, 503), "the endpoint never answered", proc)
        if status == 503:  # before the first join: partitions (and perhaps probes) not there yet
            assert json.loads(body)["reason"]
        status, body = _wait(lambda r: r[0] == 200, "never ready", proc)
        ready = json.loads(body)
        assert ready["ready"] is True
        assert set(ready["checks"]) == {"partitions", "kafka", "redis", "pipeline"}
        assert _get("/livez")[0] == 200
        status, text = _get("/metrics")
        assert status == 200 and b"riskstream_messages_total" in text
        assert b"\nriskstream_pipeline_up 1.0" in text  # the detector child is alive
        assert b"\nprocess_resident_memory_bytes " in text
        assert b"\nriskstream_pipeline_process_resident_memory_bytes " in text
        # offset lag per partition, once events were consumed and committed: back to 0
        _publish(settings, 30)
        lag = _metric_lines("riskstream_consumer_lag{", proc, until=lambda ls: len(ls) >= 2 and all(
            ln.endswith(" 0.0") for ln in ls))
        assert all(f'topic="{settings.clicks_topic}"' in ln or f'topic="{settings.views_topic}"' in ln for ln in lag)

        rs.terminate()
        rs.wait(timeout=10)
        status, body = _wait(lambda r: r[0] == 503, "still ready with Redis gone", proc, timeout=60)
        down = json.loads(body)
        assert down["checks"]["redis"]["ok"] is False and "redis" in down["reason"].lower()
        assert down["checks"]["kafka"]["ok"] is True
        assert _get("/livez")[0] == 200  # alive: an idle worker waits for Redis to come back
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        if rs.poll() is None:
            rs.kill()
