-- state.lua — fenced write of one user's window and policy state (docs/state-layout.md).
--
-- The worker computes a user's new state with the core's update rule (stream/core/windows.py) and
-- writes it here after the batch's alerts were acknowledged. The write is fenced, so that a worker
-- that lost the user's partition (a zombie after a rebalance) cannot replace the owner's state, and
-- the owner is not refused because of what a zombie wrote:
--
-- * by ownership epoch: the consumer group generation under which the writer's copy was loaded
--   (0: unknown). A write from an older generation than the stored one is refused; a write from a
--   newer one replaces the state whatever its version (the stored state then comes from a zombie:
--   everything it holds that the writer's copy lacks is uncommitted and redelivered to the writer);
-- * within one generation, by version: a compare-and-set on the user's version, so only a copy of
--   the current state can replace it; a retry of this very write (its reply was lost: stored version
--   = ARGV[1] + 1, written by the same writer) is accepted again.
--
-- KEYS[1]  the user's state hash: <prefix>{<tag>}:u
-- ARGV[1]  the version the writer's copy derives from ("0": the user had no state hash)
-- ARGV[2]  the writer id (one per store instance)
-- ARGV[3]  TTL of the hash, milliseconds
-- ARGV[4]  the writer's generation (a non-negative integer; a hash without `g` is generation 0)
-- ARGV[5..] field, value, ... to set: st (window state) and pol (policy state), see the layout spec
--
-- Reply: the new version (ARGV[1] + 1) when written; -1 when refused. The stored generation never
-- decreases; `g` is written only by writers with a generation above 0.
local cur = redis.call('HGET', KEYS[1], 'v') or '0'
local gen = tonumber(redis.call('HGET', KEYS[1], 'g') or '0')
local mine = tonumber(ARGV[4])
local base = tonumber(ARGV[1])
if mine < gen then
  return -1
end
if mine == gen and cur ~= ARGV[1] then
  if tonumber(cur) ~= base + 1 or redis.call('HGET', KEYS[1], 'w') ~= ARGV[2] then
    return -1
  end
end
local new = base + 1
if mine > 0 then  -- one HSET either way: each call a script makes costs Redis 1–3 µs
  redis.call('HSET', KEYS[1], 'g', ARGV[4], 'v', new, 'w', ARGV[2], unpack(ARGV, 5))
else
  redis.call('HSET', KEYS[1], 'v', new, 'w', ARGV[2], unpack(ARGV, 5))
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return new
