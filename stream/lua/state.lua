-- state.lua — fenced write of one user's window and policy state (docs/state-layout.md).
--
-- The worker computes a user's new state with the core's update rule (stream/core/windows.py) and
-- writes it here after the batch's alerts were acknowledged. The write is a compare-and-set on the
-- user's version, so that only the owner of the current state can replace it: a worker whose copy
-- is stale (a zombie after a rebalance, a second worker on the same partition) is refused.
--
-- KEYS[1]  the user's state hash: <prefix>{<tag>}:u
-- ARGV[1]  the version the writer's copy derives from ("0": the user had no state hash)
-- ARGV[2]  the writer id (one per store instance)
-- ARGV[3]  TTL of the hash, milliseconds
-- ARGV[4..] field, value, ... to set: st (window state) and pol (policy state), see the layout spec
--
-- Reply: the new version (ARGV[1] + 1) when written; -1 when refused. A retry of this very write
-- (same version, same writer: its reply was lost) is accepted again and writes the same values.
local cur = redis.call('HGET', KEYS[1], 'v') or '0'
local base = tonumber(ARGV[1])
if cur ~= ARGV[1] then
  if tonumber(cur) ~= base + 1 or redis.call('HGET', KEYS[1], 'w') ~= ARGV[2] then
    return -1
  end
end
local new = base + 1
redis.call('HSET', KEYS[1], 'v', new, 'w', ARGV[2], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return new
