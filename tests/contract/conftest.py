"""Fixtures for the contract suites: every store implementation behind one ``store`` fixture.

``memory`` needs nothing; ``redis`` and ``redis-cluster`` (marked ``integration``) run the same cases
against :class:`stream.state.redis_store.RedisWindowStore` on the local stack (deploy/local/stack: Redis on
127.0.0.1:6379, Redis Cluster on 127.0.0.1:7001-7003). A stack that is down is started through that
script; if Redis still cannot be reached the test fails with the command to run — it never skips.
Each test gets a fresh random key prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from stream.core.windows import MemoryWindowStore
from stream.state import RedisWindowStore, delete_keys

_seq = itertools.count()
_STACK = Path(__file__).resolve().parents[2] / "deploy" / "local" / "stack"
REDIS_URL = os.environ.get("RISKSTREAM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_CLUSTER_URL = os.environ.get("RISKSTREAM_TEST_REDIS_CLUSTER_URL", "redis://127.0.0.1:7001/0")
TTL_S = 3600


def _connect(kind: str) -> redis.Redis | redis.RedisCluster:
    if kind == "redis":
        c: redis.Redis | redis.RedisCluster = redis.Redis.from_url(REDIS_URL, socket_timeout=10)
    else:
        c = redis.RedisCluster.from_url(REDIS_CLUSTER_URL, socket_timeout=10)
    c.ping()
    return c


def redis_client(kind: str) -> redis.Redis | redis.RedisCluster:
    """A client for ``kind`` ("redis" or "redis-cluster"), starting the local stack if it is down."""
    try:
        return _connect(kind)
    except (redis.RedisError, OSError):
        pass
    args = [str(_STACK), "up"] + (["--cluster"] if kind == "redis-cluster" else [])
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=600)
        started = f"'{' '.join(args[1:])}' exited {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as e:
        started = f"could not run {_STACK}: {e}"
    try:
        return _connect(kind)
    except (redis.RedisError, OSError) as e:
        url = REDIS_URL if kind == "redis" else REDIS_CLUSTER_URL
        pytest.fail(
            f"{kind}: Redis not reachable at {url} ({type(e).__name__}: {e}); {started}. "
            f"Start it with: deploy/local/stack up{' --cluster' if kind == 'redis-cluster' else ''}",
            pytrace=False,
        )


def delete_prefix(client: redis.Redis | redis.RedisCluster, prefix: str) -> None:
    """Delete every key under ``prefix`` (on every master of a cluster)."""
    delete_keys(client, prefix)


@pytest.fixture(scope="session")
def redis_clients() -> Iterator[dict[str, redis.Redis | redis.RedisCluster]]:
    clients: dict[str, redis.Redis | redis.RedisCluster] = {}
    yield clients
    for c in clients.values():
        c.close()


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("redis-cluster", marks=pytest.mark.integration),
    ]
)
def store(request, redis_clients):
    if request.param == "memory":
        yield MemoryWindowStore()
        return
    if request.param not in ("redis", "redis-cluster"):
        raise AssertionError(f"unknown store {request.param}")
    client = redis_clients.get(request.param)
    if client is None:
        client = redis_clients[request.param] = redis_client(request.param)
    prefix = f"ct{uuid.uuid4().hex[:12]}:rs:"
    yield RedisWindowStore(client, key_prefix=prefix, ttl_s=TTL_S)
    delete_prefix(client, prefix)


@pytest.fixture
def uid() -> str:
    return f"user-{next(_seq)}"
