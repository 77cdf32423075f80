"""Failure policy of the worker on the real stack: bad input to the DLQ, unavailable services exit."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from stream.core.events import encode_event
from tests.contracts import assert_valid_dlq
from tests.eventgen import at, ev

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _worker(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stream", "worker", "--no-model", "--loglevel", "WARNING", *args],
                            cwd=ROOT, env={**ENV, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _committed_total(settings) -> int:
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.group_id})
    try:
        tps = [TopicPartition(t, q) for t in (settings.clicks_topic, settings.views_topic) for q in range(3)]
        return sum(max(tp.offset, 0) for tp in c.committed(tps, timeout=10))
    finally:
        c.close()


def _processes() -> Iterator[tuple[int, int, bytes]]:
    """(pid, parent pid, command line) of every process that can be read."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat, cmd = (d / "stat").read_text(), (d / "cmdline").read_bytes()
            except OSError:
                continue
            yield int(d.name), int(stat.rsplit(")", 1)[1].split()[1]), cmd


def _read_all(settings, topic: str, want: int, timeout: float = 60) -> list:
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"{settings.namespace}-rd",
                  "enable.auto.commit": False})
    md = c.list_topics(topic, timeout=10)
    c.assign([TopicPartition(topic, p, 0) for p in md.topics[topic].partitions])
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            out.append(m)
    c.close()
    return out


def test_invalid_events_go_to_the_dlq_with_reason_and_bytes_and_the_worker_keeps_going(settings):
    p = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    good = ev("dlq-user", at(0, 12), "click", tz=0)
    bad = [
        (settings.clicks_topic, b"dlq-user", b'{"broken'),
        (settings.clicks_topic, b"dlq-user", encode_event(ev("dlq-user", at(0, 12, 1), "view"))),  # wrong topic
        (settings.views_topic, b"someone-else", encode_event(ev("dlq-user", at(0, 12, 2), "view"))),  # wrong key
        (settings.views_topic, b"dlq-user",
         b'{"v":1,"events":[' + encode_event(ev("dlq-user", at(0, 12, 3), "view")) + b',{"type":"view"}]}'),
    ]
    for topic, key, value in bad:
        p.produce(topic, key=key, value=value)
    p.produce(settings.clicks_topic, key=b"dlq-user", value=encode_event(good))
    assert p.flush(30) == 0
    proc = _worker("--namespace", settings.namespace, "--idle-ms", "300")
    try:
        records = _read_all(settings, settings.dlq_topic, 4)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            done = _committed_total(settings)
            if done == 5:  # all five messages acked: the good event applied, the bad ones in the DLQ
                break
            time.sleep(0.3)
        assert proc.poll() is None, "a bad event must never stop the worker"
        assert done == 5
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    recs = [assert_valid_dlq(m.value()) for m in records]
    reasons = sorted(r["reason"] for r in recs)
    assert reasons == ["malformed_json", "missing_field", "type_topic_mismatch", "user_key_mismatch"]
    broken = next(r for r in recs if r["reason"] == "malformed_json")
    assert base64.b64decode(broken["original_b64"]) == b'{"broken'
    assert broken["topic"] == settings.clicks_topic and isinstance(broken["offset"], int)
    batch = next(r for r in recs if r["reason"] == "missing_field")
    assert batch["index"] == 1 and batch["topic"] == settings.views_topic
    assert all(m.key() in (b"dlq-user", b"someone-else") for m in records)


def test_worker_exits_nonzero_when_redis_stays_unavailable(settings):
    t = time.monotonic()
    proc = _worker("--namespace", settings.namespace, "--redis-url", "redis://127.0.0.1:1/0")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out.decode()[-2000:]
    assert b"Redis is unavailable" in out and time.monotonic() - t < 90


def test_worker_exits_nonzero_when_kafka_stays_unavailable(settings):
    proc = _worker("--namespace", settings.namespace, "--bootstrap", "127.0.0.1:1")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 75, out.decode()[-2000:]
    assert b"riskstream: error: Kafka at 127.0.0.1:1" in out


def _pipeline_of(proc: subprocess.Popen, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]  # type: ignore[union-attr]
        for pid, parent, cmd in _processes():
            if parent == proc.pid and b"spawn_main" in cmd:  # not the resource tracker
                return pid
        time.sleep(0.1)
    raise AssertionError("the worker started no pipeline process")


def test_worker_exits_nonzero_when_its_pipeline_process_dies(settings):
    proc = _worker("--namespace", settings.namespace)
    try:
        child = _pipeline_of(proc)
        time.sleep(3)  # let the Faust side start: the link notices the death from the event loop
        os.kill(child, signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, out.decode()[-2000:]
    assert b"pipeline process exited" in out


def test_sigterm_stops_the_worker_and_its_pipeline_process(settings):
    proc = _worker("--namespace", settings.namespace)
    child = _pipeline_of(proc)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()[-2000:]
    assert not Path(f"/proc/{child}").exists() or b"Z" in Path(f"/proc/{child}/stat").read_bytes().split(b")")[1][:3]


def _own_redis(port: int) -> subprocess.Popen:
    """A private redis-server for one test (so it can be stopped without touching the stack's)."""
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis(port=port).ping()
            return proc
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "private redis-server did not start"
            time.sleep(0.1)


def _publish(settings, user: str, n: int, start_minute: int) -> None:
    p = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i in range(n):
        e = ev(user, at(0, 10, start_minute + i), "click")
        p.produce(settings.clicks_topic, key=user.encode(), value=encode_event(e))
    assert p.flush(30) == 0


def _wait_committed(settings, proc: subprocess.Popen, want: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _committed_total(settings) < want:
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"not committed: {want} messages"
        time.sleep(0.2)


def _healthy_worker_on_own_redis(settings, port: int, user: str) -> tuple[subprocess.Popen, subprocess.Popen]:
    """A private Redis and a worker on it that has applied, decided, written and committed 5 events."""
    rs = _own_redis(port)
    proc = _worker("--namespace", settings.namespace, "--redis-url", f"redis://127.0.0.1:{port}/0",
                   "--idle-ms", "300")
    try:
        _publish(settings, user, 5, 0)
        _wait_committed(settings, proc, 5)
    except BaseException:
        for p in (proc, rs):
            p.kill()
        raise
    return rs, proc


def test_a_redis_outage_mid_stream_is_retried_then_the_worker_exits_nonzero(settings):
    rs, proc = _healthy_worker_on_own_redis(settings, 16391, "outage-user")
    try:
        rs.terminate()
        rs.wait(timeout=10)
        t = time.monotonic()
        _publish(settings, "outage-user", 5, 10)
        out, _ = proc.communicate(timeout=120)
    finally:
        for p in (proc, rs):
            if p.poll() is None:
                p.kill()
    assert proc.returncode == 75, out.decode()[-3000:]
    text = out.decode()
    assert "retry 1/" in text and "StoreUnavailableError" in text, text[-3000:]
    assert 5 < time.monotonic() - t < 90  # bounded backoff: neither at once nor idling alive
    assert _committed_total(settings) == 5  # nothing of the failed batch was acked


def test_a_redis_pause_shorter_than_the_retry_bound_is_ridden_out(settings):
    rs, proc = _healthy_worker_on_own_redis(settings, 16392, "pause-user")
    try:
        rs.send_signal(signal.SIGSTOP)  # hangs every call (socket timeouts), keeps the data
        _publish(settings, "pause-user", 5, 10)
        # longer than the 5-s socket timeout plus the checkpoint interval (1 s: the write of these
        # events may be sent that late into the pause), far below the retry bound (≈ 31 s)
        time.sleep(9)
        rs.send_signal(signal.SIGCONT)
        _wait_committed(settings, proc, 10, timeout=90)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        rs.send_signal(signal.SIGCONT)
        rs.kill()
        rs.wait(timeout=10)
    assert b"retry 1/" in out, out.decode()[-3000:]


def _stack_kafka_pid() -> int:
    for pid, _, cmd in _processes():
        if b"kafka.Kafka" in cmd and str(ROOT / ".state" / "kafka" / "server.properties").encode() in cmd:
            return pid
    raise AssertionError("the stack's Kafka broker is not running")


def test_a_kafka_outage_mid_stream_makes_an_idle_worker_exit_nonzero(settings):
    """Nothing to publish, so only the watchdog can notice: the broker is frozen (SIGSTOP), every
    request times out, and the worker exits 75 after produce_timeout_s instead of idling alive."""
    kafka = _stack_kafka_pid()
    proc = _worker("--namespace", settings.namespace, "--idle-ms", "300", env={"RISKSTREAM_PRODUCE_TIMEOUT_S": "5"})
    try:
        _publish(settings, "kafka-outage-user", 3, 0)
        _wait_committed(settings, proc, 3)
        os.kill(kafka, signal.SIGSTOP)
        t = time.monotonic()
        try:
            out, _ = proc.communicate(timeout=90)
        finally:
            os.kill(kafka, signal.SIGCONT)
        took = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, out.decode()[-3000:]
    assert b"has not answered for" in out and took < 60, (took, out.decode()[-3000:])  # 5 s after its last answer
