"""Attempt counts of suspect input messages, kept across restarts (poison-message quarantine).

A message is *suspect* once a pipeline step that contained it (or released its events) failed with
an error that is not an unavailable service. The pipeline processes a suspect alone, after adding
one to its count here; past ``RISKSTREAM_POISON_MAX_ATTEMPTS`` it sends it to the DLQ (reason
``poison``) instead, so a crash loop caused by one message ends by itself. A suspect that completes
is cleared. Counts live in one small hash per input topic-partition, ``<prefix>poison:<topic>:<p>``
(field: the offset; ``err``: the last error), with a TTL (docs/state-layout.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Final, Protocol

from stream.state.redis_store import _UNAVAILABLE, _unavailable

MsgId = tuple[str, int, int]  # topic, partition, offset (stream.live.protocol.MsgId)

__all__ = ["POISON_TTL_S", "MemoryPoisonLedger", "PoisonLedger", "RedisPoisonLedger"]

POISON_TTL_S: Final = 8 * 86_400  # the input topics keep a message 8 days: so long can it come back


class PoisonLedger(Protocol):
    def attempts(self, topic: str, partition: int) -> dict[int, int]:
        """The suspects of a topic-partition: offset -> attempts so far."""
        ...

    def last_error(self, topic: str, partition: int) -> str:
        ...

    def suspect(self, ids: Iterable[MsgId], error: str) -> None:
        """Mark messages suspect (their counts unchanged if they already are)."""
        ...

    def attempt(self, mid: MsgId) -> int:
        """Count one more attempt of a suspect before it is processed; the new count."""
        ...

    def clear(self, ids: Iterable[MsgId]) -> None:
        ...


class MemoryPoisonLedger:
    """The in-memory twin (tests; a restart is a new pipeline with the same ledger)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], dict[int, int]] = defaultdict(dict)
        self.errors: dict[tuple[str, int], str] = {}

    def attempts(self, topic: str, partition: int) -> dict[int, int]:
        return dict(self.counts.get((topic, partition), {}))

    def last_error(self, topic: str, partition: int) -> str:
        return self.errors.get((topic, partition), "")

    def suspect(self, ids: Iterable[MsgId], error: str) -> None:
        for t, p, off in ids:
            self.counts[(t, p)].setdefault(off, 0)
            self.errors[(t, p)] = error

    def attempt(self, mid: MsgId) -> int:
        t, p, off = mid
        c = self.counts[(t, p)]
        c[off] = c.get(off, 0) + 1
        return c[off]

    def clear(self, ids: Iterable[MsgId]) -> None:
        for t, p, off in ids:
            self.counts.get((t, p), {}).pop(off, None)


class RedisPoisonLedger:
    def __init__(self, client: Any, key_prefix: str, ttl_s: int = POISON_TTL_S) -> None:
        self._client, self._prefix, self._ttl_s = client, key_prefix, ttl_s

    def _key(self, topic: str, partition: int) -> str:
        return f"{self._prefix}poison:{topic}:{partition}"

    def attempts(self, topic: str, partition: int) -> dict[int, int]:
        raw = self._call(lambda c: c.hgetall(self._key(topic, partition)))
        return {int(k): int(v) for k, v in raw.items() if k.isdigit()}

    def last_error(self, topic: str, partition: int) -> str:
        raw = self._call(lambda c: c.hget(self._key(topic, partition), "err"))
        return "" if raw is None else raw.decode("utf-8", "replace")

    def suspect(self, ids: Iterable[MsgId], error: str) -> None:
        by_key: dict[str, list[int]] = defaultdict(list)
        for t, p, off in ids:
            by_key[self._key(t, p)].append(off)

        def run(c: Any) -> None:
            pipe = c.pipeline(transaction=False)
            for key, offs in by_key.items():
                for off in offs:
                    pipe.hincrby(key, str(off), 0)  # creates the field at 0, keeps a count
                pipe.hset(key, "err", error[:300])
                pipe.expire(key, self._ttl_s)
            pipe.execute()
        self._call(run)

    def attempt(self, mid: MsgId) -> int:
        t, p, off = mid
        key = self._key(t, p)

        def run(c: Any) -> int:
            pipe = c.pipeline(transaction=False)
            pipe.hincrby(key, str(off), 1)
            pipe.expire(key, self._ttl_s)
            return int(pipe.execute()[0])
        return self._call(run)  # type: ignore[no-any-return]

    def clear(self, ids: Iterable[MsgId]) -> None:
        by_key: dict[str, list[str]] = defaultdict(list)
        for t, p, off in ids:
            by_key[self._key(t, p)].append(str(off))

        def run(c: Any) -> None:
            pipe = c.pipeline(transaction=False)
            for key, fields in by_key.items():
                pipe.hdel(key, *fields)
            pipe.execute()
        if by_key:
            self._call(run)

    def _call(self, fn: Any) -> Any:
        try:
            return fn(self._client)
        except _UNAVAILABLE as e:
            raise _unavailable(e) from e
