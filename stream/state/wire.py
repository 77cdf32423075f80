"""Redis wire helpers: raw hiredis pipelines, cluster-aware pipelining, literal-prefix deletion."""

from __future__ import annotations

import re
from typing import Any

import redis
from hiredis import pack_command

from stream.settings import Settings

__all__ = ["Client", "delete_keys", "redis_client"]

Client = redis.Redis | redis.RedisCluster


def _raw_pipeline(client: redis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send commands on one connection in one write and read every reply (errors as values).

    What redis-py's pipeline does, without its per-command bookkeeping: measured half the client
    CPU for the state writes (≈ 6 vs 13 µs per 2.7 KB EVALSHA). Standalone Redis only; a cluster
    goes through redis-py's pipeline, which routes commands to nodes.
    """
    conn = _send_raw(client, commands)
    return _read_raw(client, conn, len(commands))


def _send_raw(client: redis.Redis, commands: list[tuple[Any, ...]]) -> Any:
    """The sending half of :func:`_raw_pipeline`: the connection stays checked out until read."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([b"".join(map(pack_command, commands))])  # type: ignore[no-untyped-call]
    except BaseException:
        conn.disconnect()  # type: ignore[no-untyped-call]
        pool.release(conn)
        raise
    return conn


def _read_raw(client: redis.Redis, conn: Any, n: int) -> list[Any]:
    """The reading half of :func:`_raw_pipeline`: ``n`` replies, errors as values; releases ``conn``."""
    try:
        out: list[Any] = []
        for _ in range(n):
            try:
                out.append(conn.read_response())
            except redis.ResponseError as e:
                out.append(e)
        return out
    except BaseException:
        conn.disconnect()  # replies may be left unread: never reuse it
        raise
    finally:
        client.connection_pool.release(conn)


def delete_keys(client: Client, prefix: str) -> int:
    """UNLINK every key under ``prefix`` (on every primary of a cluster); returns how many.

    The prefix is matched literally: glob characters in it are escaped, so nothing in it is ever a
    pattern. Keys go in batches of 1,000 (one per call in a cluster, where a multi-key UNLINK must
    stay in one slot).
    """
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
    if isinstance(client, redis.RedisCluster):
        keys = list(client.scan_iter(match=pattern, count=1000, target_nodes=redis.RedisCluster.PRIMARIES))
        for k in keys:
            client.unlink(k)
        return len(keys)
    n = 0
    while batch := [k for _, k in zip(range(1000), client.scan_iter(match=pattern, count=1000))]:
        n += client.unlink(*batch)
    return n


def _pipelined(client: Client, queue: Any, *, raise_on_error: bool = True) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    queue(pipe)
    return pipe.execute(raise_on_error=raise_on_error)


def redis_client(settings: Settings) -> Client:
    """A Redis client for these settings: standalone, or Redis Cluster (``redis_cluster``).

    ACL user and password come in the URL (``redis://user:password@host:port/0``); ``rediss://``
    is TLS, verified against ``redis_ssl_ca_location`` (else the system's CAs), host name included.
    """
    url = settings.redis_url.get_secret_value()
    opts: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 5}
    if settings.redis_tls:
        opts["ssl_cert_reqs"] = "required"
        opts["ssl_check_hostname"] = True
        if settings.redis_ssl_ca_location is not None:
            opts["ssl_ca_certs"] = str(settings.redis_ssl_ca_location)
    if settings.redis_cluster:
        return redis.RedisCluster.from_url(url, **opts)
    return redis.Redis.from_url(url, health_check_interval=30, **opts)
