"""The poison ledger on the real Redis: counts survive a new ledger (a restart) and expire."""

from __future__ import annotations

import uuid

import redis

from stream.state.poison import RedisPoisonLedger


def test_counts_survive_a_restart_and_carry_a_ttl(stack):
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    prefix = f"it{uuid.uuid4().hex[:10]}:rs:"
    try:
        a = RedisPoisonLedger(client, prefix)
        a.suspect([("t.in", 2, 7), ("t.in", 2, 9)], "ValueError: boom")
        assert a.attempt(("t.in", 2, 7)) == 1
        b = RedisPoisonLedger(client, prefix)  # a restarted worker
        assert b.attempts("t.in", 2) == {7: 1, 9: 0} and b.last_error("t.in", 2) == "ValueError: boom"
        b.suspect([("t.in", 2, 7)], "ValueError: again")  # an existing count is kept
        assert b.attempt(("t.in", 2, 7)) == 2
        b.clear([("t.in", 2, 9)])
        assert b.attempts("t.in", 2) == {7: 2} and b.attempts("t.in", 3) == {}
        assert 0 < client.ttl(f"{prefix}poison:t.in:2") <= 8 * 86_400
    finally:
        for k in client.scan_iter(match=f"{prefix}*"):
            client.delete(k)
