"""`riskstream namespace delete`: a namespace's topics and Redis keys go, nothing else does."""

from __future__ import annotations

from click.testing import CliRunner

from stream.cli import main
from stream.settings import load_settings
from stream.state import redis_client
from stream.topics import admin_client, ensure_topics


def _topics(s) -> set[str]:  # type: ignore[no-untyped-def]
    return set(admin_client(s).list_topics(timeout=10).topics)


def test_namespace_delete_removes_its_topics_and_keys_only(stack: None, namespace: str) -> None:
    s = load_settings(namespace=namespace, partitions=1)
    other = load_settings(namespace=namespace + "x", partitions=1)  # shares the prefix as a string
    ensure_topics(s)
    ensure_topics(other)
    r = redis_client(s)
    try:
        r.set(f"{namespace}:rs:{{u}}:u", b"1")
        r.set(f"{namespace}x:rs:{{u}}:u", b"1")
        res = CliRunner().invoke(main, ["namespace", "delete", "--namespace", namespace, "--yes"])
        assert res.exit_code == 0, res.output
        assert res.output.strip() == f"deleted 5 topic(s) and 1 Redis key(s) of namespace {namespace}"
        left = _topics(s)
        assert not {t for t in left if t.startswith(namespace + ".")}
        assert {other.clicks_topic, other.views_topic, other.alerts_topic, other.levels_topic, other.dlq_topic} <= left
        assert r.exists(f"{namespace}:rs:{{u}}:u") == 0 and r.exists(f"{namespace}x:rs:{{u}}:u") == 1
    finally:
        CliRunner().invoke(main, ["namespace", "delete", "--namespace", namespace + "x", "--yes"])
        r.close()


def test_namespace_delete_refuses_the_empty_namespace(stack: None) -> None:
    res = CliRunner().invoke(main, ["namespace", "delete", "--yes"], env={"RISKSTREAM_NAMESPACE": ""})
    assert res.exit_code == 2
    assert "refusing to delete the empty namespace" in res.output
