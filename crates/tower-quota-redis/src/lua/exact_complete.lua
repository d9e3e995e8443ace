-- The answer to an admission came back: it holds its slot until a span
-- after the answer (plus `extra`), if that is earlier than what its log
-- entry says (its sent-by bound, or the strict sentinel).
-- KEYS: the log of each quota, as in exact_acquire.lua.
-- ARGV: id, extra_us. Reads the answer instant with Redis TIME.
-- Returns how many logs lowered the entry's score.
local extra = tonumber(ARGV[2])
if not ARGV[1] or not extra or extra < 0 then
  return redis.error_reply('ERR exact_complete: expected an id and extra_us >= 0')
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local score = string.format('%.0f', now + extra)
local changed = 0
for i = 1, #KEYS do
  -- XX: an entry that has left the log is not added again; LT: a score
  -- is only ever lowered.
  changed = changed + redis.call('ZADD', KEYS[i], 'XX', 'LT', 'CH', score, ARGV[1])
end
return changed
