"""The live window store: per-user state in Redis, updated by one atomic Lua call per user.

:class:`RedisWindowStore` is the Redis twin of :class:`stream.core.windows.MemoryWindowStore`. The
update rule lives in ``stream/lua/apply.lua``, the key layout in ``docs/state-layout.md``. One
:meth:`~RedisWindowStore.apply` is one pipelined round trip (split per node by redis-py in a
cluster): an ``EVALSHA`` per touched user, whose keys share the user's hash tag. One
:meth:`~RedisWindowStore.confirm` is one pipelined round trip too, with no script: per user one
``HSET`` of the policy fields and the confirmed tick end ``ob`` (atomic on its own) and an
``EXPIRE``; the next ``apply`` drops the confirmed snapshots.

Redelivery is safe: items that carry a Kafka position are fenced inside the script, so a pipeline
that redis-py retries after a connection error (or a batch Kafka redelivers) applies nothing twice.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, Final

import redis
from redis.exceptions import ClusterDownError, NoScriptError, RedisClusterException, TryAgainError

from stream.core import layout as L
from stream.core import windows
from stream.core.events import Reason
from stream.core.windows import Snapshot, Snapshots, UserBatch, UserResult
from stream.errors import StoreUnavailableError

__all__ = ["CONFIRMED_FIELD", "FENCE_SUFFIX", "OUTBOX_GRACE_S", "OUTBOX_SUFFIX", "POLICY_PREFIX", "RING_SUFFIX", "STATE_SUFFIX",
           "RedisWindowStore", "user_keys", "user_tag"]

RING_SUFFIX: Final = ":w"
STATE_SUFFIX: Final = ":s"
OUTBOX_SUFFIX: Final = ":o"
FENCE_SUFFIX: Final = ":f"
POLICY_PREFIX: Final = "pol:"
AGE_BAND_FIELD: Final = "ab"
CONFIRMED_FIELD: Final = "ob"  # written by confirm: the tick end through which the outbox is confirmed

_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, ClusterDownError, TryAgainError, RedisClusterException)
_STATE_FIELDS: Final = (*L.SCALARS, AGE_BAND_FIELD)
_REASONS: Final = {r.value.encode(): r for r in Reason}
_CATEGORY_CODE: Final = {c: i * 4 for c, i in L.CATEGORY_INDEX.items()}
_ITEM = struct.Struct(">qBIhHHq")  # apply.lua's ITEM: ts, code, dwell, tz, age band, tp, offset
_TZ_ABSENT: Final = -32768
_HEAD = struct.Struct(">12qB")  # apply.lua's HEAD: tick end, 11 scalars, flags; then the age band
_HAS_BAND, _LIVE = 1, 2  # the flags: the user has an age band; the snapshot is live (a reply only)
OUTBOX_GRACE_S: Final = 3_600
_MAX_HINTS: Final = 200_000

Client = redis.Redis | redis.RedisCluster


def _source(name: str) -> str:
    return resources.files("stream").joinpath("lua", name).read_text(encoding="utf-8")


APPLY_LUA: Final = _source("apply.lua")
_NUMKEYS: Final = {APPLY_LUA: 4}


def user_tag(user_id: str) -> str:
    """The user's hash-tag text: the id with ``%``, ``{`` and ``}`` percent-escaped (injective)."""
    if "%" in user_id or "{" in user_id or "}" in user_id:
        return user_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return user_id


def user_keys(key_prefix: str, user_id: str) -> tuple[bytes, bytes, bytes, bytes]:
    """(ring, state hash, outbox, fence spill) keys of one user, UTF-8 encoded."""
    base = f"{key_prefix}{{{user_tag(user_id)}}}"
    return ((base + RING_SUFFIX).encode(), (base + STATE_SUFFIX).encode(), (base + OUTBOX_SUFFIX).encode(),
            (base + FENCE_SUFFIX).encode())


class RedisWindowStore:
    """:class:`~stream.core.windows.WindowStore` on Redis (standalone or Redis Cluster)."""

    def __init__(self, client: Client, *, key_prefix: str, ttl_s: int, outbox_grace_s: int = OUTBOX_GRACE_S) -> None:
        """Load the script (on every master of a cluster) and keep its SHA.

        ``outbox_grace_s`` bounds how long an outbox list whose snapshots were all confirmed waits for
        the user's next ``apply`` (which deletes it) before it expires (see :meth:`confirm`).

        Raises:
            ValueError: the client decodes responses (rings must stay bytes) or ttl_s < 1.
            StoreUnavailableError: Redis cannot be reached.
        """
        if client.get_encoder().decode_responses:
            raise ValueError("RedisWindowStore needs a client with decode_responses=False (rings are raw bytes)")
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s}")
        self._client = client
        self._prefix = key_prefix
        self._ttl_s = ttl_s
        self._max_fence = windows.MAX_FENCE_OFFSETS
        self._grace_s = max(1, min(outbox_grace_s, ttl_s))
        # user -> newest tick end of the snapshots stored in the outbox list, from the last reply
        self._listed: dict[str, int] = {}
        self._scripts = {src: hashlib.sha1(src.encode()).hexdigest() for src in (APPLY_LUA,)}
        for src in self._scripts:
            self._load_script(src)

    @property
    def key_prefix(self) -> str:
        return self._prefix

    def keys_of(self, user_id: str) -> tuple[bytes, bytes, bytes, bytes]:
        """(ring, state hash, outbox, fence spill) keys of one user."""
        return user_keys(self._prefix, user_id)

    # -- WindowStore -------------------------------------------------------------------------------
    def apply(
        self,
        batches: Sequence[UserBatch],
        watermark_ms: int,
        commit_floor: Mapping[str, int] | None = None,
    ) -> list[UserResult]:
        """Apply each user's items atomically (one EVALSHA each, one pipeline); see WindowStore."""
        if not batches:
            return []
        floors = commit_floor or {}
        calls = [self._apply_args(b, watermark_ms, floors) for b in batches]
        replies = self._eval_all(APPLY_LUA, calls)
        listed = self._listed
        if len(listed) > _MAX_HINTS:
            listed.clear()  # only a hint for confirm
        out = []
        for b, r in zip(batches, replies, strict=True):
            res, newest_listed = _decode(b.user_id, r)
            if newest_listed is None:
                listed.pop(b.user_id, None)
            else:
                listed[b.user_id] = newest_listed
            out.append(res)
        return out

    def load_policy(self, user_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """The ``pol:`` fields of each user's state hash ({} for a user without any)."""
        users = list(user_ids)
        if not users:
            return {}
        rows = self._pipeline(lambda pipe: [pipe.hgetall(self.keys_of(u)[1]) for u in users])
        pol = POLICY_PREFIX.encode()
        return {
            u: {k.decode(): v.decode() for k, v in row.items() if k.startswith(pol)}
            for u, row in zip(users, rows, strict=True)
        }

    def confirm(self, done: Mapping[str, tuple[int, Mapping[str, str]]]) -> None:
        """Per user, atomically: store the ``pol:`` fields and the confirmed tick end; see WindowStore.

        One ``HSET <state> ob <through_ms> pol:… …`` per user (a single command: atomic), then an
        ``EXPIRE`` of the hash (it may have just been created), all users in one pipeline. The user's
        next ``apply`` drops the outbox snapshots with tick end <= ``ob`` before anything else.

        A user may not come back for a long time, and a list of stored snapshots would wait for that
        next ``apply`` until its TTL: when this confirm covers every stored snapshot of the user's last
        ``apply`` reply, the list also gets ``EXPIRE outbox_grace_s``. An ``apply`` that keeps
        snapshots in it (confirmed by nobody) restores the full TTL, so only an outage longer than the
        grace during a race with another worker's ``apply`` could lose one.

        Raises:
            ValueError: a field name does not start with ``pol:`` (the hash also holds window state).
        """
        todo: list[tuple[bytes, dict[str, Any], bytes | None]] = []
        covered: list[str] = []
        for u, (through_ms, fields) in done.items():
            _check_policy_fields(fields)
            _, state_key, outbox_key, _ = self.keys_of(u)
            newest = self._listed.get(u)
            grace_key: bytes | None = None
            if newest is not None and through_ms >= newest:
                covered.append(u)
                grace_key = outbox_key
            todo.append((state_key, {CONFIRMED_FIELD: int(through_ms), **fields}, grace_key))
        if todo:
            def queue(pipe: Any) -> None:
                for key, mapping, outbox_key in todo:
                    pipe.hset(key, mapping=mapping)
                    pipe.expire(key, self._ttl_s)
                    if outbox_key is not None:
                        pipe.expire(outbox_key, self._grace_s)
            self._pipeline(queue)
            for u in covered:
                del self._listed[u]

    def save_policy(self, states: Mapping[str, Mapping[str, str]]) -> None:
        """HSET each user's ``pol:`` fields and refresh the hash's TTL, in one pipeline."""
        todo = [(self.keys_of(u)[1], dict(f)) for u, f in states.items() if f]
        for _, f in todo:
            _check_policy_fields(f)
        if todo:
            def queue(pipe: Any) -> None:
                for key, f in todo:
                    pipe.hset(key, mapping=f)
                    pipe.expire(key, self._ttl_s)
            self._pipeline(queue)

    def state_of(self, user_id: str) -> tuple[tuple[int, ...], str | None, bytes] | None:
        ring_key, state_key, _, _ = self.keys_of(user_id)
        values, ring = self._pipeline(lambda pipe: (pipe.hmget(state_key, _STATE_FIELDS), pipe.get(ring_key)))
        if ring is None or values[L.S_LT] is None:
            return None
        scalars = tuple(L.NONE if v is None else int(v) for v in values[: len(L.SCALARS)])
        band = values[-1]
        return scalars, None if band is None else band.decode(), ring

    # -- internals ---------------------------------------------------------------------------------
    def _apply_args(self, batch: UserBatch, watermark_ms: int, floors: Mapping[str, int]) -> list[Any]:
        tps: dict[str, int] = {}
        bands: dict[str, int] = {}
        pack = _ITEM.pack
        items: list[bytes] = []
        for ev, late, tp, offset in batch.items:
            view = ev.type == "view"
            tz = ev.tz_offset_min
            band = ev.age_band
            if band is None:
                b = 0
            else:
                b = bands.get(band, 0)
                if not b:
                    b = bands[band] = len(bands) + 1
            if tp is not None and offset is not None:
                j = tps.get(tp, 0)
                if not j:
                    j = tps[tp] = len(tps) + 1
            else:
                j = offset = 0
            items.append(pack(ev.ts_ms, _CATEGORY_CODE[ev.category] + (2 if late else 0) + view,
                              ev.dwell_ms if view else 0, _TZ_ABSENT if tz is None else tz, b, j, offset))
        args: list[Any] = [*self.keys_of(batch.user_id), watermark_ms, self._ttl_s, self._max_fence,
                           b"".join(items), len(tps)]
        for tp in tps:
            f = floors.get(tp)
            args += (tp, "" if f is None else f)
        args += bands
        return args

    def _load_script(self, src: str) -> None:
        try:
            sha = self._client.script_load(src)  # RedisCluster: on every primary
        except _UNAVAILABLE as e:
            raise _unavailable(e) from e
        got = sha.decode() if isinstance(sha, bytes) else str(sha)
        if got != self._scripts[src]:
            raise RuntimeError(f"SCRIPT LOAD returned {got}, expected {self._scripts[src]}")

    def _eval_all(self, src: str, calls: list[list[Any]]) -> list[Any]:
        """EVALSHA of one script per call (its keys first), pipelined; NOSCRIPT reloads and retries."""
        results = self._evalsha(src, calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            # SCRIPT FLUSH, a restart without persistence, a failover or a new master: the script
            # did not run for these users, so load it again and run just those.
            self._load_script(src)
            for i, r in zip(missing, self._evalsha(src, [calls[i] for i in missing]), strict=True):
                results[i] = r
        for r in results:
            if isinstance(r, Exception):
                if isinstance(r, _UNAVAILABLE):
                    raise _unavailable(r) from r
                raise r
        return results

    def _evalsha(self, src: str, calls: list[list[Any]]) -> list[Any]:
        sha = self._scripts[src]
        numkeys = _NUMKEYS[src]
        try:
            pipe = self._client.pipeline(transaction=False)
            ex = pipe.execute_command  # ClusterPipeline blocks .evalsha() by name only; routing is by the keys
            for args in calls:
                ex("EVALSHA", sha, numkeys, *args)
            return pipe.execute(raise_on_error=False)
        except _UNAVAILABLE as e:
            raise _unavailable(e) from e

    def _pipeline(self, queue: Any) -> list[Any]:
        try:
            pipe = self._client.pipeline(transaction=False)
            queue(pipe)
            return pipe.execute()
        except _UNAVAILABLE as e:
            raise _unavailable(e) from e


def _check_policy_fields(fields: Mapping[str, str]) -> None:
    bad = [k for k in fields if not k.startswith(POLICY_PREFIX)]
    if bad:
        raise ValueError(f"policy field names must start with {POLICY_PREFIX!r} (the hash holds window state "
                         f"too): {bad[:3]}")


def _decode(user_id: str, reply: list[Any]) -> tuple[UserResult, int | None]:
    """The result, and the newest tick end of the snapshots stored in the outbox list (None if none)."""
    pt = reply[0]
    res = UserResult(user_id, duplicates=reply[1], pending_tick=None if pt == L.NONE else pt)
    rejected = reply[2]
    if rejected:
        res.rejected = [(rejected[k], _REASONS[rejected[k + 1]]) for k in range(0, len(rejected), 2)]
    newest_listed = None
    if len(reply) > 3:
        snaps = [_snapshot(user_id, reply[k], reply[k + 1]) for k in range(3, len(reply), 2)]
        for s, k in zip(snaps, range(3, len(reply), 2)):
            if not reply[k][_HEAD.size - 1] & _LIVE and (newest_listed is None or s.tick_end_ms > newest_listed):
                newest_listed = s.tick_end_ms
        res.snapshots = Snapshots.from_rows(snaps)
    return res, newest_listed


def _snapshot(user_id: str, header: bytes, ring: bytes) -> Snapshot:
    """Decode one outbox entry: its header (tick end, 11 scalars, flags, age band) and its ring bytes."""
    v = _HEAD.unpack_from(header)
    return Snapshot(user_id, v[0], v[1:12], header[_HEAD.size:].decode() if v[12] & _HAS_BAND else None, ring)


def _unavailable(e: Exception) -> StoreUnavailableError:
    return StoreUnavailableError(
        f"Redis is unavailable ({type(e).__name__}: {e}); check that Redis is running and reachable "
        "(locally: deploy/local/stack status)"
    )
