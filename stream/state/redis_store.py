"""The live window store: the core's window state, kept by the worker and persisted in Redis.

:class:`RedisWindowStore` holds a :class:`~stream.core.windows.StateTable`, as the memory store does — the
same compiled update rule, the same results — and keeps Redis as its durable, shared copy
(docs/state-layout.md):

* **Load once.** The first time a worker touches a user, one pipelined ``HGETALL`` per new user
  loads the state hash; afterwards the worker's copy is current for as long as it owns the user's
  partition (nothing in a worker is authoritative: it can be dropped at any time and reloaded).
* **Fenced write per user per checkpoint.** :meth:`confirm` — called after the batch's alerts were
  acknowledged by Kafka — (or, with ``write=False``, the following :meth:`checkpoint`) writes every
  user changed since the last write with one ``EVALSHA`` of
  ``stream/lua/state.lua``, all in one pipeline, fenced by the consumer group generation under which
  the user's copy was loaded (:meth:`set_generation`): a newer generation replaces the state, an
  older one is refused, and within one generation the write is a compare-and-set on the user's
  version. A stale owner (a zombie after a rebalance) gets :class:`StaleStateError` and must stop;
  the offsets it did not commit are redelivered to the owner, whose writes a zombie cannot block.
* **Nothing unconfirmed is persisted.** A user whose decided ticks are not all confirmed yet is
  written by a later confirm. So Redis always holds a state whose decisions were published: after
  a crash, redelivery re-applies the same events to it and re-decides the same ticks, with the
  same alert ids (docs/semantics.md §7, §8). The offset fence travels in the state.
* **Bounded memory.** At most ``max_cached_users`` users stay cached; the least recently touched
  persisted ones are dropped first. :meth:`invalidate` (on every rebalance) drops all of them at
  the next safe point.

Compared with applying events inside a Lua script (the previous design, measured in
``bench/redis_store_bench.py``), Redis does one small write per touched user per batch instead of
the window arithmetic, and the worker runs the same compiled kernel as the offline scorer.
"""

from __future__ import annotations

import hashlib
import ssl
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, Final

import numpy as np
import orjson
import redis
from numpy.typing import NDArray
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MasterDownError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)

from stream.core import layout as L
from stream.core.policy import POLICY_PREFIX, PolicyState
from stream.core.windows import (
    FencedPart,
    FencedResult,
    PolicyRecord,
    StateTable,
    UserBatch,
    UserResult,
)
from stream.errors import SecurityError, StaleStateError, StoreUnavailableError
from stream.state.codec import (
    _F_POLICY,
    _F_RINGS,
    _F_STATE,
    _F_VERSION,
    SCALARS_DTYPE,
    _pack_tail,
    pack_rings,
    unpack_rings,
    unpack_state,
    user_key,
)
from stream.state.wire import Client, _pipelined, _raw_pipeline, _read_raw, _send_raw

__all__ = ["DEFAULT_CACHE_USERS", "STATE_LUA", "RedisWindowStore"]

DEFAULT_CACHE_USERS: Final = 100_000  # ≈ 4.7 KB each (measured, arrays grow by doubling): ≈ 470 MB at most
_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, ClusterDownError, TryAgainError, RedisClusterException)
# Replies that mean "not this node (any more)": the slot moved, the node is a replica now (a failover)
# or cut off. The slot map is refreshed and the write re-sent (AskError covers MovedError).
_REDIRECTED = (AskError, ClusterDownError, TryAgainError, MasterDownError, ReadOnlyError)


class _Redirected(StoreUnavailableError):
    """A write reached a node that no longer serves its slot (or cannot serve it now)."""


def _source(name: str) -> str:
    return resources.files("stream").joinpath("lua", name).read_text(encoding="utf-8")


STATE_LUA: Final = _source("state.lua")


class RedisWindowStore:
    """:class:`~stream.core.windows.WindowStore` persisted in Redis (standalone or Redis Cluster)."""

    def __init__(self, client: Client, *, key_prefix: str, ttl_s: int,
                 max_cached_users: int = DEFAULT_CACHE_USERS, writer_id: str | None = None,
                 keep_outbox: bool = True, defer_writes: bool = False, key_secret: bytes | None = None,
                 wait_replicas: int = 0, wait_timeout_ms: int = 1000) -> None:
        """Load the script (on every primary of a cluster) and keep its SHA.

        ``key_secret``: name users' keys by a keyed pseudonym of their id (see ``codec.user_key``).

        ``defer_writes`` (the worker's pipeline process): ``confirm`` sends its write pipeline and
        returns; the replies are read by :meth:`finish_write`, which the next ``confirm`` calls
        first. Redis executes the writes while the caller computes the next batch. On a Redis
        Cluster the calls are grouped by the node that serves their key's slot (the client's slot
        map) and sent on each node's connection; a redirection (MOVED/ASK, a node that became a
        replica, CLUSTERDOWN) or a lost connection refreshes the slot map and re-sends the whole
        write synchronously (state.lua accepts a retry of the same write by the same writer).

        ``wait_replicas`` > 0: every write ends with ``WAIT wait_replicas wait_timeout_ms`` on each
        node it went to, and counts as done only when that many replicas acknowledged it; else it
        raises :class:`StoreUnavailableError` and is re-sent. So a failover to a replica loses no
        write that the caller was told is done (Redis replication is asynchronous otherwise).

        ``keep_outbox=False`` (the worker): ``apply`` returns only newly decided snapshots, not the
        unconfirmed ones of earlier calls. A worker never needs them again in-process — a batch that
        fails before its confirm ends the process, and a restart re-decides from Redis.

        Raises:
            ValueError: the client decodes responses (rings are raw bytes), ttl_s < 1 or
                max_cached_users < 1.
            StoreUnavailableError: Redis cannot be reached.
        """
        if client.get_encoder().decode_responses:
            raise ValueError("RedisWindowStore needs a client with decode_responses=False (rings are raw bytes)")
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s}")
        if max_cached_users < 1:
            raise ValueError(f"max_cached_users must be >= 1, got {max_cached_users}")
        if wait_replicas < 0 or wait_timeout_ms < 1:
            raise ValueError(f"wait_replicas must be >= 0 and wait_timeout_ms >= 1, got {wait_replicas}, "
                             f"{wait_timeout_ms}")
        self._table = StateTable(keep_outbox=keep_outbox)  # this worker's copy of its users
        self._client = client
        self._prefix = key_prefix
        self._key_secret = key_secret
        self._ttl_ms = ttl_s * 1000
        self._max_cached = max_cached_users
        self._writer = writer_id or uuid.uuid4().hex
        self._version: dict[str, int] = {}  # user -> version of the stored state our copy derives from
        self._generation = 0  # the caller's ownership epoch: labels the copies loaded from now on
        self._gen_of: dict[str, int] = {}  # user -> generation under which our copy was loaded
        self._dirty: set[str] = set()  # changed since the last write
        self._decided: dict[str, int] = {}  # newest tick end decided and not yet confirmed, per user
        self._recent: OrderedDict[str, None] = OrderedDict()  # cached users, least recently touched first
        self._invalidate_requested = False
        self.defer_writes = defer_writes
        self._wait: list[tuple[Any, ...]] = [("WAIT", wait_replicas, wait_timeout_ms)] if wait_replicas else []
        self._refresh_slots = False  # a cluster write was redirected or lost: reload the slot map first
        self._in_flight: tuple[list[str], list[list[Any]], Any] | None = None  # a sent, unread write
        self._unsettled: tuple[list[str], list[list[Any]]] | None = None  # its reply failed: outcome unknown
        self._sending: set[str] = set()  # its users (never evicted or dropped meanwhile)
        self._sha = hashlib.sha1(STATE_LUA.encode()).hexdigest()
        self._load_script()

    @property
    def key_prefix(self) -> str:
        return self._prefix

    def key_of(self, user_id: str) -> bytes:
        return user_key(self._prefix, user_id, self._key_secret)

    @property
    def cached_users(self) -> int:
        return len(self._table)

    # -- WindowStore -------------------------------------------------------------------------------
    def apply(
        self,
        batches: Sequence[UserBatch],
        watermark_ms: int,
        commit_floor: Mapping[str, int] | None = None,
    ) -> list[UserResult]:
        """Load users not cached yet (one pipeline), then apply as the memory store does."""
        if not batches:
            return []
        users = [b.user_id for b in batches]
        self._before_apply(users)
        results = self._table.apply(batches, watermark_ms, commit_floor)
        self._after_apply(((r.user_id, int(r.snapshots.tick_end.max())) for r in results if r.snapshots.user_ids),
                          users)
        return results

    @property
    def fenced_columns(self) -> bool:
        """Whether :meth:`apply_fenced` serves (no outbox: the worker's store)."""
        return not self._table.keep_outbox

    def apply_fenced(self, parts: Sequence[FencedPart]) -> FencedResult:
        """:meth:`apply` of columns (the live columnar path, ``StateTable.apply_fenced``), with the
        same loading, decided-tick and dirty bookkeeping; every part's users loaded in one round trip."""
        self._before_apply([*dict.fromkeys(u for p in parts for u in (*p.cols.user_ids.tolist(), *p.due))])
        res = self._table.apply_fenced(parts)
        self._after_apply(zip(res.snapshots.user_ids, res.snapshots.tick_end.tolist()),
                          [u for r in res.parts for u in r.users])
        return res

    def _before_apply(self, users: Sequence[str]) -> None:
        """Drop the cache if that was asked for and nothing is unwritten; load the users not cached."""
        if self._invalidate_requested and self._all_written():
            self._drop_cache()
        self._load(users)

    def _after_apply(self, decided_ticks: Iterable[tuple[str, int]], users: Iterable[str]) -> None:
        """Keep each user's newest decided tick (unconfirmed: kept out of Redis until confirmed), and
        mark the applied users changed and recently touched."""
        decided = self._decided
        for u, newest in decided_ticks:
            if newest > decided.get(u, newest - 1):
                decided[u] = newest
        users = list(users)
        self._dirty.update(users)
        self._touch(users)

    def prefetch(self, user_ids: Sequence[str]) -> None:
        """Load the users not cached yet (one pipeline) and nothing else: the only I/O of a
        following :meth:`apply` of these users, so a caller can retry this and not that."""
        if self._invalidate_requested and self._all_written():
            self._drop_cache()
        self._load(list(user_ids))

    def load_policy(self, user_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        users = list(user_ids)
        self._load(users)
        return self._table.load_policy(users)

    def load_policy_states(self, user_ids: Sequence[str]) -> dict[str, PolicyState]:
        users = list(user_ids)
        self._load(users)
        return self._table.load_policy_states(users)

    def confirm(self, done: Mapping[str, tuple[int, PolicyRecord]], *, write: bool = True) -> None:
        """Store the policy state (see WindowStore), then write every changed, fully confirmed user.

        One ``EVALSHA state.lua`` per user, all in one pipeline. Call it after every batch, also
        when nothing was decided (events applied without deciding a tick change the state too).

        ``write=False`` (checkpointed writes): confirm only; the changed users stay dirty until
        :meth:`checkpoint` writes them, so a user changed in many batches is written once.

        Raises:
            ValueError: a field name does not start with ``pol:``.
            StaleStateError: another writer replaced some users' state since this store loaded it;
                their copies are dropped. Stop processing: this worker no longer owns them.
            StoreUnavailableError: Redis cannot be reached (retry: the write is idempotent).
        """
        for pol in (f for _, f in done.values()):
            if not isinstance(pol, PolicyState):  # an object's fields are all named pol:*
                _check_policy_fields(pol)
        users = list(done)
        self._load(users)
        self._table.confirm(done)
        decided = self._decided
        for u, (through_ms, _) in done.items():
            if u in decided and through_ms >= decided[u]:
                del decided[u]
        self._dirty.update(users)
        self._touch(users)
        if write:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Write every changed, fully confirmed user (one pipeline; with ``defer_writes`` only sent:
        :meth:`finish_write` settles it), then drop the cache if a rebalance asked for it, and evict.

        Raises: as :meth:`confirm`.
        """
        self._write()
        if self._invalidate_requested and self._all_written():
            self._drop_cache()
        self._evict()

    @property
    def unwritten_users(self) -> int:
        """Users changed since the last write was sent (a checkpoint is due past the cache size:
        dirty users are never evicted)."""
        return len(self._dirty)

    def state_of(self, user_id: str) -> tuple[tuple[int, ...], str | None, bytes] | None:
        """The user's state as this store sees it: its copy if cached, else what Redis holds."""
        if user_id in self._table:
            return self._table.state_of(user_id)
        return self.stored_state_of(user_id)

    # -- beyond the protocol -----------------------------------------------------------------------
    def stored_state_of(self, user_id: str) -> tuple[tuple[int, ...], str | None, bytes] | None:
        """What Redis holds for the user (scalars, age band, ring bytes), or None."""
        self.finish_write()
        rings, blob = self._call(lambda c: c.hmget(self.key_of(user_id), [_F_RINGS, _F_STATE]))
        if rings is None or blob is None:
            return None
        rings, scalars, band, _ = _decode(user_id, rings, blob)
        return tuple(scalars.tolist()), band, rings

    def set_generation(self, generation: int) -> None:
        """The consumer group generation under which the caller owns its partitions from now on.

        Copies loaded afterwards are written with it (docs/state-layout.md §2): a copy loaded under
        generation ``g`` replaces a state written under an older one and is refused over a newer one.
        A copy keeps the generation it was loaded under — a copy loaded before a rebalance must never
        override what a newer owner wrote — so call this before the apply that follows an assignment.
        Call it only with a generation under which the caller was assigned its partitions; 0 (the
        default, also for negative values: no generation known) fences by version alone.
        """
        self._generation = max(0, int(generation))

    @property
    def generation(self) -> int:
        return self._generation

    def invalidate(self) -> None:
        """Drop every cached user at the next point where all changes are written (a rebalance).

        Safe to call from another thread than the one applying: it only sets a flag.
        """
        self._invalidate_requested = True

    def pending_writes(self) -> int:
        """Users changed but not written yet (decided ticks awaiting confirm, or a failed write)."""
        return len(self._dirty | self._sending)

    # -- internals ---------------------------------------------------------------------------------
    def _touch(self, users: Iterable[str]) -> None:
        recent = self._recent
        for u in users:
            recent[u] = None
            recent.move_to_end(u)

    def _drop_cache(self) -> None:
        self._table.forget(list(self._table.users()))
        self._version.clear()
        self._gen_of.clear()
        self._decided.clear()
        self._recent.clear()
        self._invalidate_requested = False

    def _evict(self) -> None:
        excess = len(self._table) - self._max_cached
        if excess <= 0:
            return
        victims: list[str] = []
        for u in self._recent:  # least recently touched first
            if u not in self._dirty and u not in self._sending:
                victims.append(u)
                if len(victims) >= excess + self._max_cached // 10:  # make some room at once
                    break
        for u in victims:
            del self._recent[u]
            self._version.pop(u, None)
            self._gen_of.pop(u, None)
            self._decided.pop(u, None)
        self._table.forget(victims)

    def _load(self, users: Sequence[str]) -> None:
        """HGETALL the users not cached yet (one pipeline) and fill their rows."""
        missing = list(dict.fromkeys(u for u in users if u not in self._table))
        if not missing:
            return
        rows = self._hgetall_all([self.key_of(u) for u in missing])
        table = self._table
        table.slots(missing)  # a row for each, also for users Redis has nothing of
        gen = self._generation
        for u, row in zip(missing, rows, strict=True):
            self._version[u] = int(row.get(_F_VERSION, b"0"))
            self._gen_of[u] = gen
            rings, blob = row.get(_F_RINGS), row.get(_F_STATE)
            if rings is not None and blob is not None:
                table.load_row(u, *_decode(u, rings, blob))
            pol = row.get(_F_POLICY)
            if pol:
                table.set_policy(u, orjson.loads(pol))
        self._touch(missing)

    def _write(self) -> None:
        """Write each dirty user whose decided ticks are all confirmed; one pipeline of EVALSHA.

        With ``defer_writes`` the pipeline is only sent: :meth:`finish_write` reads the replies,
        at the latest at the next write, load-free call or drop.
        """
        self.finish_write()
        todo: list[str] = []
        for u in self._dirty:  # a dirty user is never forgotten (eviction and drops skip them)
            if u in self._decided:
                continue  # unconfirmed decisions: keep them out of Redis until confirmed
            todo.append(u)
        if not todo:
            return
        calls = self._write_args(todo)
        if self.defer_writes:
            self._in_flight = (todo, calls, self._send_evalsha(calls))
            # clean as of what was sent: a change made while the write is in flight dirties again
            self._dirty.difference_update(todo)
            self._sending = set(todo)
            return
        self._written(todo, self._evalsha_all(calls), clean=True)

    def finish_write(self) -> None:
        """Read the replies of a deferred write (if one is in flight) and settle it.

        A write whose replies could not be read is not forgotten: the next call sends the very same
        calls again, synchronously (state.lua accepts a retry of the same write by the same writer),
        so a retried ``finish_write`` returns only once the write is known to be done.

        Raises:
            StaleStateError, StoreUnavailableError: as :meth:`confirm`; after an unavailable Redis
                the users are still dirty, and the write stays unsettled until a call succeeds.
        """
        if self._unsettled is not None:
            todo, calls = self._unsettled
            replies = self._evalsha_all(calls)  # raises again while Redis is unavailable
            self._unsettled = None
            self._written(todo, replies, clean=False)
            return
        if self._in_flight is None:
            return
        todo, calls, sent = self._in_flight
        self._in_flight, self._sending = None, set()
        try:
            replies = self._settle(calls, self._read_evalsha(len(calls), sent))
        except _Redirected:  # a stale slot map, now reloaded: re-send the write at once, synchronously
            self._unsettled = (todo, calls)
            try:
                self.finish_write()
            except StoreUnavailableError:
                self._dirty.update(todo)  # as below
                raise
            return
        except StoreUnavailableError:
            self._dirty.update(todo)  # not known to be written: written again later in any case
            self._unsettled = (todo, calls)  # and this write is re-sent before anything counts as done
            raise
        except BaseException:
            self._dirty.update(todo)
            raise
        self._written(todo, replies, clean=False)

    def write_in_flight(self) -> bool:
        return self._in_flight is not None or self._unsettled is not None

    def _all_written(self) -> bool:
        return not self._dirty and not self._sending and self._unsettled is None

    def _written(self, todo: list[str], replies: list[Any], *, clean: bool) -> None:
        """New versions from the write's replies; ``clean``: the users are written now (a
        synchronous write; a deferred one cleaned them when it was sent)."""
        stale: list[str] = []
        for u, r in zip(todo, replies, strict=True):
            if r == -1:
                stale.append(u)
            else:
                self._version[u] = int(r)
                if clean:
                    self._dirty.discard(u)
        if stale:
            for u in stale:
                self._dirty.discard(u)
                self._recent.pop(u, None)
                self._version.pop(u, None)
                self._gen_of.pop(u, None)
                self._decided.pop(u, None)
            self._table.forget(stale)
            raise StaleStateError(
                f"{len(stale)} user(s) were written by another worker since this one loaded them, or "
                f"under a newer consumer group generation than they were loaded under (this worker's is "
                f"now {self._generation}; e.g. {stale[0]!r}): this worker no longer owns their partition")

    def _write_args(self, users: list[str]) -> list[list[Any]]:
        rows = self._table.rows(users)
        scalars = rows.scalars.astype(SCALARS_DTYPE)
        has_state = scalars[:, L.S_MX] != L.NONE
        rings = iter(pack_rings(rows.rings[has_state]))  # the batch's rows at once, in order
        calls: list[list[Any]] = []
        version, writer, ttl, gen_of = self._version, self._writer, self._ttl_ms, self._gen_of
        for i, u in enumerate(users):
            args: list[Any] = [self.key_of(u), version.get(u, 0), writer, ttl, gen_of.get(u, 0)]
            if has_state[i]:
                args += [_F_RINGS, next(rings),
                         _F_STATE, scalars[i].tobytes() + _pack_tail(rows.bands[i], rows.fences[i])]
            pol = rows.policies[i]
            if pol:
                args += [_F_POLICY, orjson.dumps(pol)]
            calls.append(args)
        return calls

    def _load_script(self) -> None:
        sha = self._call(lambda c: c.script_load(STATE_LUA))  # RedisCluster: on every primary
        got = sha.decode() if isinstance(sha, bytes) else str(sha)
        if got != self._sha:
            raise RuntimeError(f"SCRIPT LOAD returned {got}, expected {self._sha}")

    def _evalsha_all(self, calls: list[list[Any]]) -> list[Any]:
        """EVALSHA per call (key first), pipelined; NOSCRIPT reloads the script and re-runs those."""
        return self._settle(calls, self._evalsha(calls))

    def _settle(self, calls: list[list[Any]], results: list[Any]) -> list[Any]:
        """Replies of EVALSHA calls: NOSCRIPT ones re-run after loading the script; errors raised."""
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            # SCRIPT FLUSH, a restart without persistence, a failover or a new primary: the script
            # did not run for these users, so load it again and run just those.
            self._load_script()
            for i, r in zip(missing, self._evalsha([calls[i] for i in missing]), strict=True):
                results[i] = r
        for r in results:
            if isinstance(r, Exception):
                if isinstance(r, _UNAVAILABLE):
                    raise _unavailable(r) from r
                raise r
        return results

    def _send_evalsha(self, calls: list[list[Any]]) -> list[tuple[redis.Redis, Any, list[int]]]:
        """Send the EVALSHA calls (then WAIT, if asked) without reading a reply: per connection
        written, (its client, the connection, the indexes of its calls) for :meth:`_read_evalsha`.
        Standalone: one connection. Cluster: one per node serving some of the calls' slots."""
        commands = [("EVALSHA", self._sha, 1, *args) for args in calls]
        client = self._client
        if not isinstance(client, redis.RedisCluster):
            conn = self._call(lambda c: _send_raw(c, commands + self._wait))
            return [(client, conn, list(range(len(calls))))]
        return self._call(lambda c: self._send_by_node(c, commands))  # type: ignore[no-any-return]

    def _send_by_node(self, client: redis.RedisCluster, commands: list[tuple[Any, ...]]
                      ) -> list[tuple[redis.Redis, Any, list[int]]]:
        if self._refresh_slots:
            client.nodes_manager.initialize()  # raises while no node answers: unavailable, retried
            self._refresh_slots = False
        groups: dict[str, tuple[redis.Redis, list[int]]] = {}
        for i, cmd in enumerate(commands):
            node = client.get_node_from_key(cmd[3])  # type: ignore[no-untyped-call]  # the primary of its slot
            if node.name not in groups:
                groups[node.name] = (node.redis_connection or client.get_redis_connection(node), [])
            groups[node.name][1].append(i)
        sent: list[tuple[redis.Redis, Any, list[int]]] = []
        try:
            for r, idx in groups.values():
                sent.append((r, _send_raw(r, [commands[i] for i in idx] + self._wait), idx))
        except BaseException:
            _discard(sent)
            self._refresh_slots = True
            raise
        return sent

    def _read_evalsha(self, n: int, sent: list[tuple[redis.Redis, Any, list[int]]]) -> list[Any]:
        """The replies of a sent write, in call order (errors as values).

        Raises:
            StoreUnavailableError: a connection failed, a reply was a redirection (the slot map is
                refreshed before the next send), or fewer replicas than asked acknowledged the write.
        """
        results: list[Any] = [None] * n
        short: list[str] = []
        extra = len(self._wait)
        for k, (r, conn, idx) in enumerate(sent):
            try:
                replies = _read_raw(r, conn, len(idx) + extra)
            except _UNAVAILABLE as e:
                _discard(sent[k + 1:])
                self._refresh_slots = True
                raise _unavailable(e) from e
            except BaseException:
                _discard(sent[k + 1:])
                raise
            if extra:
                acked = replies.pop()
                if isinstance(acked, Exception) or acked < self._wait[0][1]:
                    short.append(f"{_node_name(r)}: {acked}")
            for i, reply in zip(idx, replies, strict=True):
                results[i] = reply
        moved = next((x for x in results if isinstance(x, _REDIRECTED)), None)
        if moved is not None:
            self._refresh_slots = True
            raise _Redirected(f"Redis Cluster redirected a state write ({type(moved).__name__}: {moved}); "
                              "the slot map is reloaded and the write re-sent")
        if short:
            raise StoreUnavailableError(
                f"a state write was not acknowledged by {self._wait[0][1]} replica(s) within "
                f"{self._wait[0][2]} ms (acknowledged: {', '.join(short)}); it is re-sent — check the "
                "replicas (locally: deploy/local/stack status --cluster), or set RISKSTREAM_REDIS_WAIT_REPLICAS=0 "
                "to accept losing acknowledged writes on a failover")
        return results

    def _evalsha(self, calls: list[list[Any]]) -> list[Any]:
        """Send and read; a redirected write is re-sent once at once, with the reloaded slot map."""
        try:
            return self._read_evalsha(len(calls), self._send_evalsha(calls))
        except _Redirected:
            return self._read_evalsha(len(calls), self._send_evalsha(calls))

    def _hgetall_all(self, keys: Sequence[str | bytes]) -> list[dict[bytes, bytes]]:
        """HGETALL per key, pipelined (standalone: one write, hiredis replies, ≈ 3× less client CPU
        per user than redis-py's pipeline; the first touch of every user pays it)."""
        if isinstance(self._client, redis.RedisCluster):
            return self._call(lambda c: _pipelined(c, lambda p: [p.hgetall(k) for k in keys]))  # type: ignore[no-any-return]
        replies = self._call(lambda c: _raw_pipeline(c, [("HGETALL", k) for k in keys]))
        rows: list[dict[bytes, bytes]] = []
        for r in replies:
            if isinstance(r, Exception):
                raise r
            if isinstance(r, dict):  # RESP3
                rows.append(r)
            else:
                it = iter(r)
                rows.append(dict(zip(it, it)))
        return rows

    def _call(self, fn: Any) -> Any:
        try:
            return fn(self._client)
        except _UNAVAILABLE as e:
            raise _unavailable(e) from e


def _decode(user_id: str, rings: bytes, blob: bytes
            ) -> tuple[bytes, NDArray[np.int64], str | None, dict[str, tuple[int, set[int]]]]:
    """(dense rings, scalars, age band, fence) of a stored ``r`` and ``st``.

    Raises:
        ValueError: either field is corrupt (the message names the user).
    """
    try:
        return (unpack_rings(rings), *unpack_state(blob))
    except ValueError as e:
        raise ValueError(f"corrupt window state for user {user_id!r}: {e}") from e


def _discard(sent: list[tuple[redis.Redis, Any, list[int]]]) -> None:
    """Drop connections whose replies will never be read (they must not be reused)."""
    for r, conn, _ in sent:
        conn.disconnect()
        r.connection_pool.release(conn)


def _node_name(r: redis.Redis) -> str:
    kw = r.connection_pool.connection_kwargs
    return f"{kw.get('host')}:{kw.get('port')}"


def _check_policy_fields(fields: Mapping[str, str]) -> None:
    bad = [k for k in fields if not k.startswith(POLICY_PREFIX)]
    if bad:
        raise ValueError(f"policy field names must start with {POLICY_PREFIX!r} (the hash holds window state "
                         f"too): {bad[:3]}")


def _tls_failure(e: BaseException) -> bool:
    """A TLS handshake that failed (untrusted certificate, wrong host name), anywhere in the chain."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _unavailable(e: Exception) -> StoreUnavailableError | SecurityError:
    if isinstance(e, redis.AuthenticationError) or _tls_failure(e):
        return SecurityError(f"Redis refused the connection ({type(e).__name__}: {e}); check the user and password "
                             "of RISKSTREAM_REDIS_URL and RISKSTREAM_REDIS_SSL_CA_LOCATION (docs/security.md)")
    return StoreUnavailableError(
        f"Redis is unavailable ({type(e).__name__}: {e}); check that Redis is running and reachable "
        "(locally: deploy/local/stack status)"
    )
