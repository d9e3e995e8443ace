-- Extends a lease that is still held.
-- KEYS[1]: the sorted set of the key's leases
-- ARGV[1]: the lease time in milliseconds (>= 1)
-- ARGV[2]: the lease's id
-- Returns 1 when extended, 0 when the lease had expired or was never taken.
local lease = tonumber(ARGV[1])
if not lease or lease < 1 or lease > 86400000 then
  return redis.error_reply('ERR tower-quota: invalid lease arguments')
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local expires = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not expires or tonumber(expires) <= now then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(last[2]) - now + 1))
return 1
