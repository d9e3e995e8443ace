-- Takes one of a key's concurrency slots, as a lease that expires.
-- KEYS[1]: the sorted set of the key's leases (member: lease id; score: the
--          instant it expires, in milliseconds of the Redis clock)
-- ARGV[1]: the most leases at once (>= 1)
-- ARGV[2]: the lease time in milliseconds (>= 1)
-- ARGV[3]: the new lease's id
-- Returns {1, 0} when the lease is taken, {0, ms} when every slot is held
-- and the earliest lease expires in `ms`.
local max = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
if not max or not lease or max < 1 or lease < 1 or lease > 86400000 then
  return redis.error_reply('ERR tower-quota: invalid lease arguments')
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < max then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(last[2]) - now + 1))
  return {1, 0}
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, math.max(1, tonumber(first[2]) - now)}
