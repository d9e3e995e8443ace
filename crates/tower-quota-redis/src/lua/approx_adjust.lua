-- Approximate mode: adds `delta` units to the fixed window that holds the
-- admission made at `at_us`, never below zero: a refund, a charge, or the
-- cancellation of a reservation.
-- KEYS: one hash per quota. ARGV: at_us, then for each quota: span_us, delta.
-- A count saturates at MAX_UNITS (2^53 - 1, exact in Lua's numbers), so
-- approx_acquire's HINCRBY on it never overflows.
local MAX_UNITS = 9007199254740991
local at = tonumber(ARGV[1])
if not at or #ARGV ~= 1 + 2 * #KEYS then
  return redis.error_reply('ERR approx_adjust: expected at_us, then a span and a delta per key')
end
for i = 1, #KEYS do
  local span, delta = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  if not (span and delta) or span <= 0 then
    return redis.error_reply('ERR approx_adjust: bad span or delta')
  end
end
for i = 1, #KEYS do
  local span, delta = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local field = string.format('%.0f', math.floor(at / span))
  local current = tonumber(redis.call('HGET', KEYS[i], field))
  if current then
    local updated = current + delta
    if updated < 0 then
      updated = 0
    elseif updated > MAX_UNITS then
      updated = MAX_UNITS
    end
    redis.call('HSET', KEYS[i], field, string.format('%.0f', updated))
  end
end
return 0
