-- Approximate mode: adds `delta` units to the fixed window that holds the
-- admission made at `at_us`, never below zero: a refund, a charge, or the
-- cancellation of a reservation.
-- KEYS: one hash per quota. ARGV: at_us, then for each quota: span_us, delta.
local at = tonumber(ARGV[1])
for i = 1, #KEYS do
  local span, delta = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local field = string.format('%.0f', math.floor(at / span))
  local current = tonumber(redis.call('HGET', KEYS[i], field))
  if current then
    local updated = current + delta
    if updated < 0 then
      updated = 0
    end
    redis.call('HSET', KEYS[i], field, string.format('%.0f', updated))
  end
end
return 0
