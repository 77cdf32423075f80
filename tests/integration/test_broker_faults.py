"""Broker loss on the 3-broker cluster (issue #13): a worker keeps consuming while the broker that leads
most input partitions is SIGKILLed (then restarted) or frozen with SIGSTOP for longer than the session
timeout (then resumed), and the alert ids and the Redis window state equal the offline run.

Topics are RF 3 / min.insync.replicas 2, so two brokers still accept acks=all writes. Every test
restores the cluster in a finally block (the killed broker is started again with its own command
line, a frozen one is sent SIGCONT; the Redis Cluster nodes are never touched), so a failure never
leaves a broker down for the next test or for others sharing the stack.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from stream.settings import Settings, load_settings
from stream.tools.namespace import delete_namespace
from stream.topics import ensure_topics
from tests.integration.conftest import HISTORY_RETENTION_MS
from tests.integration.test_worker_parity import (  # noqa: F401
    _committed,
    artifacts,
    assert_same_alerts,
    assert_same_state,
    offline,
    published_alerts,
    start_worker,
    stop,
)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "broker-faults"
CLUSTER_BOOTSTRAP = "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"
ON_CLUSTER = {"RISKSTREAM_KAFKA_BOOTSTRAP": CLUSTER_BOOTSTRAP}
# While a broker is lost, no input moves: its led partitions have no leader until the controller
# fences it (broker.session.timeout.ms, 9 s), the other partitions' high watermarks wait for it to
# leave their ISR (acks=all), and the publisher's requests in flight to it wait for their timeout.
# A worker cannot tell that stall from a quiet input; after idle_ms it would decide the tail of the
# tick in progress and the stalled events would then be late (volume only) -- a live run equals the
# offline one only if no input pauses for idle_ms mid-stream (docs/semantics.md §3, §10). The replay
# runs ~800x faster than event time, so every second of stall is many event-time minutes: the
# worker gets an idle_ms longer than the stall; the tail is decided that long after the last event.
IDLE_MS = 45_000
SESSION_TIMEOUT_S = 10.0  # stream/live/app.py broker_session_timeout; the brokers' own is 9 s (KRaft default)


def _state_dir() -> Path:
    return Path(os.environ.get("RISKSTREAM_STATE_DIR", ROOT / ".state"))


def _pid_file(node: int) -> Path:
    return _state_dir() / "cluster" / "pids" / f"kafka-{node}.pid"


def _broker_pid(node: int) -> int:
    pid = int(_pid_file(node).read_text().strip())
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert b"kafka.Kafka" in cmd and f"node{node}".encode() in cmd, f"pid {pid} is not cluster broker {node}"
    return pid


class _Broker:
    """One cluster broker, as `stack up --cluster` started it: its command line, environment and
    working directory are read before it is killed, so that it can be started again exactly so
    (same output file, pid file updated) -- without `stack up --cluster`, which would also restart
    any Redis Cluster node that someone sharing the stack has stopped on purpose."""

    def __init__(self, node: int) -> None:
        self.node, self.pid = node, _broker_pid(node)
        proc = Path(f"/proc/{self.pid}")
        self.argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        self.env = dict(kv.decode().split("=", 1) for kv in (proc / "environ").read_bytes().split(b"\0") if b"=" in kv)
        self.cwd = os.readlink(proc / "cwd")
        self.out = Path(os.readlink(proc / "fd" / "1"))  # the stack appends to logs/kafka.out

    def alive(self) -> bool:
        try:
            return b") Z" not in Path(f"/proc/{self.pid}/stat").read_bytes()
        except OSError:
            return False

    def restart(self) -> None:
        """Start it again, unless it runs already (someone sharing the stack ran `stack up --cluster`)."""
        assert not self.alive(), f"broker {self.node} (pid {self.pid}) is still running"
        try:
            self.pid = _broker_pid(self.node)
            return  # the pid file names a live broker of this node: started meanwhile by the stack
        except (OSError, ValueError, AssertionError):
            pass
        port = 19091 + self.node
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return  # something serves its port already: do not start a second JVM on its data
        with self.out.open("ab") as out:
            out.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} test_broker_faults: restarting node {self.node} ===\n"
                      .encode())
            p = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = p.pid
        _pid_file(self.node).write_text(f"{p.pid}\n")


def _brokers_seen(bootstrap: str) -> int:
    try:
        return len(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5).brokers)
    except Exception:  # noqa: BLE001 - asking again
        return 0


def _restore_cluster(broker: _Broker | None = None, timeout: float = 180) -> None:
    """Undo the fault: SIGCONT to every cluster broker, the killed one started again; then wait until
    the cluster's metadata lists three brokers. Nothing else is started or stopped: a service down
    for another reason is someone else's (the stack is shared)."""
    for node in (1, 2, 3):
        try:
            os.kill(_broker_pid(node), signal.SIGCONT)
        except (OSError, ValueError, AssertionError):
            pass  # not running
    if broker is not None and not broker.alive():
        broker.restart()
    deadline = time.monotonic() + timeout
    while _brokers_seen(CLUSTER_BOOTSTRAP) < 3:
        assert time.monotonic() < deadline, "the cluster did not get its three brokers back"
        time.sleep(0.5)


@pytest.fixture
def on_cluster(cluster_stack: None, namespace: str) -> Iterator[Settings]:
    s = load_settings(namespace=namespace, partitions=3, input_retention_ms=HISTORY_RETENTION_MS,
                      kafka_bootstrap=CLUSTER_BOOTSTRAP)
    ensure_topics(s)
    yield s
    delete_namespace(s)


def _leader_of_most_inputs(s: Settings) -> int:
    md = AdminClient({"bootstrap.servers": s.kafka_bootstrap}).list_topics(timeout=10)
    leaders = Counter(p.leader for t in (s.clicks_topic, s.views_topic) for p in md.topics[t].partitions.values())
    node, _ = leaders.most_common(1)[0]
    return node


def _stream(s: Settings, art, rate: int, out) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stream", "replay", str(art["log"]), "--namespace", s.namespace,
                             "--rate", str(rate), "--no-progress"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **ON_CLUSTER},
                            stdout=out, stderr=subprocess.STDOUT)


class _Sampler(threading.Thread):
    """Every 2 s: per input partition committed/end offsets and leader, into a file (diagnostics)."""

    def __init__(self, s: Settings, path: Path) -> None:
        super().__init__(daemon=True)
        self.s, self.path, self.halt = s, path, threading.Event()

    def run(self) -> None:
        s = self.s
        c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": s.group_id, "enable.auto.commit": False})
        admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
        with self.path.open("w") as f:
            while not self.halt.wait(2.0):
                try:
                    md = admin.list_topics(timeout=5)
                    tps = [TopicPartition(t, p) for t in (s.clicks_topic, s.views_topic) for p in range(3)]
                    com = c.committed(tps, timeout=5)
                    parts = []
                    for tp, ct in zip(tps, com):
                        end = c.get_watermark_offsets(tp, timeout=5)[1]
                        pm = md.topics[tp.topic].partitions[tp.partition]
                        parts.append(f"{tp.topic.rsplit('.', 1)[-1][0]}{tp.partition}:{ct.offset}/{end}"
                                     f"@{pm.leader}isr{','.join(map(str, pm.isrs))}")
                    f.write(f"{time.strftime('%H:%M:%S')} {' '.join(parts)}\n")
                except Exception as e:  # noqa: BLE001 - diagnostics only
                    f.write(f"{time.strftime('%H:%M:%S')} error {e}\n")
                f.flush()
        c.close()


def _wait_some_committed(s: Settings, proc: subprocess.Popen, timeout: float = 90) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        done, end = _committed(s, s.group_id)
        if done > 0 and end > 0:
            return done, end
        assert proc.poll() is None and time.monotonic() < deadline, "the worker committed nothing"
        time.sleep(0.2)


def _drained(s: Settings, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, end = _committed(s, s.group_id)
        except Exception:  # noqa: BLE001 - a coordinator moving: ask again
            done, end = -1, 0
        if done == end:
            return
        assert proc.poll() is None, f"worker exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
        assert time.monotonic() < deadline, f"the worker committed {done} of {end} offsets"
        time.sleep(0.5)


def _run_with_fault(s: Settings, art, fault, name: str) -> None:
    """The worker runs, the log streams in at 100 messages/s; mid-stream ``fault(node)`` hits the broker
    leading most input partitions. The run must give the offline alerts and window state."""
    expected, mem = offline(art)
    want = {a.alert_id for a in expected}
    d = ARTIFACTS / name
    d.mkdir(parents=True, exist_ok=True)
    print(f"worker and replay output, offsets every 2 s, fault times: {d}")  # shown by pytest on a failure
    wlog, rlog = (d / "worker.log").open("wb"), (d / "replay.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", "worker", "--namespace", s.namespace, "--model", str(art["model"]),
         "--policy-config", str(art["policy"]), "--loglevel", "INFO", "--batch-size", "50", "--idle-ms", str(IDLE_MS)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **ON_CLUSTER}, stdout=wlog, stderr=subprocess.STDOUT)
    sampler = _Sampler(s, d / "offsets.log")
    sampler.start()
    pub = None
    killed: dict[str, _Broker] = {}  # the broker a fault killed, to be restarted whatever happens
    try:
        time.sleep(4)  # the worker starts (the stream may begin before it joined: a small backlog then)
        node = _leader_of_most_inputs(s)
        (d / "fault.log").write_text(f"{time.strftime('%H:%M:%S')} node {node}\n")
        pub = _stream(s, art, rate=100, out=rlog)
        done, end = _wait_some_committed(s, proc)
        assert pub.poll() is None, "the fault must hit mid-stream (the publisher already finished)"
        with (d / "fault.log").open("a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} fault starts ({done}/{end} committed)\n")
        fault(node, killed)
        with (d / "fault.log").open("a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} fault over\n")
        pub.wait(timeout=240)
        assert pub.returncode == 0, f"the publisher failed with one broker down:\n{(d / 'replay.log').read_text()[-2000:]}"
        got = published_alerts(s, want, proc, timeout=240)
        _drained(s, proc, d / "worker.log", timeout=180)
        assert proc.poll() is None, "the worker must ride the broker fault out"
    finally:
        if pub is not None and pub.poll() is None:
            pub.kill()
        stop(proc)
        sampler.halt.set()
        wlog.close()
        rlog.close()
        _restore_cluster(killed.get("broker"))
    assert proc.returncode == 0, f"SIGTERM must stop the worker cleanly:\n{(d / 'worker.log').read_text()[-3000:]}"
    assert_same_alerts(got, want)
    assert_same_state(s, mem)


@pytest.mark.faults  # ≈ 100 s: `make test-faults`
def test_the_input_leader_broker_sigkilled_mid_stream_and_restarted(on_cluster, artifacts):  # noqa: F811
    def kill_then_restart(node: int, killed: dict[str, _Broker]) -> None:
        killed["broker"] = broker = _Broker(node)
        os.kill(broker.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while broker.alive():
            assert time.monotonic() < deadline, "the broker did not die"
            time.sleep(0.1)
        time.sleep(15)  # the worker and the publisher run on two brokers meanwhile
        _restore_cluster(broker)  # the broker comes back, catches up and rejoins the ISR

    _run_with_fault(on_cluster, artifacts, kill_then_restart, 'sigkill')


@pytest.mark.faults  # ≈ 100 s: `make test-faults`
def test_the_input_leader_broker_frozen_longer_than_the_session_timeout(on_cluster, artifacts):  # noqa: F811
    def freeze_then_resume(node: int, _killed: dict[str, _Broker]) -> None:
        pid = _broker_pid(node)
        os.kill(pid, signal.SIGSTOP)  # alive to the OS, silent to everyone: the controller fences it
        try:
            time.sleep(SESSION_TIMEOUT_S * 1.5)
        finally:
            os.kill(pid, signal.SIGCONT)

    _run_with_fault(on_cluster, artifacts, freeze_then_resume, 'sigstop')
