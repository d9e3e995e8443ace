-- Sets the units recorded for an admission still in the log to its actual
-- cost. KEYS: log and costs of each weighted quota, as in exact_acquire.lua
-- (not its queue). ARGV: id, actual cost. Returns how many logs held it.
--
-- Without a costs hash every entry costs 1: a correction to another cost
-- makes the hash, with the log's size as its sum.
--
-- The units recorded saturate so that the log's sum stays at most MAX_UNITS
-- (2^53 - 1, exact in Lua's numbers): a log that holds that many is full
-- for any quota Redis counts, so saturating refuses no less than the
-- actual cost would, and `s` stays the exact sum of the recorded units.
local MAX_UNITS = 9007199254740991
local id, actual = ARGV[1], tonumber(ARGV[2])
if #KEYS % 2 ~= 0 or not id or not actual or actual < 0 then
  return redis.error_reply('ERR exact_correct: expected 2 keys per quota, an id and a cost')
end
local changed = 0
for i = 1, #KEYS / 2 do
  local z, h = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('ZSCORE', z, id) then
    local sum = tonumber(redis.call('HGET', h, 's'))
    local recorded = 1
    if sum then
      recorded = tonumber(redis.call('HGET', h, id)) or 1
    else
      -- No costs hash: every entry costs 1, the sum is the log's size
      -- (less the signature, scored +inf, when the log is the anchor).
      sum = redis.call('ZCOUNT', z, '-inf', '(+inf')
    end
    local others = math.max(sum - recorded, 0)
    local units = math.max(math.min(actual, MAX_UNITS - others), 0)
    if units ~= recorded then
      if units == 1 then
        redis.call('HDEL', h, id)
      else
        redis.call('HSET', h, id, string.format('%.0f', units))
      end
      redis.call('HSET', h, 's', string.format('%.0f', others + units))
      -- A hash made here expires with its log.
      local ttl = redis.call('PTTL', z)
      if ttl > 0 and redis.call('PTTL', h) < ttl then
        redis.call('PEXPIRE', h, ttl)
      end
    end
    changed = changed + 1
  end
end
return changed
