"""Several pipeline processes per worker (RISKSTREAM_PIPELINES=2) on the real stack: the input
partitions sharded across two children give the offline alerts and Redis state; one child
SIGKILLed mid-stream ends the worker (75) with the other child, and a restart completes with parity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.test_worker_failures import _processes
from tests.integration.test_worker_parity import (  # noqa: F401 - artifacts is a fixture
    _committed,
    artifacts,
    assert_same_alerts,
    assert_same_state,
    check_parity,
    offline,
    published_alerts,
    replay,
    start_worker,
    stop,
    wait_drained,
)

TWO = {"RISKSTREAM_PIPELINES": "2"}


def _children(proc: subprocess.Popen, n: int, timeout: float = 60) -> list[int]:
    """The worker's pipeline processes (spawned, not the resource tracker), once there are ``n``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, stop(proc).decode()[-3000:]
        pids = sorted(pid for pid, parent, cmd in _processes() if parent == proc.pid and b"spawn_main" in cmd)
        if len(pids) == n:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"the worker did not start {n} pipeline processes")


def _gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            return True
        if state == b"Z":
            return True
        time.sleep(0.1)
    return False


def test_two_pipeline_processes_give_the_offline_alerts_and_state(settings, artifacts):
    """The worker's 3 input partitions sharded over 2 children (0 and 2 in one, 1 in the other)."""
    check_parity(settings, artifacts, worker_args=("--batch-size", "50"), env=TWO)


def test_one_of_two_pipeline_processes_sigkilled_mid_stream_exits_the_worker_and_a_restart_gives_parity(
        settings, artifacts):
    expected, mem = offline(artifacts)
    want = {a.alert_id for a in expected}
    replay(settings, artifacts)
    # offsets move in steps of the checkpoint interval: short ones, so the kill comes mid-stream
    proc = start_worker(settings, artifacts, "--batch-size", "10",
                        env={**TWO, "RISKSTREAM_COMMIT_INTERVAL_S": "0.02", "RISKSTREAM_CHECKPOINT_MS": "20"})
    try:
        kids = _children(proc, 2)
        deadline = time.monotonic() + 120
        while True:  # some, not all, of the input offsets committed
            done, end = _committed(settings, settings.group_id)
            if done >= end // 4:
                break
            assert time.monotonic() < deadline, "the worker committed nothing"
            time.sleep(0.005)
        assert done < end, "the kill must happen mid-stream"
        os.kill(kids[1], signal.SIGKILL)
        out = stop(proc, sig=0, timeout=60)  # signal 0: no signal, just wait for it to exit
        assert proc.returncode == 75, out.decode()[-3000:]
        assert b"pipeline process exited (code -9; child 1 of 2)" in out, out.decode()[-3000:]
        assert _gone(kids[0]), "the other pipeline process must not outlive its worker"
        done_after, _ = _committed(settings, settings.group_id)
        assert done_after < end, "the worker died before it finished: the restart has work left"
        proc = start_worker(settings, artifacts, "--batch-size", "10", env=TWO)
        _children(proc, 2)
        got = published_alerts(settings, want, proc)
        wait_drained(settings)
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out.decode()[-3000:]
    assert_same_alerts(got, want)
    assert_same_state(settings, mem)


def test_two_pipeline_processes_ready_only_together_and_their_metrics_add_up(settings, monkeypatch):
    """/readyz answers once both children are up (the link waits for both before the Faust app
    starts); riskstream_pipeline_up is 1 and riskstream_pipeline_process_* covers both children."""
    import tests.integration.test_http_endpoints as http
    from tests.integration.test_worker_failures import _worker

    port = 19483
    monkeypatch.setattr(http, "PORT", port)  # where its _get and _wait ask
    proc = _worker("--namespace", settings.namespace,
                   env={**TWO, "RISKSTREAM_HTTP_ADDR": f"127.0.0.1:{port}"})
    try:
        kids = _children(proc, 2)
        _, body = http._wait(lambda r: r[0] == 200, "never ready", proc)
        assert json.loads(body)["checks"]["pipeline"] == {"ok": True, "detail": "running"}
        text = http._get("/metrics")[1].decode()
        assert "\nriskstream_pipeline_up 1.0" in text
        rss = float(next(ln.split()[1] for ln in text.splitlines()
                         if ln.startswith("riskstream_pipeline_process_resident_memory_bytes ")))
        page = os.sysconf("SC_PAGE_SIZE")
        each = [int(Path(f"/proc/{k}/statm").read_text().split()[1]) * page for k in kids]
        assert 0.8 * sum(each) < rss < 1.2 * sum(each), (rss, each)  # both children, not one
        assert rss > 1.5 * max(each)
        cpu = float(next(ln.split()[1] for ln in text.splitlines()
                         if ln.startswith("riskstream_pipeline_process_cpu_seconds_total ")))
        assert cpu > 0
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out.decode()[-3000:]


def test_a_second_worker_joining_mid_stream_both_with_two_pipeline_processes_gives_parity(settings, artifacts):
    """The rebalance path with sharded pipelines: revoked partitions are dropped by the children that
    own them (every child settles its writes and forgets cached users), the new owner's children
    pick them up; the result is the offline one (duplicates only as the same alert)."""
    from tests.integration.test_worker_parity import ROOT, _messages_consumed

    expected, mem = offline(artifacts)
    want = {a.alert_id for a in expected}
    args = ("--batch-size", "50", "--idle-ms", "5000")
    a = start_worker(settings, artifacts, *args, "--metrics-port", "19477", env=TWO)
    b = None
    try:
        _children(a, 2)
        time.sleep(4)  # A has joined and owns every partition
        pub = subprocess.Popen([sys.executable, "-m", "stream", "replay", str(artifacts["log"]), "--namespace",
                                settings.namespace, "--rate", "150", "--no-progress"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2)
        b = start_worker(settings, artifacts, *args, "--metrics-port", "19478", env=TWO)
        _children(b, 2)
        assert pub.wait(timeout=60) == 0
        got = published_alerts(settings, want, a)
        wait_drained(settings)
        assert b.poll() is None
        consumed = _messages_consumed(19477), _messages_consumed(19478)
    finally:
        outs = stop(a), (stop(b) if b is not None else b"")
    assert (a.returncode, b.returncode) == (0, 0), outs[0].decode()[-2000:] + outs[1].decode()[-2000:]
    assert all(n > 0 for n in consumed), f"both workers must have consumed (messages: {consumed})"
    assert_same_alerts(got, want)
    assert_same_state(settings, mem)
