"""A paused worker (a zombie) on the real stack: the rightful owner carries on, the result is the offline one.

Two workers share the group while a log streams in; worker A (its Faust process and its pipeline
process: a GC, SIGSTOP or VM pause) is stopped past the 10 s session timeout, so the group gives its
partitions to B under a newer generation, then continued. Whatever A writes to Redis after that is
either replaced by B (a newer generation) or refused (A exits 75); B never exits
(docs/state-layout.md §2, issue #12 item 7). The alerts and the Redis state equal the offline run's.

Whether a paused worker's resumed write lands between the new owner's load and write of a user (the
interleaving that made the owner fail under the last-writer fence) is a race there; the second test
makes such a write deterministically, and tests/integration/test_redis_fencing.py pins every
interleaving at the store level.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from stream.state import user_key
from tests.integration.test_worker_parity import (  # noqa: F401 - artifacts is a fixture
    _messages_consumed,
    artifacts,
    assert_same_alerts,
    assert_same_state,
    offline,
    published_alerts,
    wait_drained,
)

ROOT = Path(__file__).resolve().parents[2]
PAUSE_S = 25  # > broker_session_timeout (10 s) + a rebalance


def _worker(settings, art, port: int, log: Path) -> subprocess.Popen:
    # its own process group: SIGSTOP reaches the pipeline process too, as a VM pause would
    return subprocess.Popen(
        [sys.executable, "-m", "stream", "worker", "--namespace", settings.namespace,
         "--model", str(art["model"]), "--policy-config", str(art["policy"]), "--loglevel", "WARNING",
         "--batch-size", "50", "--idle-ms", "5000", "--metrics-port", str(port)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
        stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _consumed(port: int) -> float:
    try:
        return _messages_consumed(port)
    except OSError:  # its metrics server is not up yet
        return 0.0


def _stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGCONT)  # never leave it stopped
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_worker_paused_past_the_session_timeout_does_not_stop_the_new_owner(settings, artifacts, tmp_path):  # noqa: F811
    expected, mem = offline(artifacts)
    want = {a.alert_id for a in expected}
    logs = tmp_path / "a.log", tmp_path / "b.log"
    port_a, port_b = _free_port(), _free_port()
    a = _worker(settings, artifacts, port_a, logs[0])
    b = None
    pub = None
    try:
        time.sleep(4)  # A has joined and owns every partition
        pub = subprocess.Popen([sys.executable, "-m", "stream", "replay", str(artifacts["log"]), "--namespace",
                                settings.namespace, "--rate", "30", "--no-progress"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        b = _worker(settings, artifacts, port_b, logs[1])
        deadline = time.monotonic() + 60
        while _consumed(port_b) == 0 or _consumed(port_a) == 0:  # both own partitions
            assert time.monotonic() < deadline, "B never consumed"
            assert a.poll() is None and b.poll() is None, logs[0].read_text() + logs[1].read_text()
            time.sleep(0.5)
        time.sleep(2)
        consumed_a = _consumed(port_a)
        assert pub.poll() is None, "the pause must come mid-stream"
        os.killpg(a.pid, signal.SIGSTOP)
        time.sleep(PAUSE_S)
        assert pub.poll() is None, "the stream must still run when A resumes"
        os.killpg(a.pid, signal.SIGCONT)
        assert pub.wait(timeout=120) == 0
        got = published_alerts(settings, want, b, timeout=240)
        wait_drained(settings, timeout=180)
        assert b.poll() is None, "the rightful owner must not exit"
        a_code = a.poll()  # None: A rejoined and works on; 75: a write of A was refused
    finally:
        for p in (a, b):
            if p is not None:
                _stop(p)
        if pub is not None and pub.poll() is None:
            pub.kill()
    out_a, out_b = (p.read_text(errors="replace")[-3000:] for p in logs)
    print(f"A after the pause: {'running' if a_code is None else f'exited {a_code}'}; consumed before it: "
          f"{consumed_a:.0f}\n--- A ---\n{out_a}\n--- B ---\n{out_b}")
    assert b.returncode == 0, out_b
    assert a_code in (None, 75), out_a
    assert_same_alerts(got, want)
    assert_same_state(settings, mem)
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    gens = {int(client.hget(user_key(settings.key_prefix, u), "g") or 0) for u in mem.users()}
    client.close()
    assert min(gens) >= 1 and max(gens) >= 2, f"states written under the generations of the group: {gens}"


def test_a_zombie_write_of_a_user_the_owner_is_working_on_is_refused_and_the_owner_carries_on(settings, artifacts,  # noqa: F811
                                                                                               tmp_path):
    """Deterministic: mid-stream, this test writes, as a zombie of the previous generation would, a
    user the running worker owns, from a copy of its current state (so the version compare-and-set
    alone would accept it, and the owner's next write of the user would then be refused: exit 75,
    the restart ping-pong of the last-writer fence). Refused by generation; the owner carries on."""
    from stream.errors import StaleStateError
    from stream.state import RedisWindowStore

    expected, mem = offline(artifacts)
    want = {a.alert_id for a in expected}
    log = tmp_path / "b.log"
    b = _worker(settings, artifacts, _free_port(), log)
    pub = None
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        time.sleep(4)
        pub = subprocess.Popen([sys.executable, "-m", "stream", "replay", str(artifacts["log"]), "--namespace",
                                settings.namespace, "--rate", "100", "--no-progress"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        users = sorted(mem.users())
        deadline = time.monotonic() + 60
        while True:  # a user the worker has written under its generation
            stored = {u: client.hget(user_key(settings.key_prefix, u), "g") for u in users}
            written = [u for u, g in stored.items() if g]
            if written:
                break
            assert time.monotonic() < deadline and b.poll() is None, log.read_text()
            time.sleep(0.2)
        u, gen = written[0], int(stored[written[0]])
        zombie = RedisWindowStore(client, key_prefix=settings.key_prefix, ttl_s=settings.state_ttl_s)
        zombie.set_generation(gen - 1)
        zombie.load_policy([u])  # its copy: the current state, current version
        with pytest.raises(StaleStateError):
            zombie.confirm({u: (0, {})})
        assert pub.poll() is None, "the zombie must write mid-stream"
        assert pub.wait(timeout=120) == 0
        got = published_alerts(settings, want, b, timeout=240)
        wait_drained(settings, timeout=180)
        assert b.poll() is None, "the owner must not exit"
    finally:
        _stop(b)
        if pub is not None and pub.poll() is None:
            pub.kill()
        client.close()
    assert b.returncode == 0, log.read_text()[-3000:]
    assert {x["alert_id"] for x in got} == want
    assert_same_state(settings, mem)
