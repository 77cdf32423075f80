"""Faust on the real broker: join the group, consume, commit, stop, restart, no reprocessing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[2]


def _produce(bootstrap: str, topic: str, values: range) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for i in values:
        p.produce(topic, key=f"k{i % 5}".encode(), value=f"v{i}".encode())
    assert p.flush(30) == 0


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _wait_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while len(_lines(path)) < n:
        assert proc.poll() is None, f"faust probe exited early with {proc.returncode}"
        assert time.monotonic() < deadline, f"only {len(_lines(path))} of {n} messages consumed"
        time.sleep(0.2)


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def _end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "offsets-probe"})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    finally:
        c.close()


def _start(settings, topic: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.faust_probe", "--bootstrap", settings.kafka_bootstrap,
         "--namespace", settings.namespace, "--topic", topic, "--out", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"faust probe ignored SIGTERM:\n{out[-3000:]}")
    return out


def test_faust_worker_commits_and_does_not_reprocess_after_restart(settings, tmp_path):
    topic = settings.topic("probe")
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result()
    group = f"{settings.group_id}-probe"
    out = tmp_path / "consumed.txt"

    _produce(settings.kafka_bootstrap, topic, range(0, 60))
    proc = _start(settings, topic, out)
    try:
        _wait_lines(out, 60, proc)
        ends = _end_offsets(settings.kafka_bootstrap, topic, 3)
        deadline = time.monotonic() + 30
        while _committed(settings.kafka_bootstrap, group, topic, 3) != ends:
            assert time.monotonic() < deadline, "the worker did not commit what it consumed"
            time.sleep(0.5)
    finally:
        log = _stop(proc)
    assert proc.returncode == 0, log[-3000:]

    _produce(settings.kafka_bootstrap, topic, range(60, 100))
    proc = _start(settings, topic, out)
    try:
        _wait_lines(out, 100, proc)
        time.sleep(3)  # give a faulty restart the chance to re-read old offsets
    finally:
        log = _stop(proc)
    values = [line.split()[2] for line in _lines(out)]
    assert len(values) == 100, f"reprocessed {len(values) - 100} messages"
    assert sorted(values) == sorted(f"v{i}" for i in range(100))
