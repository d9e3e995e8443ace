-- Approximate mode: a sliding-window counter per quota (the counts of fixed
-- windows of length span, weighted), O(1) memory per key.
--
-- The estimate at offset e of fixed window w is
--   count[w - 1] * (span - e) / span + count[w]
-- and a request of u units is admitted at the earliest instant, not before
-- the latest admission of the key, where estimate + u <= max_calls for
-- every quota.
--
-- KEYS: one hash per quota: field = fixed window index, `t` = the latest
-- admission time; and last, the anchor: the hash of one of the quotas
-- (passed as that quota's too), which also holds, in field `q`, the
-- signature of the quota list the key is counted under, and expires with
-- the longest-kept hash. ARGV: max_wait_us (-1: none), quota count,
-- then for each quota: span_us, max_calls, units; and last this call's
-- signature.
-- Returns {status, wait_us, queued (always 0), limiting, at_us}: status 0 =
-- recorded, 1 = wait over max_wait, 4 = the key is busy under another
-- signature (1 and 4 record nothing).

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local max_wait = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
if not (max_wait and n) or #KEYS ~= n + 1 or #ARGV ~= 3 + 3 * n then
  return redis.error_reply('ERR approx_acquire: expected a key and 3 arguments per quota, and a signature')
end
local anchor, signature = KEYS[n + 1], ARGV[3 + 3 * n]
local held = redis.call('HGET', anchor, 'q')
if held and held ~= signature then
  return { 4, 0, 0, 0, now }
end

local MAX_UNITS = 9007199254740991 -- 2^53 - 1: exact in Lua's numbers

local function fmt(x)
  return string.format('%.0f', x)
end

local function count(k, w)
  return tonumber(redis.call('HGET', k, fmt(w))) or 0
end

local function earliest(k, span, max, u, from)
  if u == 0 then
    return from
  end
  local first = math.floor(from / span)
  for w = first, first + 3 do
    local previous, current = count(k, w - 1), count(k, w)
    if current + u <= max then
      local need = 0
      if previous > 0 then
        need = math.ceil(span * (1 - (max - u - current) / previous))
        if need < 0 then
          need = 0
        end
      end
      local t = math.max(from, w * span + need)
      if t < (w + 1) * span then
        return t
      end
    end
  end
  return (first + 4) * span
end

local spans, maxes, units = {}, {}, {}
local at = now
for i = 1, n do
  local arg = 2 + 3 * (i - 1)
  spans[i] = tonumber(ARGV[arg + 1])
  maxes[i] = tonumber(ARGV[arg + 2])
  units[i] = tonumber(ARGV[arg + 3])
  if not (spans[i] and maxes[i] and units[i]) or spans[i] <= 0
    or units[i] < 0 or units[i] > MAX_UNITS or maxes[i] < 1 or maxes[i] > MAX_UNITS then
    return redis.error_reply('ERR approx_acquire: bad quota arguments')
  end
  local tail = tonumber(redis.call('HGET', KEYS[i], 't')) or 0
  if tail > at then
    at = tail
  end
end

local limiting = 0
for _ = 1, 16 do
  local moved = false
  for i = 1, n do
    local t = earliest(KEYS[i], spans[i], maxes[i], units[i], at)
    if t > at then
      at, moved, limiting = t, true, i
    end
  end
  if not moved then
    break
  end
end

local wait = at - now
if max_wait >= 0 and wait > max_wait then
  return { 1, wait, 0, limiting, at }
end
for i = 1, n do
  -- Counts stay at most MAX_UNITS, so HINCRBY never fails after a write.
  if count(KEYS[i], math.floor(at / spans[i])) + units[i] > MAX_UNITS then
    return { 1, wait, 0, i, at }
  end
end

-- The longest expiry this call gives a hash: the anchor's, at least.
local anchor_ttl = 0
for i = 1, n do
  local k, span = KEYS[i], spans[i]
  if units[i] > 0 then
    local current = math.floor(now / span)
    redis.call('HINCRBY', k, fmt(math.floor(at / span)), fmt(units[i]))
    redis.call('HSET', k, 't', fmt(at))
    if redis.call('HLEN', k) > 4 then
      -- Windows before the previous one no longer count (`t` and `q` are
      -- no window).
      for _, field in ipairs(redis.call('HKEYS', k)) do
        local w = tonumber(field)
        if field ~= 't' and w and w < current - 1 then
          redis.call('HDEL', k, field)
        end
      end
    end
    local ttl = math.ceil((at - now + 2 * span) / 1000) + 1000
    if k ~= anchor then
      redis.call('PEXPIRE', k, fmt(ttl))
    end
    if ttl > anchor_ttl then
      anchor_ttl = ttl
    end
  end
end
if anchor_ttl > 0 then
  if not held then
    redis.call('HSET', anchor, 'q', signature)
  end
  -- Only ever extended: it outlives every quota's hash.
  if redis.call('PTTL', anchor) < anchor_ttl then
    redis.call('PEXPIRE', anchor, fmt(anchor_ttl))
  end
end
return { 0, wait, 0, limiting, at }
