-- Removes a reservation whose request was dropped before its slot (or
-- whose call timed out, or whose batch came back after it was dropped).
-- KEYS: log, costs, queue and floors of each quota, as in exact_acquire.lua.
-- ARGV: id. Returns how many logs held it.
if #KEYS % 4 ~= 0 or not ARGV[1] then
  return redis.error_reply('ERR exact_cancel: expected 4 keys per quota and an id')
end
local removed = 0
for i = 1, #KEYS / 4 do
  local z, h, q, f = KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i]
  if redis.call('ZREM', z, ARGV[1]) == 1 then
    -- Without a costs hash, every entry costs 1 and the sum is the log's
    -- size: nothing more to update.
    if redis.call('HEXISTS', h, 's') == 1 then
      local cost = tonumber(redis.call('HGET', h, ARGV[1])) or 1
      redis.call('HDEL', h, ARGV[1])
      redis.call('HINCRBY', h, 's', string.format('%.0f', -cost))
    end
    removed = removed + 1
  end
  -- The key's latest admission instant falls back to the one before, and
  -- its latest floor too.
  redis.call('ZREM', q, ARGV[1])
  redis.call('ZREM', f, ARGV[1])
end
return removed
