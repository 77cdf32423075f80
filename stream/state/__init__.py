"""The Redis adapter: the persisted window store, its key layout and its wire helpers."""

from stream.state.codec import (
    SCALARS_DTYPE,
    STATE_SUFFIX,
    pack_state,
    unpack_state,
    user_key,
    user_tag,
)
from stream.state.redis_store import DEFAULT_CACHE_USERS, STATE_LUA, RedisWindowStore
from stream.state.wire import Client, delete_keys, redis_client

__all__ = [
    "Client",
    "DEFAULT_CACHE_USERS",
    "RedisWindowStore",
    "SCALARS_DTYPE",
    "STATE_LUA",
    "STATE_SUFFIX",
    "delete_keys",
    "pack_state",
    "redis_client",
    "unpack_state",
    "user_key",
    "user_tag",
]
