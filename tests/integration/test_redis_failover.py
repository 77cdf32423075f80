"""Redis Cluster failover on the real stack (issue #13): a master SIGKILLed mid-stream, its replica
takes over, the worker rides it out, and the alerts and the window state equal the offline run.

The stack's cluster (`deploy/local/stack up --cluster`) has one replica per master. Replication is
asynchronous, so a write the killed master acknowledged may never have reached its replica; the
worker's state writes count as done only once a replica acknowledged them (``WAIT 1``,
``RISKSTREAM_REDIS_WAIT_REPLICAS``, 1 by default on a cluster), and offsets are committed only for
done writes: nothing whose offset was committed is lost with the master. The killed node is
restarted from its own configuration (it rejoins as the replica of its successor) in a
``finally``, so others sharing the cluster keep a cluster with 3 masters and 3 replicas.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import redis
from pydantic import SecretStr

from stream.state import delete_keys, redis_client
from tests.integration.test_worker_parity import (  # noqa: F401 - artifacts is a fixture
    CLUSTER_REDIS,
    ROOT,
    _committed,
    artifacts,
    assert_same_alerts,
    assert_same_state,
    offline,
    published_alerts,
    start_worker,
    stop,
    wait_drained,
)

HOST = "127.0.0.1"


def _node(port: int) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, socket_timeout=5, socket_connect_timeout=2)


def _role(port: int) -> tuple[str, str]:
    """(role, master_link_status) of the node on ``port``; ("down", "") if it does not answer."""
    try:
        info = _node(port).info("replication")
    except redis.RedisError:
        return "down", ""
    return str(info["role"]), str(info.get("master_link_status", ""))


def _master_with_most_keys(client: redis.RedisCluster, prefix: str) -> tuple[int, int]:
    """(port, number of keys) of the master holding the most keys under ``prefix``."""
    counts = {n.port: sum(1 for _ in client.scan_iter(match=prefix + "*", count=1000, target_nodes=n))
              for n in client.get_primaries()}
    port = max(counts, key=lambda p: counts[p])
    return port, counts[port]


def _wait_rejoined(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _role(port) != ("slave", "up"):
        assert time.monotonic() < deadline, f"redis {port} did not rejoin as a replica ({_role(port)})"
        time.sleep(0.2)


def test_redis_cluster_master_sigkilled_mid_stream_fails_over_and_loses_nothing(settings, artifacts, cluster_stack):  # noqa: F811
    """The log streams in (≈ 100 messages/s); once a quarter of it is committed, the master that
    holds most of the test's keys is SIGKILLed; its replica is promoted (cluster-node-timeout 3 s);
    the killed node is restarted and rejoins as a replica. The worker keeps running throughout
    (bounded retries with backoff) and ends with the offline alerts and window state."""
    on_cluster = settings.model_copy(update={"redis_url": SecretStr(CLUSTER_REDIS["RISKSTREAM_REDIS_URL"]),
                                             "redis_cluster": True})
    assert on_cluster.redis_replicas_to_wait == 1, "the default on a cluster: a replica acknowledges each write"
    expected, mem = offline(artifacts)
    want = {a.alert_id for a in expected}
    lines = sum(1 for _ in artifacts["log"].open("rb"))
    client = redis_client(on_cluster)
    env = {**CLUSTER_REDIS, "RISKSTREAM_COMMIT_INTERVAL_S": "0.05"}
    proc = start_worker(settings, artifacts, "--batch-size", "10", "--idle-ms", "5000", env=env)
    pub: subprocess.Popen | None = None
    killed: tuple[int, str] | None = None  # (port, config file) of the master we killed
    restarted = False
    try:
        time.sleep(3)  # the worker has joined and owns every partition
        pub = subprocess.Popen([sys.executable, "-m", "stream", "replay", str(artifacts["log"]), "--namespace",
                                settings.namespace, "--rate", "100", "--no-progress"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while _committed(settings, settings.group_id)[0] < lines // 4:
            assert time.monotonic() < deadline and proc.poll() is None, "the worker committed too little"
            time.sleep(0.05)
        port, nkeys = _master_with_most_keys(client, on_cluster.key_prefix)
        assert nkeys > 0, "the test's keys must be on the master that is killed"
        replica_port = int(_node(port).info("replication")["slave0"]["port"])
        assert pub.poll() is None, "the kill must happen mid-stream"
        for _ in range(3):  # on a shared stack someone's `stack up --cluster` may restart it first
            server = _node(port).info("server")
            killed = (port, str(server["config_file"]))
            t_kill = time.monotonic()
            os.kill(int(server["process_id"]), signal.SIGKILL)
            deadline = time.monotonic() + 60
            while _role(replica_port)[0] != "master" and time.monotonic() < deadline:
                if _role(port)[0] == "master" and time.monotonic() - t_kill > 1:
                    break  # restarted by someone else before its replica took over
                time.sleep(0.1)
            if _role(replica_port)[0] == "master":
                break
            assert _role(port)[0] == "master", f"the replica on {replica_port} was not promoted within 60 s"
            print(f"\nredis {port} was restarted by someone else before its replica took over; again")
            time.sleep(2)
        else:
            raise AssertionError(f"redis {port} kept being restarted before a failover (a shared stack in use?)")
        failover_s = time.monotonic() - t_kill
        # the old master comes back (as a supervisor would restart it): it rejoins as a replica
        if _role(port)[0] == "down":  # (unless someone sharing the stack did already)
            subprocess.run(["redis-server", killed[1]], check=True, capture_output=True)
        restarted = True
        _wait_rejoined(port)
        rejoined_s = time.monotonic() - t_kill
        print(f"\nredis {port} killed: replica {replica_port} promoted after {failover_s:.1f} s, "
              f"{port} back as its replica after {rejoined_s:.1f} s")
        assert pub.wait(timeout=120) == 0
        got = published_alerts(settings, want, proc, timeout=240)
        wait_drained(settings, timeout=180)
        assert proc.poll() is None, "the worker must ride the failover out, not exit"
    finally:
        out = stop(proc)
        if pub is not None and pub.poll() is None:
            pub.kill()
            pub.wait()
        if killed is not None and not restarted and _role(killed[0])[0] == "down":
            subprocess.run(["redis-server", killed[1]], check=False, capture_output=True)
            _wait_rejoined(killed[0])
    try:
        assert proc.returncode == 0, out.decode()[-3000:]
        assert b"retry" in out, "the worker should have met the failover (its retries are logged)"
        assert_same_alerts(got, want)
        assert_same_state(on_cluster, mem)
    finally:
        delete_keys(client, f"{settings.namespace}:")
        client.close()
