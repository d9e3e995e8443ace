-- Removes a reservation whose request was dropped before its slot.
-- KEYS: log and costs of each quota, as in exact_acquire.lua. ARGV: id.
-- Returns how many logs held it.
local removed = 0
for i = 1, #KEYS / 2 do
  local z, h = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('ZREM', z, ARGV[1]) == 1 then
    local cost = tonumber(redis.call('HGET', h, ARGV[1])) or 1
    redis.call('HDEL', h, ARGV[1])
    redis.call('HINCRBY', h, 's', string.format('%.0f', -cost))
    removed = removed + 1
  end
end
return removed
