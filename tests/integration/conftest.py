"""Integration fixtures: the real Kafka broker and Redis server, started through deploy/local/stack.

A missing service is an error, never a skip: the session fixture runs ``stack up`` (idempotent) and
fails the run when the stack cannot come up.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.settings import Settings, load_settings
from stream.tools.namespace import delete_namespace
from stream.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "deploy" / "local" / "stack"
HISTORY_RETENTION_MS = 20 * 365 * 86_400_000


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def _stack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(STACK), *args], capture_output=True, text=True, timeout=600)


def _anything_running(status: subprocess.CompletedProcess[str]) -> bool:
    """Whether a `stack status` saw any of its services running. A session stops at its end only a
    stack it found entirely stopped: one found degraded (e.g. a broker that a fault test sharing the
    stack has just killed) is someone else's, and stopping it would pull it from under them."""
    return status.returncode == 0 or any(line.split()[1:2] == ["running"] for line in status.stdout.splitlines())


@pytest.fixture(scope="session")
def stack() -> Iterator[None]:
    status = _stack("status")
    was_up = _anything_running(status)
    if status.returncode != 0:
        r = _stack("up")
        if r.returncode != 0:
            pytest.fail(f"deploy/local/stack up failed ({r.returncode}):\n{r.stdout}\n{r.stderr}", pytrace=False)
    yield
    if not was_up and os.environ.get("RISKSTREAM_KEEP_STACK") != "1":
        _stack("down")


@pytest.fixture(scope="session")
def cluster_stack() -> Iterator[None]:
    """The 3-broker Kafka cluster and the Redis Cluster (`stack up --cluster`), started if down.

    Stopped afterwards only if none of it was running before: a cluster that is merely unhealthy
    (a node killed by someone's fault test, replicas missing) is repaired by `up` and left running
    for whoever else uses it."""
    status = _stack("status", "--cluster")
    was_up = _anything_running(status)
    if status.returncode != 0:
        r = _stack("up", "--cluster")
        if r.returncode != 0:
            pytest.fail(f"deploy/local/stack up --cluster failed ({r.returncode}):\n{r.stdout}\n{r.stderr}",
                        pytrace=False)
    yield
    if not was_up and os.environ.get("RISKSTREAM_KEEP_STACK") != "1":
        _stack("down", "--cluster")


@pytest.fixture
def namespace() -> str:
    return f"it{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(stack: None, namespace: str) -> Iterator[Settings]:
    # Test logs are from 2024: with the default 8-day retention Kafka would delete them at its next
    # retention check (every 5 min), in the middle of a test.
    s = load_settings(namespace=namespace, partitions=3, input_retention_ms=HISTORY_RETENTION_MS)
    ensure_topics(s)
    yield s
    delete_namespace(s)
