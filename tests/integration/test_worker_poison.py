"""No single message stops the worker (live): a huge value, a burst of bad envelopes; and SIGTERM to
the whole process group is a clean stop."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
from confluent_kafka import Producer

from stream.core.events import encode_event
from tests.eventgen import at, ev
from tests.integration.test_worker_failures import (
    ENV,
    ROOT,
    _committed_total,
    _pipeline_of,
    _read_all,
)


def _worker(*args: str) -> subprocess.Popen:
    """A worker in a process group of its own (so the test can signal the group, not itself)."""
    return subprocess.Popen([sys.executable, "-m", "stream", "worker", "--no-model", "--loglevel", "WARNING", *args],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop_group(proc: subprocess.Popen) -> tuple[int, str]:
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out.decode()[-3000:]


def test_a_huge_value_and_101_bad_envelopes_go_to_the_dlq_and_the_worker_keeps_going(settings):
    p = Producer({"bootstrap.servers": settings.kafka_bootstrap, "message.max.bytes": 2_000_000})
    huge = b'{"v":1,"pad":"' + b"x" * 900_000 + b'"}'  # > 750 KB: its v1 DLQ record exceeded Kafka's limit
    p.produce(settings.views_topic, key=b"big-user", value=huge)
    bad = json.dumps({"v": 1, "events": [{}] * 1000}).encode()  # v1: 1,000 records each, 101,000 in all
    for _ in range(101):
        p.produce(settings.views_topic, key=b"bad-user", value=bad)
    p.produce(settings.clicks_topic, key=b"good-user", value=encode_event(ev("good-user", at(0, 12), "click")))
    assert p.flush(30) == 0
    proc = _worker("--namespace", settings.namespace, "--idle-ms", "300")
    try:
        deadline = time.monotonic() + 120
        done = 0
        while proc.poll() is None and time.monotonic() < deadline:
            done = _committed_total(settings)
            if done == 103:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
        assert done == 103  # offsets pass every one of them
        records = _read_all(settings, settings.dlq_topic, 102, timeout=30)
    finally:
        rc, out = _stop_group(proc)
    assert rc == 0, out
    recs = [orjson.loads(m.value()) for m in records]
    assert len(recs) == 102  # one per bad message
    big = next(r for r in recs if r["reason"] == "oversized")
    assert big["original_size"] == len(huge) and big["original_truncated"] is True
    assert big["original_sha256"] == hashlib.sha256(huge).hexdigest()
    assert base64.b64decode(big["original_b64"]) == huge[:4096]
    assert max(len(m.value()) for m in records) < 200_000
    envs = [r for r in recs if r["reason"] == "missing_field"]
    assert len(envs) == 101 and all(len(r["rejections"]) == 1000 for r in envs)


def test_sigterm_to_the_process_group_exits_0(settings):
    proc = _worker("--namespace", settings.namespace)
    try:
        child = _pipeline_of(proc)
        time.sleep(3)  # the Faust side running, as in the parent-only test
    except BaseException:
        proc.kill()
        raise
    rc, out = _stop_group(proc)
    assert rc == 0, out
    assert not Path(f"/proc/{child}").exists() or b"Z" in Path(f"/proc/{child}/stat").read_bytes().split(b")")[1][:3]
