--[[ apply.lua — apply one user's items to their rolling windows, atomically.

The Lua twin of stream/core/windows.py (_UserState.apply_one/_advance/_close_session/seen/mark and
the per-user loop of MemoryWindowStore.apply). Both must give byte-identical rings and identical
scalars, snapshots and results; tests/contract and tests/integration/test_redis_store.py hold them
to it. The key layout and every encoding below are specified in docs/state-layout.md.

There is no confirm script: RedisWindowStore.confirm is one native HSET of the state hash (the
policy fields and "ob", see below), and this script drops what it confirmed, first thing.

KEYS (all carry the user's hash tag, so one call touches one Redis Cluster slot):
  KEYS[1]  <prefix>{<tag>}:w  ring string: RING_WORDS big-endian u32 words (RING_BYTES bytes)
  KEYS[2]  <prefix>{<tag>}:s  hash: scalars ss se sd lc hh dh fd tz mx pt lt (absent = none), the
                              age band "ab", offset fences "f:<topic>:<partition>", and the outbox
                              fields: "lv" tick end of the live snapshot (absent = none), "om"
                              newest tick end among the snapshots in the outbox list (0 = none),
                              "ob" confirmed-through tick end (written by confirm; lowered here
                              only, see below). Fields "pol:*" belong to the policy layer: never
                              read or written here.
  KEYS[3]  <prefix>{<tag>}:o  outbox list: two elements per stored (decided, unconfirmed) snapshot,
                              in decision order: its header (below), then its ring bytes
  KEYS[4]  <prefix>{<tag>}:f  fence spill hash, "<topic>:<partition>" -> fence, for the rare fence
                              longer than FENCE_INLINE_MAX (the state hash then holds
                              "<frontier>,@"), so that the state hash stays a small listpack

The outbox is the stored snapshots (the list) followed by at most one live snapshot:
  * A tick decided at the END of a call (the watermark passed it) is "live": only its tick end is
    kept ("lv"); its header is the current scalars (with pt = its tick) and age band, its ring the
    current ring, so the reply builds it from those (one GET). The first item of a later call that
    changes the state (not a duplicate, not rejected) first materialises it: header + a copy of
    the ring pushed to the list. A live snapshot always follows every stored one, and there is at
    most one: a new one needs a pending tick, which only an item that changes the state sets, and
    that item materialised the previous one.
  * A tick decided by an event of the call is stored at once (the ring moves on): header + copy.
  * Drop: when "ob" is present, the snapshots with tick end <= ob go before anything else: a live
    one; the whole list when om <= ob (one DEL, no header read: the usual case), else those whose
    header (read with LINDEX) says so (the list trimmed, or rebuilt if they are not the oldest).
    "ob" stays: every snapshot left is > ob, and a snapshot decided later with a tick end <= ob (an
    in-order event older than a decided tick) lowers ob to its tick end - 1, so a confirm only ever
    covers snapshots decided before it.
  * "om" is present once this script has run for the user; if it is absent on an existing state,
    the list was written by the previous version of this script: its headers are read once.

ARGV (decimal integers unless said otherwise):
  [1]  watermark_ms        partition watermark, event time, epoch ms
  [2]  ttl_s               TTL of the keys, seconds; set on every call
  [3]  max_fence_offsets   applied offsets remembered per topic-partition (MAX_FENCE_OFFSETS)
  [4]  items               binary, ITEM_BYTES = 27 bytes per item, in application order, each
                           big-endian struct '>i8BI4hHHi8' (Python struct '>qBIhHHq'):
         ts_ms      i8  event time, epoch ms
         code       B   category_index*4 + late*2 + is_view  (category_index: layout.CATEGORY_INDEX)
         dwell_ms   I4  dwell of a view, ms (0 for a click)
         tz         h   tz_offset_min, minutes; -32768 = absent
         age_band   H   1-based index into the age-band strings below; 0 = absent
         tp         H   1-based index into the topic-partition list; 0 = no Kafka position
         offset     i8  Kafka offset when tp > 0, else 0
  [5]  ntp                 number of topic-partitions named next
  [6 .. 5+2*ntp]           per topic-partition: name "topic:partition" (string), then its commit
                           floor (lowest offset not committed yet) or "" when the caller has none
  [6+2*ntp ..]             the age-band strings the items refer to (each as given, may be empty)

Reply: {pending_tick, duplicates, rejected, header, ring, header, ring, ...}
  pending_tick  tick number (ts_ms // TICK_MS) still pending after the call, or -1
  duplicates    number of items the offset fence skipped
  rejected      flat array {item_index (0-based), reason, ...}; reason is "too_late"
  header, ring  the whole outbox after the call, in decision order: the stored snapshots, then
                the live one if any: header = struct '>i8i8i8i8i8i8i8i8i8i8i8i8B' of tick_end_ms,
                ss, se, sd, lc, hh, dh, fd, tz, mx, pt, lt (-1 = none) and flags (1: the user has
                an age band; 2: this is the live snapshot, set in replies only, never stored),
                followed by the age band's bytes; ring = RING_BYTES bytes

Numbers are doubles: every quantity here is an integer below 2^53 (epoch ms, offsets, counters
before saturation), so +, -, * and floor(a / b) are exact and equal Python's int arithmetic, and
Lua's % is floored like Python's. Rounding is floor(x + 0.5); logarithms are math.log(1 + x) and
squares x ^ 2, the same libm log and pow the Python twin calls.

Written for Redis CPU: per-call costs dominate small calls, and in Redis' Lua every table, closure,
upvalue and string is a GC allocation, so the common path allocates little (no closures over
state; ring increments coalesced per word into one BITFIELD; large strings only for snapshots).
]]

-- layout constants (pinned against stream/core/layout.py by tests/integration/test_redis_store.py)
local TICK_MS = 60000
local TZ_BIAS = 1000           -- the tz scalar holds tz_offset_min + TZ_BIAS (-1 stays "none")
local SESSION_GAP_MS = 30000
local WAKING_GAP_MAX_MS = 14400000
local SHORT_SESSION_MS = 15000
local LONG_SESSION_MS = 1800000
local HOUR_MS = 3600000
local DAY_MS = 86400000
local HOUR_SLOTS = 168
local DAY_SLOTS = 28
local DETAIL_SLOTS = 8
local LONGEST_WINDOW_MS = 2419200000
local LOG_SCALE = 256
local SQ_UNIT_S2 = 100
local NH, ND, NX = 2, 4, 22
local H_BASE, D_BASE, X_BASE = 0, 336, 448
local RING_WORDS = 624
local H_ACTIVE, H_SESSIONS = 0, 1
local D_ACTIVE, D_SESSIONS, D_CLOSED, D_LOGLEN = 0, 1, 2, 3
local X_CLOSED, X_SHORT15, X_LONG30, X_LEN_S, X_LOGLEN, X_LOGLEN_SQ = 0, 1, 2, 3, 4, 5
local X_GAP_N, X_GAP_S, X_GAP_SQ, X_GAP_LOG, X_RMSSD_N, X_RMSSD_SQ = 6, 7, 8, 9, 10, 11
local X_CLICKS, X_VIEWS, X_DWELL_S, X_CAT0 = 12, 13, 14, 15
local SCALARS = {'ss', 'se', 'sd', 'lc', 'hh', 'dh', 'fd', 'tz', 'mx', 'pt', 'lt'}
local ITEM = '>i8BI4hHHi8'
local ITEM_BYTES = 27
local HEAD = '>i8i8i8i8i8i8i8i8i8i8i8i8B'
local TZ_ABSENT = -32768
local FENCE_INLINE_MAX = 64  -- Redis' default hash-max-listpack-value
local Z64 = '\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0'

local call = redis.call
local floor, log = math.floor, math.log
local tonumber, pairs, unpack = tonumber, pairs, unpack
local srep, sfmt, ssub = string.rep, string.format, string.sub
local sunpack, spack = struct.unpack, struct.pack

-- Write the coalesced increments (word -> sum) with one saturating BITFIELD. All increments are
-- >= 0, so one saturating sum per word equals the twin's saturating sequence of adds.
local function flush(key, pend)
  local args, n = {}, 0
  for w, v in pairs(pend) do
    args[n + 1] = 'INCRBY'
    args[n + 2] = 'u32'
    args[n + 3] = w * 32
    args[n + 4] = v
    n = n + 4
  end
  if n > 0 then redis.call('BITFIELD', key, 'OVERFLOW', 'SAT', unpack(args, 1, n)) end
end

-- Zero the slots of buckets b0..b1 (at most `slots` of them) of one ring; pending increments of
-- those words are void. Called only when a ring head moves. (Helpers take everything as
-- arguments: an upvalue is one more allocation per call.)
local function zero_buckets(key, pend, z64, base, nf, slots, b0, b1)
  local count = b1 - b0 + 1
  if count <= 0 then return end
  local s0 = b0 % slots
  local r1 = s0 + count <= slots and count or slots - s0
  local ranges = {base + s0 * nf, r1 * nf, base, (count - r1) * nf}
  for r = 1, 3, 2 do
    local w0, nw = ranges[r], ranges[r + 1]
    if nw > 0 then
      for w in pairs(pend) do
        if w >= w0 and w < w0 + nw then pend[w] = nil end
      end
      local nb = nw * 4
      redis.call('SETRANGE', key, w0 * 4, string.rep(z64, math.floor(nb / 64)) .. string.sub(z64, 1, nb % 64))
    end
  end
end

local rkey, hkey, okey, fkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local wm = tonumber(ARGV[1])
local ttl = ARGV[2]
local max_fence = tonumber(ARGV[3])
local blob = ARGV[4]
local ntp = tonumber(ARGV[5])
local band0 = 5 + 2 * ntp  -- ARGV[band0 + k] is age band k

-- ---- load ------------------------------------------------------------------------------------
-- h[1..11] scalars, h[12] age band, h[13] ob, h[14] lv, h[15] om, h[15 + j] fence of tp j
local ring_alive = call('EXPIRE', rkey, ttl) == 1
local h
local fnames
if ntp == 0 then
  h = call('HMGET', hkey, 'ss', 'se', 'sd', 'lc', 'hh', 'dh', 'fd', 'tz', 'mx', 'pt', 'lt', 'ab', 'ob', 'lv', 'om')
elseif ntp == 1 then
  fnames = {'f:' .. ARGV[6]}
  h = call('HMGET', hkey, 'ss', 'se', 'sd', 'lc', 'hh', 'dh', 'fd', 'tz', 'mx', 'pt', 'lt', 'ab', 'ob', 'lv', 'om',
    fnames[1])
elseif ntp == 2 then
  fnames = {'f:' .. ARGV[6], 'f:' .. ARGV[8]}
  h = call('HMGET', hkey, 'ss', 'se', 'sd', 'lc', 'hh', 'dh', 'fd', 'tz', 'mx', 'pt', 'lt', 'ab', 'ob', 'lv', 'om',
    fnames[1], fnames[2])
else
  fnames = {}
  local fields = {'ss', 'se', 'sd', 'lc', 'hh', 'dh', 'fd', 'tz', 'mx', 'pt', 'lt', 'ab', 'ob', 'lv', 'om'}
  for j = 1, ntp do
    fnames[j] = 'f:' .. ARGV[4 + 2 * j]
    fields[15 + j] = fnames[j]
  end
  h = call('HMGET', hkey, unpack(fields, 1, 15 + ntp))
end
if not (ring_alive and h[11]) then
  -- No state, or half of one (a ring without scalars, scalars without their ring, e.g. after an
  -- eviction; or only what a confirm wrote for a user without state): start the user afresh,
  -- keeping the policy layer's fields.
  local stale = false
  for j = 1, 15 + ntp do
    if h[j] then stale = true; h[j] = false end
  end
  if stale then
    local del = {}
    for _, k in ipairs(call('HKEYS', hkey)) do
      if ssub(k, 1, 4) ~= 'pol:' then del[#del + 1] = k end
    end
    if #del > 0 then call('HDEL', hkey, unpack(del)) end
  end
  call('SET', rkey, srep(Z64, RING_WORDS * 4 / 64), 'EX', ttl)
  call('DEL', okey, fkey)
end
local o = {}  -- the stored scalars (-1 = absent), to write back only what changed
for j = 1, 11 do o[j] = h[j] and tonumber(h[j]) or -1 end
local ss, se, sd, lc, hh, dh, fd, tz, mx, pt = o[1], o[2], o[3], o[4], o[5], o[6], o[7], o[8], o[9], o[10]
local lt = h[11] and o[11] or 0
local ab = h[12]

-- ---- outbox: drop what confirm acknowledged ------------------------------------------------------
-- `live`: tick end of the live snapshot (false if none), decided at the end of an earlier call; its
-- scalars, age band and ring are the current ones. `om`: the newest tick end among the snapshots
-- stored in the list, 0 when there is none; written by every call (absent on an existing state:
-- the list was written by the previous version of this script, without it: read once). `ob`
-- (written by confirm): every snapshot with tick end <= ob goes now; afterwards every snapshot left
-- or decided later is > ob.
local live = h[14] and tonumber(h[14]) or false
local om, om0
if h[15] then
  om = tonumber(h[15])
  om0 = om
else
  om, om0 = 0, -1
  if h[11] then
    local n = call('LLEN', okey)
    for i = 0, n - 2, 2 do
      local te = sunpack('>i8', call('LINDEX', okey, i))
      if te > om then om = te end
    end
  end
end
local live0 = live
local ob = h[13] and tonumber(h[13])
local ob0 = ob
if ob then
  if live and live <= ob then live = false end
  if om > 0 then
    if om <= ob then
      call('DEL', okey)  -- the usual case: all of them go, no header is read
      om = 0
    else
      local n = call('LLEN', okey)
      local keep, nk = {}, 0
      om = 0
      for i = 0, n - 2, 2 do
        local te = sunpack('>i8', call('LINDEX', okey, i))  -- only the small headers are read
        if te > ob then
          nk = nk + 1
          keep[nk] = i
          if te > om then om = te end
        end
      end
      if nk == 0 then
        call('DEL', okey)
      elseif 2 * nk < n then
        if keep[1] == n - 2 * nk and keep[nk] == n - 2 then
          call('LTRIM', okey, keep[1], -1)  -- the oldest ones go
        else
          local els = call('LRANGE', okey, 0, -1)
          local out = {}
          for k = 1, nk do
            out[2 * k - 1] = els[keep[k] + 1]
            out[2 * k] = els[keep[k] + 2]
          end
          call('DEL', okey)
          call('RPUSH', okey, unpack(out))
        end
      end
    end
  end
end
local listed = om > 0  -- the list holds snapshots from earlier calls

-- Offset fences, one record per topic-partition: {frontier, applied set, count, dirty, heap,
-- spilled}. Stored as "frontier[,d1,d2,...]": the applied offsets above the frontier as ascending
-- deltas; inline in the state hash, or in the spill hash when longer than FENCE_INLINE_MAX.
local fences
if ntp > 0 then
  fences = {}
  for j = 1, ntp do
    local v = h[15 + j]
    local frontier, set, cnt, dirty, spilled = -1, {}, 0, false, false
    if v and string.byte(v, -1) == 64 then  -- "<frontier>,@": the fence is in the spill hash
      spilled = true
      frontier = tonumber(ssub(v, 1, -3))
      v = call('HGET', fkey, ARGV[4 + 2 * j])  -- gone only after its TTL: then nothing above
      -- the frontier can still be redelivered (TTL >> the topics' retention)
    end
    if v then
      local c1 = string.find(v, ',', 1, true)
      if c1 then
        frontier = tonumber(ssub(v, 1, c1 - 1))
        local prev = frontier
        for tok in string.gmatch(ssub(v, c1 + 1), '%d+') do
          prev = prev + tonumber(tok)
          set[prev] = true
          cnt = cnt + 1
        end
      else
        frontier = tonumber(v)
      end
    end
    local floor_s = ARGV[5 + 2 * j]
    if floor_s ~= '' then
      -- seen(): a commit floor above the frontier moves it up and prunes what it passed
      local f1 = tonumber(floor_s) - 1
      if f1 > frontier then
        frontier = f1
        dirty = true
        if cnt > 0 then
          local kept = {}
          cnt = 0
          for off in pairs(set) do
            if off > f1 then kept[off] = true; cnt = cnt + 1 end
          end
          set = kept
        end
      end
    end
    fences[j] = {frontier, set, cnt, dirty, false, spilled}
  end
end

-- ---- items -------------------------------------------------------------------------------------
local pend = {}
local new = nil        -- list elements (header, ring, ...) this call appends to the outbox
local rejected = {}
local dups = 0
local index = 0
for pos = 1, #blob, ITEM_BYTES do
  local ts, code, dwell, tzi, abi, tpi, off = sunpack(ITEM, blob, pos)
  local rec
  local skip = false
  if tpi > 0 then
    rec = fences[tpi]
    if off <= rec[1] or rec[2][off] then
      dups = dups + 1
      skip = true
    end
  end
  if skip then
    -- a duplicate: nothing to do
  elseif mx ~= -1 and ts < mx - LONGEST_WINDOW_MS then
    rejected[#rejected + 1] = index
    rejected[#rejected + 1] = 'too_late'
  else
    if live then
      -- the first item that changes the state: the live snapshot is materialised first, its header
      -- and a copy of the ring (both unchanged since the call that decided it)
      local head = spack(HEAD, live, ss, se, sd, lc, hh, dh, fd, tz, mx, live / TICK_MS - 1, lt, ab and 1 or 0)
      if ab then head = head .. ab end
      new = new or {}
      new[#new + 1] = head
      new[#new + 1] = call('GET', rkey)
      if live > om then om = live end
      live = false
    end
    local is_view = code % 2 == 1
    local late = code % 4 >= 2
    local tick = floor(ts / TICK_MS)
    if not late and pt ~= -1 and tick > pt then
      -- the event decides the pending tick: snapshot the state as it is before the event
      flush(rkey, pend)
      pend = {}
      local te = (pt + 1) * TICK_MS
      local head = spack(HEAD, te, ss, se, sd, lc, hh, dh, fd, tz, mx, pt, lt, ab and 1 or 0)
      if ab then head = head .. ab end
      new = new or {}
      new[#new + 1] = head
      new[#new + 1] = call('GET', rkey)
      if te > om then om = te end
      if ob and te <= ob then ob = te - 1 end  -- decided after the confirm: not covered by it
      pt = -1
    end
    -- tz and age band land after the decided snapshot (it is the state as of the tick end)
    local tzv
    if tzi ~= TZ_ABSENT then
      tz = tzi + TZ_BIAS
      tzv = tzi
    elseif tz ~= -1 then
      tzv = tz - TZ_BIAS
    else
      tzv = 0
    end
    if abi > 0 then ab = ARGV[band0 + abi] end
    local lms = ts + tzv * 60000
    local hb = floor(lms / HOUR_MS)
    local db = floor(lms / DAY_MS)
    -- _advance: zero the slots the ring heads move onto (a ring never written to is all zeros)
    if hh == -1 or hb > hh then
      if hh ~= -1 then
        local lo = hb - HOUR_SLOTS
        if hh > lo then lo = hh end
        zero_buckets(rkey, pend, Z64, H_BASE, NH, HOUR_SLOTS, lo + 1, hb)
      end
      hh = hb
    end
    if dh == -1 or db > dh then
      if dh ~= -1 then
        local lo = db - DAY_SLOTS
        if dh > lo then lo = dh end
        zero_buckets(rkey, pend, Z64, D_BASE, ND, DAY_SLOTS, lo + 1, db)
        lo = db - DETAIL_SLOTS
        if dh > lo then lo = dh end
        zero_buckets(rkey, pend, Z64, X_BASE, NX, DETAIL_SLOTS, lo + 1, db)
      end
      dh = db
    end
    if not is_view then dwell = 0 end
    local xi = X_BASE + (db % DETAIL_SLOTS) * NX
    local inc, w
    if late then
      inc = dwell
      lt = lt + 1
    else
      local fin = ts + dwell
      if se == -1 or ts > se + SESSION_GAP_MS then
        if se ~= -1 then
          -- _close_session
          local len_ms = se - ss
          local len_s = len_ms / 1000.0
          local l1 = log(1.0 + len_s)
          local lg = floor(LOG_SCALE * l1 + 0.5)
          if sd > dh - DETAIL_SLOTS then
            local x = X_BASE + (sd % DETAIL_SLOTS) * NX
            pend[x + X_CLOSED] = (pend[x + X_CLOSED] or 0) + 1
            if len_ms < SHORT_SESSION_MS then pend[x + X_SHORT15] = (pend[x + X_SHORT15] or 0) + 1 end
            if len_ms >= LONG_SESSION_MS then pend[x + X_LONG30] = (pend[x + X_LONG30] or 0) + 1 end
            pend[x + X_LEN_S] = (pend[x + X_LEN_S] or 0) + floor(len_ms / 1000)
            pend[x + X_LOGLEN] = (pend[x + X_LOGLEN] or 0) + lg
            pend[x + X_LOGLEN_SQ] = (pend[x + X_LOGLEN_SQ] or 0) + floor(LOG_SCALE * l1 ^ 2 + 0.5)
            if lc ~= -1 then
              local d = (len_ms - lc) / 1000.0
              pend[x + X_RMSSD_N] = (pend[x + X_RMSSD_N] or 0) + 1
              pend[x + X_RMSSD_SQ] = (pend[x + X_RMSSD_SQ] or 0) + floor(d * d / SQ_UNIT_S2 + 0.5)
            end
          end
          if sd > dh - DAY_SLOTS then
            local d = D_BASE + (sd % DAY_SLOTS) * ND
            pend[d + D_CLOSED] = (pend[d + D_CLOSED] or 0) + 1
            pend[d + D_LOGLEN] = (pend[d + D_LOGLEN] or 0) + lg
          end
          lc = len_ms
          local gap = ts - se
          if gap < WAKING_GAP_MAX_MS then
            local g = gap / 1000.0
            pend[xi + X_GAP_N] = (pend[xi + X_GAP_N] or 0) + 1
            pend[xi + X_GAP_S] = (pend[xi + X_GAP_S] or 0) + floor(gap / 1000)
            pend[xi + X_GAP_SQ] = (pend[xi + X_GAP_SQ] or 0) + floor(g * g / SQ_UNIT_S2 + 0.5)
            pend[xi + X_GAP_LOG] = (pend[xi + X_GAP_LOG] or 0) + floor(LOG_SCALE * log(1.0 + g) + 0.5)
          end
        end
        ss = ts
        se = fin
        sd = db
        inc = dwell
        w = H_BASE + (hb % HOUR_SLOTS) * NH + H_SESSIONS
        pend[w] = (pend[w] or 0) + 1
        w = D_BASE + (db % DAY_SLOTS) * ND + D_SESSIONS
        pend[w] = (pend[w] or 0) + 1
      elseif fin > se then
        inc = fin - se
        se = fin
      else
        inc = 0
      end
      if pt == -1 or tick > pt then pt = tick end
    end
    if inc ~= 0 then
      if hb > hh - HOUR_SLOTS then
        w = H_BASE + (hb % HOUR_SLOTS) * NH + H_ACTIVE
        pend[w] = (pend[w] or 0) + inc
      end
      if db > dh - DAY_SLOTS then
        w = D_BASE + (db % DAY_SLOTS) * ND + D_ACTIVE
        pend[w] = (pend[w] or 0) + inc
      end
    end
    if db > dh - DETAIL_SLOTS then
      if inc ~= 0 then
        w = xi + X_CAT0 + floor(code / 4)
        pend[w] = (pend[w] or 0) + inc
      end
      if is_view then
        pend[xi + X_VIEWS] = (pend[xi + X_VIEWS] or 0) + 1
        if dwell >= 1000 then pend[xi + X_DWELL_S] = (pend[xi + X_DWELL_S] or 0) + floor(dwell / 1000) end
      else
        pend[xi + X_CLICKS] = (pend[xi + X_CLICKS] or 0) + 1
      end
    end
    if mx == -1 or ts > mx then mx = ts end
    if fd == -1 or db < fd then fd = db end
    if rec then
      -- mark(): remember the offset; past the cap keep the newest, everything below is applied
      local set = rec[2]
      set[off] = true
      local cnt = rec[3] + 1
      rec[4] = true
      local hp = rec[5]
      if hp then
        local n = #hp + 1
        while n > 1 do
          local p = floor(n / 2)
          if hp[p] <= off then break end
          hp[n] = hp[p]
          n = p
        end
        hp[n] = off
      end
      if cnt > max_fence then
        if not hp then
          hp = {}
          for x in pairs(set) do hp[#hp + 1] = x end
          table.sort(hp)  -- an ascending array is a min-heap
          rec[5] = hp
        end
        -- pop the smallest offset
        local top, n = hp[1], #hp
        local x = hp[n]
        hp[n] = nil
        n = n - 1
        if n > 0 then
          local k = 1
          while true do
            local c = 2 * k
            if c > n then break end
            if c < n and hp[c + 1] < hp[c] then c = c + 1 end
            if hp[c] >= x then break end
            hp[k] = hp[c]
            k = c
          end
          hp[k] = x
        end
        set[top] = nil
        cnt = cnt - 1
        if hp[1] - 1 > rec[1] then rec[1] = hp[1] - 1 end
      end
      rec[3] = cnt
    end
  end
  index = index + 1
end

-- the pending tick is decided at the end of the call once the watermark has passed its end: the
-- state is its snapshot, so it becomes the live snapshot (no copy). There was none: an earlier live
-- snapshot leaves pt at -1, and the item that set pt since materialised it.
flush(rkey, pend)
if pt ~= -1 and (pt + 1) * TICK_MS <= wm then
  live = (pt + 1) * TICK_MS
  if ob and live <= ob then ob = live - 1 end  -- decided after the confirm: not covered by it
  pt = -1
end

-- ---- store -------------------------------------------------------------------------------------
local cur = {ss, se, sd, lc, hh, dh, fd, tz, mx, pt, lt}
local hs, nhs, hd = {}, 0, nil
for j = 1, 11 do
  local v = cur[j]
  if v ~= o[j] then
    if v == -1 then
      hd = hd or {}
      hd[#hd + 1] = SCALARS[j]
    else
      hs[nhs + 1] = SCALARS[j]
      hs[nhs + 2] = v
      nhs = nhs + 2
    end
  end
end
if ab ~= h[12] then
  hs[nhs + 1] = 'ab'
  hs[nhs + 2] = ab
  nhs = nhs + 2
end
for j = 1, ntp do
  local rec = fences[j]
  if rec[4] then
    local v
    if rec[3] == 0 then
      v = sfmt('%d', rec[1])
    elseif rec[3] == 1 then
      local x = next(rec[2])
      v = sfmt('%d,%d', rec[1], x - rec[1])
    else
      local arr = {}
      for x in pairs(rec[2]) do arr[#arr + 1] = x end
      table.sort(arr)
      local prev = rec[1]
      local parts = {sfmt('%d', prev)}
      for k = 1, #arr do
        parts[k + 1] = sfmt('%d', arr[k] - prev)
        prev = arr[k]
      end
      v = table.concat(parts, ',')
    end
    if #v > FENCE_INLINE_MAX then
      call('HSET', fkey, ARGV[4 + 2 * j], v)
      call('EXPIRE', fkey, ttl)
      v = sfmt('%d,@', rec[1])
    elseif rec[6] then
      call('HDEL', fkey, ARGV[4 + 2 * j])
    end
    hs[nhs + 1] = fnames[j]
    hs[nhs + 2] = v
    nhs = nhs + 2
  end
end
local nnew = new and #new or 0
if nnew > 0 then call('RPUSH', okey, unpack(new)) end
if live ~= live0 then
  if live then
    hs[nhs + 1] = 'lv'
    hs[nhs + 2] = live
    nhs = nhs + 2
  else
    hd = hd or {}
    hd[#hd + 1] = 'lv'
  end
end
if om ~= om0 then
  hs[nhs + 1] = 'om'
  hs[nhs + 2] = om
  nhs = nhs + 2
end
if ob ~= ob0 then
  hs[nhs + 1] = 'ob'
  hs[nhs + 2] = ob
  nhs = nhs + 2
end
if nhs > 0 then call('HSET', hkey, unpack(hs, 1, nhs)) end
if hd then call('HDEL', hkey, unpack(hd)) end
call('EXPIRE', hkey, ttl)

-- ---- reply: the whole outbox --------------------------------------------------------------------
local reply = {pt, dups, rejected}
if om > 0 then
  call('EXPIRE', okey, ttl)
  if not listed then
    for k = 1, nnew do reply[k + 3] = new[k] end  -- all of it was written just now
  else
    local els = call('LRANGE', okey, 0, -1)
    for k = 1, #els do reply[k + 3] = els[k] end
  end
end
if live then
  local head = spack(HEAD, live, ss, se, sd, lc, hh, dh, fd, tz, mx, live / TICK_MS - 1, lt, ab and 3 or 2)
  if ab then head = head .. ab end
  local n = #reply
  reply[n + 1] = head
  reply[n + 2] = call('GET', rkey)
end
return reply
