-- Exact sliding logs: one admission of one key, decided in one call.
--
-- KEYS: for each quota, its log (a sorted set: member = admission id,
-- score = admission time in microseconds of the Redis clock) and its costs
-- (a hash: id -> units for entries that do not cost 1, and `s` = the sum of
-- the units in the log).
-- ARGV: id, max_wait_us (-1: none), max_queue (-1: none), quota count, then
-- for each quota: span_us (window + safety margin), max_calls, units.
--
-- Admissions are recorded in increasing time order per key (a new one is
-- never earlier than the latest one, reserved or not), so the window that
-- ends at the new admission holds every earlier entry that any later window
-- containing it can hold: checking that one window keeps every window of the
-- log at or under max_calls.
--
-- Returns {status, wait_us, queued, limiting}: status 0 = recorded (admitted
-- now when wait_us is 0, reserved otherwise), 1 = wait over max_wait,
-- 2 = queue full (1 and 2 record nothing); limiting = 1-based index of the
-- quota that decided the wait, 0 if none.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local id = ARGV[1]
local max_wait = tonumber(ARGV[2])
local max_queue = tonumber(ARGV[3])
local n = tonumber(ARGV[4])

local function fmt(x)
  return string.format('%.0f', x)
end

-- The score of the entry holding the `excess`-th unit of the log (oldest first).
local function unit_holder(z, h, excess)
  if redis.call('HLEN', h) <= 1 then
    -- Only the sum: every entry costs 1.
    local entry = redis.call('ZRANGE', z, excess - 1, excess - 1, 'WITHSCORES')
    if entry[2] then
      return tonumber(entry[2])
    end
  end
  local acc, start, last = 0, 0, nil
  while true do
    local batch = redis.call('ZRANGE', z, start, start + 127, 'WITHSCORES')
    if #batch == 0 then
      return last
    end
    local ids = {}
    for j = 1, #batch, 2 do
      ids[#ids + 1] = batch[j]
    end
    local costs = redis.call('HMGET', h, unpack(ids))
    for j = 1, #ids do
      acc = acc + (tonumber(costs[j]) or 1)
      last = tonumber(batch[2 * j])
      if acc >= excess then
        return last
      end
    end
    start = start + 128
  end
end

local spans, maxes, units, sums = {}, {}, {}, {}
local base = now
local queued = 0
for i = 1, n do
  local z, h = KEYS[2 * i - 1], KEYS[2 * i]
  local arg = 4 + 3 * (i - 1)
  local span = tonumber(ARGV[arg + 1])
  spans[i] = span
  maxes[i] = tonumber(ARGV[arg + 2])
  units[i] = tonumber(ARGV[arg + 3])

  -- Drop what has left every window from now on.
  local cutoff = now - span
  local sum = tonumber(redis.call('HGET', h, 's')) or 0
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', fmt(cutoff))
  if #old > 0 then
    for first = 1, #old, 1000 do
      local chunk = { unpack(old, first, math.min(first + 999, #old)) }
      local costs = redis.call('HMGET', h, unpack(chunk))
      for j = 1, #chunk do
        sum = sum - (tonumber(costs[j]) or 1)
      end
      redis.call('HDEL', h, unpack(chunk))
    end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', fmt(cutoff))
  end
  if redis.call('ZCARD', z) == 0 then
    redis.call('DEL', h)
    sum = 0
  elseif #old > 0 then
    redis.call('HSET', h, 's', fmt(sum))
  end
  sums[i] = sum

  local last = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
  if last[2] and tonumber(last[2]) > base then
    base = tonumber(last[2])
  end
  local waiting = redis.call('ZCOUNT', z, '(' .. fmt(now), '+inf')
  if waiting > queued then
    queued = waiting
  end
end

local at = base
local limiting, limiting_at = 0, -1
for i = 1, n do
  local excess = sums[i] + units[i] - maxes[i]
  if units[i] > 0 and excess > 0 then
    local holder = unit_holder(KEYS[2 * i - 1], KEYS[2 * i], excess)
    local free_at = (holder or now) + spans[i]
    if free_at > limiting_at then
      limiting, limiting_at = i, free_at
    end
    if free_at > at then
      at = free_at
    end
  end
end

local wait = at - now
if wait > 0 then
  queued = queued + 1
else
  queued = 0
end
if max_wait >= 0 and wait > max_wait then
  return { 1, wait, queued, limiting }
end
if max_queue >= 0 and wait > 0 and queued > max_queue then
  return { 2, wait, queued, limiting }
end

for i = 1, n do
  local u = units[i]
  if u > 0 then
    local z, h = KEYS[2 * i - 1], KEYS[2 * i]
    redis.call('ZADD', z, fmt(at), id)
    if u ~= 1 then
      redis.call('HSET', h, id, fmt(u))
    end
    redis.call('HINCRBY', h, 's', fmt(u))
    local ttl = math.ceil((at - now + spans[i]) / 1000) + 1000
    redis.call('PEXPIRE', z, fmt(ttl))
    redis.call('PEXPIRE', h, fmt(ttl))
  end
end
return { 0, wait, queued, limiting }
