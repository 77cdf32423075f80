--[[ confirm.lua — store a user's policy state and drop the outbox snapshots it consumed, atomically.

The Lua twin of MemoryWindowStore.confirm (stream/core/windows.py); layout: docs/state-layout.md.

KEYS (sharing the user's hash tag):
  KEYS[1]  <prefix>{<tag>}:s  state hash; only fields starting with "pol:" are written here
  KEYS[2]  <prefix>{<tag>}:o  outbox list written by apply.lua: header, ring, header, ring, ...
                              (a header starts with the snapshot's tick end, epoch ms, struct '>i8')

ARGV:
  [1]      through_ms   tick end, epoch ms: outbox snapshots with tick_end_ms <= through_ms are dropped
  [2]      ttl_s        TTL, seconds, refreshed on the keys written
  [3 ..]   field, value, field, value, ...   policy fields (each name must start with "pol:")

Reply: the number of outbox snapshots left.
]]

local call = redis.call
local hkey, okey = KEYS[1], KEYS[2]
local through = tonumber(ARGV[1])
local ttl = ARGV[2]
local nargs = #ARGV

for i = 3, nargs, 2 do
  if string.sub(ARGV[i], 1, 4) ~= 'pol:' then
    return redis.error_reply('confirm.lua: policy field names must start with "pol:", got ' .. ARGV[i])
  end
end
if nargs > 2 then
  call('HSET', hkey, unpack(ARGV, 3, nargs))
  call('EXPIRE', hkey, ttl)
end

local n = call('LLEN', okey)
if n == 0 then return 0 end
-- read only the small headers; the rings are copied only if some snapshots stay
local keep = {}
for i = 0, n - 2, 2 do
  if struct.unpack('>i8', call('LINDEX', okey, i)) > through then keep[#keep + 1] = i end
end
local left = #keep
if left == 0 then
  call('DEL', okey)
elseif 2 * left < n then
  local els = call('LRANGE', okey, 0, -1)
  local out = {}
  for k = 1, left do
    out[2 * k - 1] = els[keep[k] + 1]
    out[2 * k] = els[keep[k] + 2]
  end
  call('DEL', okey)
  call('RPUSH', okey, unpack(out))
  call('EXPIRE', okey, ttl)
end
return left
