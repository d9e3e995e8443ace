-- Exact sliding logs: one admission of one key, decided in one call.
--
-- KEYS: for each quota, three keys:
--   log   a sorted set: member = admission id, score = the admission's
--         "sent-by" instant in microseconds of the Redis clock: its
--         admission instant + sent_within + extra while unanswered,
--         lowered by exact_complete.lua to its answer instant + extra, or
--         its admission instant + STRICT while a strict admission waits for
--         its answer. An entry holds its slot until score + span.
--   costs a hash: id -> units for entries that do not cost 1, and `s` = the
--         sum of the units in the log.
--   queue a sorted set: member = admission id, score = admission instant,
--         for the admissions reserved at a later instant than the call that
--         made them, and the latest admission already made (the others are
--         pruned). Its highest score is the key's latest admission instant.
-- and last, one key more:
--   quotas a string: the signature of the quota list (and safety margin)
--         the key's admissions are counted under; it expires with them.
-- ARGV: id, max_wait_us (-1: none), max_queue (-1: none), sent_within_us
-- (-1: strict), extra_us (added to the sent-by instant), quota count, then
-- for each quota: span_us (window + safety margin), max_calls, units; and
-- last the signature of this call's quota list. A call with another
-- signature than the one a busy key holds records nothing (status 4): each
-- process would otherwise count only its own quotas.
--
-- Every entry counts from the call that records it until it leaves, also
-- while its reserved instant is still to come, and an entry only ever
-- leaves earlier than it was counted on (an answer lowers its score): so
-- the count of the log at the new admission's instant, checked here, is the
-- most the log holds at any later instant. Admission instants increase per
-- key (a new one is never earlier than the latest one, reserved or not),
-- which serves the key's requests in the order their calls run.
--
-- A strict admission that is still unanswered an hour (PENDING) after its
-- admission instant is dropped one span later: a worker that died with the
-- request in flight does not hold the slot for ever. When the slot a
-- request needs is held by a strict admission still waiting for its answer,
-- the call records nothing and returns status 3 with the wait it would
-- need if that answer came back now: the caller asks again later.
--
-- Units, costs and max_calls are at most MAX_UNITS (the client saturates
-- them); a log whose sum would pass 2^62 refuses the admission as a full
-- queue, so HINCRBY never overflows and no call fails after a write.
--
-- Returns {status, wait_us, queued, limiting}: status 0 = recorded (admitted
-- now when wait_us is 0, reserved otherwise), 1 = wait over max_wait,
-- 2 = queue full, 3 = waits for an answer, 4 = the key is busy under other
-- quotas (1 to 4 record nothing);
-- queued = the reservations still ahead, this one included; limiting =
-- 1-based index of the quota that decided the wait, 0 if none. Arguments
-- that do not parse are an error reply, before anything is written.

local STRICT = 4503599627370496 -- 2^52 µs, about 142 years
local HALF = 2251799813685248 -- 2^51 µs: scores further ahead are pending
local PENDING = 3600000000 -- 1 h in µs
local MAX_UNITS = 9007199254740991 -- 2^53 - 1
local MAX_SUM = 4611686018427387904 -- 2^62

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

local id = ARGV[1]
local max_wait, max_queue = tonumber(ARGV[2]), tonumber(ARGV[3])
local sent_within, extra = tonumber(ARGV[4]), tonumber(ARGV[5])
local n = tonumber(ARGV[6])
if not (id and max_wait and max_queue and sent_within and extra and n) then
  return redis.error_reply('ERR exact_acquire: bad arguments')
end
if #KEYS ~= 3 * n + 1 or #ARGV ~= 7 + 3 * n then
  return redis.error_reply('ERR exact_acquire: expected 3 keys and 3 arguments per quota, and a signature')
end
local signature_key, signature = KEYS[3 * n + 1], ARGV[7 + 3 * n]
local held = redis.call('GET', signature_key)
if held and held ~= signature then
  return { 4, 0, 0, 0 }
end
local spans, maxes, units = {}, {}, {}
for i = 1, n do
  local arg = 6 + 3 * (i - 1)
  spans[i], maxes[i], units[i] = tonumber(ARGV[arg + 1]), tonumber(ARGV[arg + 2]), tonumber(ARGV[arg + 3])
  if not (spans[i] and maxes[i] and units[i])
    or units[i] < 0 or units[i] > MAX_UNITS or maxes[i] < 1 or maxes[i] > MAX_UNITS then
    return redis.error_reply('ERR exact_acquire: bad quota arguments')
  end
end
local strict = sent_within < 0

local function fmt(x)
  return string.format('%.0f', x)
end

-- Removes the log entries with scores in [min, max]; returns the sum less
-- their units.
local function drop(z, h, min, max, sum)
  local old = redis.call('ZRANGEBYSCORE', z, min, max)
  if #old == 0 then
    return sum, false
  end
  for first = 1, #old, 1000 do
    local chunk = { unpack(old, first, math.min(first + 999, #old)) }
    local costs = redis.call('HMGET', h, unpack(chunk))
    for j = 1, #chunk do
      sum = sum - (tonumber(costs[j]) or 1)
    end
    redis.call('HDEL', h, unpack(chunk))
  end
  redis.call('ZREMRANGEBYSCORE', z, min, max)
  return sum, true
end

-- The score of the entry holding the `excess`-th unit of the log, in the
-- order the entries leave.
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

local sums = {}
local base = now
local queued = 0
for i = 1, n do
  local z, h, q = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local span = spans[i]

  -- Drop what has left every window from now on: answered or past its
  -- bound a span ago, or strict and unanswered for PENDING and a span.
  local cutoff = now - span
  local sum = tonumber(redis.call('HGET', h, 's')) or 0
  local dropped, late = false, false
  sum, dropped = drop(z, h, '-inf', fmt(cutoff), sum)
  if STRICT + cutoff - PENDING >= now + HALF then
    sum, late = drop(z, h, fmt(now + HALF), fmt(STRICT + cutoff - PENDING), sum)
  end
  if redis.call('ZCARD', z) == 0 then
    redis.call('DEL', h)
    sum = 0
  elseif dropped or late then
    redis.call('HSET', h, 's', fmt(sum))
  end
  sums[i] = sum

  -- Keep the reservations still ahead and the latest admission made.
  local past = redis.call('ZCOUNT', q, '-inf', fmt(now))
  if past > 1 then
    redis.call('ZREMRANGEBYRANK', q, 0, past - 2)
  end
  local last = redis.call('ZRANGE', q, -1, -1, 'WITHSCORES')
  if last[2] and tonumber(last[2]) > base then
    base = tonumber(last[2])
  end
  local waiting = redis.call('ZCARD', q) - math.min(past, 1)
  if waiting > queued then
    queued = waiting
  end
end

local at = base
local blocked = false
local limiting, limiting_at = 0, -1
for i = 1, n do
  local excess = sums[i] + units[i] - maxes[i]
  if units[i] > 0 and excess > 0 then
    local holder = unit_holder(KEYS[3 * i - 2], KEYS[3 * i - 1], excess) or now
    if holder - now > HALF then
      -- Held until an answer comes back: at the earliest, a span from now.
      blocked = true
      holder = now
    end
    local free_at = holder + spans[i]
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
if blocked then
  return { 3, wait, queued, limiting }
end
for i = 1, n do
  if sums[i] + units[i] > MAX_SUM then
    return { 2, wait, queued, i }
  end
end

local hold = sent_within + extra
local score = at + hold
if strict then
  hold, score = PENDING, at + STRICT
end
local function expire(k, ttl)
  -- Never shorten: an entry recorded earlier may need longer.
  if redis.call('PTTL', k) < ttl then
    redis.call('PEXPIRE', k, fmt(ttl))
  end
end
for i = 1, n do
  local u = units[i]
  if u > 0 then
    local z, h, q = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
    redis.call('ZADD', z, fmt(score), id)
    if u ~= 1 then
      redis.call('HSET', h, id, fmt(u))
    end
    redis.call('HINCRBY', h, 's', fmt(u))
    redis.call('ZADD', q, fmt(at), id)
    local ttl = math.ceil((at - now + hold + spans[i]) / 1000) + 1000
    expire(z, ttl)
    expire(h, ttl)
    expire(q, ttl)
    if not held then
      redis.call('SET', signature_key, signature)
      held = signature
    end
    expire(signature_key, ttl)
  end
end
return { 0, wait, queued, limiting }
