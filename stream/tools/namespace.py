"""Delete a namespace: its topics and its Redis keys (what tests, the demo and benches create)."""

from __future__ import annotations

from stream.errors import ConfigError
from stream.settings import Settings
from stream.state import delete_keys, redis_client
from stream.topics import delete_namespace_topics

__all__ = ["delete_namespace"]


def delete_namespace(s: Settings) -> tuple[list[str], int]:
    """Delete the namespace's topics and Redis keys; returns the topics and the number of keys.

    Refuses the empty namespace: that would be everything outside any namespace.
    """
    if not s.namespace:
        raise ConfigError("refusing to delete the empty namespace")
    topics = delete_namespace_topics(s)
    r = redis_client(s)
    try:
        keys = delete_keys(r, f"{s.namespace}:")
    finally:
        r.close()
    return topics, keys
