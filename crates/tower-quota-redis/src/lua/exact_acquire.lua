-- Exact sliding logs: k admissions of one key, decided in one call, one
-- after another in the order given, as if the script were called k times
-- at the same instant (a batch of concurrent requests of the key).
--
-- KEYS: for each quota, four keys:
--   log   a sorted set: member = admission id, score = the admission's
--         "sent-by" instant in microseconds of the Redis clock: its
--         admission instant + sent_within + extra while unanswered,
--         lowered by exact_complete.lua to its answer instant + extra, or
--         its admission instant + STRICT while a strict admission waits for
--         its answer. An entry holds its slot until score + span.
--   costs a hash: id -> units for entries that do not cost 1, and `s` = the
--         sum of the units in the log. It exists only while an entry of
--         the log costs other than 1: without it, every entry costs 1 and
--         the sum is the log's size.
--   queue a sorted set: member = admission id, score = admission instant,
--         for the admissions reserved at a later instant than the call that
--         made them, while that instant is to come (past ones are pruned).
--         Its highest score, or now, is the key's latest admission instant.
--         It exists only while there are reservations.
--   floors a sorted set: member = admission id, score = the earliest
--         instant its reservation could have gone had every admission it
--         waits for been answered at once (see "Moving up" below).
-- then one key more:
--   anchor the log of one of the quotas (passed as that quota's log too),
--         which also holds the signature of the quota list (and safety
--         margin) the key's admissions are counted under: its one member
--         scored +inf (every admission's score is finite, so it sorts
--         last; the log's reads below stop before it). The anchor expires
--         with the longest-kept entry of every log.
-- and, when some class leaves a share of the quotas free, for each quota:
--   jumpers a sorted set: member = `id:units`, score = as in the log, for
--         the admissions of the classes the share is left for.
-- ARGV: max_queue (-1: none), sent_within_us (-1: strict), extra_us (added
-- to the sent-by instant), quota count n, then for each quota: span_us
-- (window + safety margin), max_calls; then the signature of this call's
-- quota list; then the request count k, and the requests in runs of
-- consecutive requests alike: for each run, its length c, then what its
-- requests share: max_wait_us (-1: none), kind (0: a new request, 1: a
-- new request of a class a share is left for, 2: a reservation moving
-- up), their units of each quota, then per quota the units they
-- leave free (the share kept for the classes above them) or, for
-- requests that jump, the units of that share; then the c requests' ids.
-- (A batch of alike requests costs one argument per request.) A call with
-- another signature than the one a busy key holds records nothing (status
-- 4): each process would otherwise count only its own quotas.
--
-- The common call (one quota, whose log is the anchor, no jumpers, and one
-- run of new requests of unit cost that keep no share free) also comes in
-- a compact form, four keys and seven arguments before the ids, which
-- leaves out what that shape fixes (the anchor passed again, n = 1, k and
-- c, kind 0, units 1, keep 0): KEYS = log, costs, queue, floors; ARGV =
-- max_queue, sent_within_us, extra_us, span_us, max_calls, signature,
-- max_wait_us, then the ids. Each value a call carries costs Redis time
-- to read and to hand to the script, whatever the script does with it. No
-- general call has four keys (it has 4n + 1 or 5n + 1), so the count of
-- keys tells the forms apart; a compact call the short path below does
-- not decide is expanded into the general form and decided as one.
--
-- Every entry counts from the call that records it until it leaves, also
-- while its reserved instant is still to come, and an entry only ever
-- leaves earlier than it was counted on (an answer lowers its score): so
-- the count of the log at the new admission's instant, checked here, is the
-- most the log holds at any later instant. Admission instants increase per
-- key (a new one is never earlier than the latest one, reserved or not),
-- which serves the key's requests in the order their calls run, and a
-- call's requests in the order given.
--
-- A share left free: the classes below leave `keep` units of each quota
-- free at their instants, so the entries of those classes never hold
-- more than max_calls - keep at any instant (each one checked, at its
-- instant, everything counted then plus itself and keep). A request of a
-- class the share is left for (it jumps) is admitted at the call's
-- instant, ahead of the reservations, when the log has room counting
-- everything, or when the jumpers' own log holds at most keep - units:
-- the two kinds together then stay within max_calls at every instant.
-- Otherwise it takes the next instant as any request does. The jumpers'
-- log is not lowered by answers nor cleared by cancellations: it only
-- ever holds a jumper's share longer.
--
-- A strict admission that is still unanswered an hour (PENDING) after its
-- admission instant is dropped one span later: a worker that died with the
-- request in flight does not hold the slot for ever. When the slot a
-- request needs is held by a strict admission still waiting for its answer,
-- the request records nothing and gets status 3 with the wait it would
-- need if that answer came back now: the caller asks again later.
--
-- Moving up: an unanswered admission holds its slot until its sent-by
-- bound, so a reservation counted behind it is pessimistic, and one
-- behind another reservation more so (the bounds add up). Each
-- reservation also gets a floor: the instant its slot would free had
-- every admission it waits for been answered at once (an answered entry
-- leaves at its score, an unanswered one at the earliest now, a pending
-- reservation at the earliest its own floor), and no earlier than the
-- floors of the key's reservations before it, so they ask in order. Its
-- caller asks again at the floor with kind 2: the reservation leaves the
-- log and the queue, and takes the earliest instant from now on at which
-- every quota has room for it through its whole hold, each other entry
-- counted from its start (its reserved instant, or now) to its score and
-- span: a sweep over the log, of at most SWEEP_MAX entries. In a larger
-- log where every entry costs 1 it is decided as a new request would be,
-- without counting the reservations that start only after it would end;
-- otherwise it keeps its instant. It is never placed behind the latest
-- reservation, and keeps its own instant when nothing earlier is found.
-- Exactness: every check covers the entries then recorded that may hold
-- a slot while the new one does, over the new one's hold; entries only
-- ever leave earlier, and start earlier only through a check of their
-- own. At any instant, of the entries holding a slot take the one checked
-- last: every other one was recorded by then, leaves after that instant
-- and starts no later, so that check counted it. Order: a reservation
-- moving up may pass one made before it that waits for answers still to
-- come or for more units; the one passed keeps its instant. The floor
-- follows the entry that holds the slot in the order of the scores, which
-- is not always the earliest floor: it is a hint, never a bound exactness
-- rests on. A reservation that is gone (dropped, or its instant passed)
-- gets status 5 and nothing changes.
--
-- Units, costs and max_calls are at most MAX_UNITS (the client saturates
-- them); a log whose sum would pass 2^62 refuses the admission as a full
-- queue, so HINCRBY never overflows and no call fails after a write.
--
-- Returns, for each request in order, {status, wait_us, queued, limiting,
-- floor_us}: status 0 = recorded (admitted now when wait_us is 0, reserved
-- otherwise), 1 = wait over max_wait, 2 = queue full, 3 = waits for an
-- answer, 4 = the key is busy under other quotas, 5 = no reservation to
-- move up (1 to 5 record nothing); queued = the reservations still ahead,
-- this one included (0 when not reserved or moving up); limiting =
-- 1-based index of the quota that decided the wait, 0 if none; floor_us =
-- the wait until the reservation's floor (wait_us when it has none); or
-- an empty reply when every request was admitted now (status 0, every
-- other value 0: the common call below).
-- Arguments that do not parse are an error reply, before anything is
-- written. Key TTLs are only ever extended (PEXPIRE GT: Redis 7.0), and
-- only when an entry needs longer than they have left.

-- The arguments as the script reads them: a compact call's are expanded
-- into the general form below, after the short path.
local KEYS, ARGV = KEYS, ARGV

-- The common call first, in its compact form: one quota, one run of new
-- requests of unit cost that keep no share free, not strict, on a key that
-- holds this call's signature, has no costs hash and no reservations, and
-- whose log has room for every request at once. Then every request is
-- admitted now, as the general path below would decide it (no wait, no
-- queue, no floor), in six commands instead of about ten and without the
-- general path's bookkeeping: most calls of a key that is not saturated
-- end here. Its reply is empty: every request recorded, admitted now.
-- Anything else, malformed arguments included, goes on to the general
-- path, which decides it (or refuses it) in full.
if #KEYS == 4 then
  -- A number argument: the usual small values are told by their text,
  -- since `tonumber` is a call into C (strtod) that costs as much as a
  -- tenth of this path.
  local function number(text)
    if text == '0' then
      return 0
    elseif text == '-1' then
      return -1
    elseif text == '1' then
      return 1
    end
    return tonumber(text)
  end
  local c = #ARGV - 7
  local sent_within, extra = number(ARGV[2]), number(ARGV[3])
  local span, most = number(ARGV[4]), number(ARGV[5])
  if c >= 1 and number(ARGV[1]) and sent_within and extra and span and most
    and number(ARGV[7]) and sent_within >= 0
    and most >= 1 and most <= 9007199254740991
    and redis.call('EXISTS', KEYS[2], KEYS[3]) == 0 then
    local z = KEYS[1]
    -- The rank of the call's signature is the size of the log: the
    -- signature is the log's one member scored +inf (it is written only
    -- where none is), and no entry, a number, is named like a signature.
    -- Nil when the key holds none (new, or held under other quotas).
    local rank = redis.call('ZRANK', z, ARGV[6])
    if rank then
      local time = redis.call('TIME')
      local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
      -- Instants go to Redis as integers formatted by Lua ('%d': a 64-bit
      -- integer; below 2^53, exact): a Lua number would be printed with
      -- '%.17g', several times slower.
      local size = rank - redis.call('ZREMRANGEBYSCORE', z, '-inf', string.format('%d', now - span))
      if size + c <= most then
        local hold = sent_within + extra
        local score = string.format('%d', now + hold)
        local entries = {}
        for m = 1, c do
          entries[2 * m - 1], entries[2 * m] = score, ARGV[7 + m]
        end
        redis.call('ZADD', z, unpack(entries))
        local needed = math.ceil((hold + span) / 1000)
        if redis.call('PTTL', z) < needed then
          redis.call('PEXPIRE', z, needed + 1000, 'GT')
        end
        return {}
      end
    end
  end
end -- the common call

-- A compact call the short path did not decide, in the general form: the
-- log passed again as the anchor, one quota, one run of the call's ids,
-- new requests of unit cost keeping no share.
if #KEYS == 4 then
  if #ARGV < 8 then
    return redis.error_reply('ERR exact_acquire: a compact call needs 7 arguments and an id')
  end
  local c = tostring(#ARGV - 7)
  local full = {
    ARGV[1], ARGV[2], ARGV[3], '1', ARGV[4], ARGV[5], ARGV[6],
    c, c, ARGV[7], '0', '1', '0',
  }
  for m = 8, #ARGV do
    full[#full + 1] = ARGV[m]
  end
  KEYS = { KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[1] }
  ARGV = full
end

local STRICT = 4503599627370496 -- 2^52 µs, about 142 years
local HALF = 2251799813685248 -- 2^51 µs: scores further ahead are pending
local PENDING = 3600000000 -- 1 h in µs
local MAX_UNITS = 9007199254740991 -- 2^53 - 1
local MAX_SUM = 4611686018427387904 -- 2^62

local max_queue, sent_within = tonumber(ARGV[1]), tonumber(ARGV[2])
local extra, n = tonumber(ARGV[3]), tonumber(ARGV[4])
if not (max_queue and sent_within and extra and n)
  or (#KEYS ~= 4 * n + 1 and #KEYS ~= 5 * n + 1) then
  return redis.error_reply('ERR exact_acquire: bad arguments')
end
local has_jumpers = #KEYS == 5 * n + 1
local anchor, signature = KEYS[4 * n + 1], ARGV[5 + 2 * n]
local k = tonumber(ARGV[6 + 2 * n])
if not (signature and k) or k < 1 then
  return redis.error_reply('ERR exact_acquire: expected 2 arguments per quota, a signature, a request count and runs of requests')
end
local spans, maxes = {}, {}
for i = 1, n do
  spans[i], maxes[i] = tonumber(ARGV[3 + 2 * i]), tonumber(ARGV[4 + 2 * i])
  if not (spans[i] and maxes[i]) or maxes[i] < 1 or maxes[i] > MAX_UNITS then
    return redis.error_reply('ERR exact_acquire: bad quota arguments')
  end
end
-- Per request: its id and its run; per run: max_wait, jump, units, keeps.
local ids, runs_of = {}, {}
local arg = 7 + 2 * n
while #ids < k do
  local count, max_wait = tonumber(ARGV[arg]), tonumber(ARGV[arg + 1])
  if not (count and max_wait) or count < 1 or #ids + count > k
    or #ARGV < arg + 2 + 2 * n + count then
    return redis.error_reply('ERR exact_acquire: bad run of requests')
  end
  local run = {
    max_wait = max_wait,
    jump = has_jumpers and ARGV[arg + 2] == '1',
    move_up = ARGV[arg + 2] == '2',
    units = {},
    keeps = {},
  }
  for i = 1, n do
    local u, keep = tonumber(ARGV[arg + 2 + i]), tonumber(ARGV[arg + 2 + n + i])
    if not (u and keep) or u < 0 or u > MAX_UNITS or keep < 0 or keep > MAX_UNITS then
      return redis.error_reply('ERR exact_acquire: bad units')
    end
    run.units[i], run.keeps[i] = u, keep
  end
  arg = arg + 3 + 2 * n
  for _ = 1, count do
    ids[#ids + 1], runs_of[#runs_of + 1] = ARGV[arg], run
    arg = arg + 1
  end
end
if arg ~= #ARGV + 1 then
  return redis.error_reply('ERR exact_acquire: arguments past the last run')
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

local held = redis.call('ZRANGEBYSCORE', anchor, '+inf', '+inf')[1]
if held and held ~= signature then
  local conflict = {}
  for m = 1, k do
    conflict[#conflict + 1], conflict[#conflict + 2] = 4, 0
    conflict[#conflict + 1], conflict[#conflict + 2] = 0, 0
    conflict[#conflict + 1] = 0
  end
  return conflict
end
-- The signature's member in the log of quota i: 1 in the anchor once it
-- holds it, else 0.
local function signature_in(i)
  if held and KEYS[4 * i - 3] == anchor then
    return 1
  end
  return 0
end
local strict = sent_within < 0

-- Numbers go to redis.call as they are: Redis 7.0 prints them exactly
-- (integers below 2^53 without an exponent). Only string concatenation
-- would round them.

-- Removes the entries of a log with costs, scores in [min, max]; returns
-- the sum less their units.
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

-- The score and id of the entry holding the `excess`-th unit of the log,
-- in the order the entries leave (the last entry when the log holds
-- fewer units; nil when it is empty). The signature, scored +inf, is no
-- entry.
local function unit_holder(z, h, weighted, excess)
  if not weighted then
    local entry = redis.call('ZRANGE', z, excess - 1, excess - 1, 'WITHSCORES')
    if entry[2] and entry[2] ~= 'inf' then
      return tonumber(entry[2]), entry[1]
    end
  end
  local acc, start, last, last_id = 0, 0, nil, nil
  while true do
    local batch = redis.call('ZRANGE', z, start, start + 127, 'WITHSCORES')
    if #batch == 0 then
      return last, last_id
    end
    local page = {}
    for j = 1, #batch, 2 do
      if batch[j + 1] ~= 'inf' then
        page[#page + 1] = batch[j]
      end
    end
    if #page == 0 then
      return last, last_id
    end
    local costs = redis.call('HMGET', h, unpack(page))
    for j = 1, #page do
      acc = acc + (tonumber(costs[j]) or 1)
      last, last_id = tonumber(batch[2 * j]), page[j]
      if acc >= excess then
        return last, last_id
      end
    end
    start = start + 128
  end
end

-- Per quota: the sum of its log, whether it has a costs hash, whether its
-- keys existed (and so have a TTL), its future reservations (counted when
-- first needed), the entries still to add, and whether the late strict
-- entries were dropped.
local sums, weighted, had_log, had_costs, had_queue = {}, {}, {}, {}, {}
local reserved, pending, queued_adds, written, pruned_late = {}, {}, {}, {}, {}
-- The costs other than 1 still to write, per quota.
local pending_costs = {}
local base = now
for i = 1, n do
  local z, h, q = KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1]
  -- Drop what has left every window from now on: answered or past its
  -- bound a span ago.
  local cutoff = now - spans[i]
  local sum = tonumber(redis.call('HGET', h, 's'))
  if sum then
    local dropped
    sum, dropped = drop(z, h, '-inf', cutoff, sum)
    local size = redis.call('ZCARD', z)
    had_log[i] = size > 0
    size = size - signature_in(i)
    if size == 0 or redis.call('HLEN', h) <= 1 then
      -- Every entry left costs 1.
      redis.call('DEL', h)
      sum = size
    else
      weighted[i], had_costs[i] = true, true
      if dropped then
        redis.call('HSET', h, 's', sum)
      end
    end
  else
    redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff)
    sum = redis.call('ZCARD', z)
    had_log[i] = sum > 0
    sum = sum - signature_in(i)
  end
  sums[i] = sum

  local last = redis.call('ZRANGE', q, -1, -1, 'WITHSCORES')
  if last[2] then
    had_queue[i] = true
    if tonumber(last[2]) > base then
      base = tonumber(last[2])
    end
  end
  pending[i], queued_adds[i], pending_costs[i] = {}, {}, {}
end

-- Drops the strict entries of quota i unanswered for PENDING and a span.
-- Only when the log is full: until then they only count a little longer.
local function prune_late(i)
  if pruned_late[i] then
    return
  end
  pruned_late[i] = true
  local z, h = KEYS[4 * i - 3], KEYS[4 * i - 2]
  local late_min, late_max = now + HALF, STRICT + now - spans[i] - PENDING
  if late_max < late_min then
    return
  end
  if weighted[i] then
    local late
    sums[i], late = drop(z, h, late_min, late_max, sums[i])
    if late then
      redis.call('HSET', h, 's', sums[i])
    end
  else
    sums[i] = sums[i] - redis.call('ZREMRANGEBYSCORE', z, late_min, late_max)
  end
end

-- Writes the entries decided so far into the log of quota i, and their
-- costs.
local function flush(i)
  if #pending[i] > 0 then
    redis.call('ZADD', KEYS[4 * i - 3], unpack(pending[i]))
    pending[i] = {}
  end
  if #pending_costs[i] > 0 then
    redis.call('HSET', KEYS[4 * i - 2], unpack(pending_costs[i]))
    pending_costs[i] = {}
  end
end

-- The reservations still ahead in the queue of quota i.
local function ahead(i)
  if not reserved[i] then
    reserved[i] = redis.call('ZCOUNT', KEYS[4 * i - 1], now + 1, '+inf')
  end
  return reserved[i]
end

-- The live units of the jumpers' log of quota i, read once per call.
local jumper_sums = {}
local function jumper_sum(i)
  if not jumper_sums[i] then
    local jz = KEYS[4 * n + 1 + i]
    redis.call('ZREMRANGEBYSCORE', jz, '-inf', now - spans[i])
    local sum = 0
    for _, member in ipairs(redis.call('ZRANGE', jz, 0, -1)) do
      sum = sum + (tonumber(string.match(member, ':(%d+)$')) or 1)
    end
    jumper_sums[i] = sum
  end
  return jumper_sums[i]
end

-- The score of the jumpers' entry of quota i holding the `excess`-th
-- unit, in the order they leave.
local function jumper_holder(i, excess)
  local entries = redis.call('ZRANGE', KEYS[4 * n + 1 + i], 0, -1, 'WITHSCORES')
  local acc = 0
  for j = 1, #entries, 2 do
    acc = acc + (tonumber(string.match(entries[j], ':(%d+)$')) or 1)
    if acc >= excess then
      return tonumber(entries[j + 1])
    end
  end
  return now
end

local hold = sent_within + extra
if strict then
  hold = PENDING
end

-- The earliest instant the entry `id` of quota i, with `score`, could
-- leave the log: an answered entry (or one past its bound) at its score,
-- a pending reservation at the earliest its floor (recorded by this call
-- or an earlier one), an unanswered admission at the earliest now.
local call_floors = {}
local function floor_of(i, score, id)
  if score <= now + extra then
    return score
  end
  local floor = call_floors[id] or tonumber(redis.call('ZSCORE', KEYS[4 * i], id))
  if not floor then
    floor = score - hold
  end
  return math.max(floor, now)
end

-- The latest floor of the key's reservations, read once per call: floors
-- follow the order of the calls, so callers ask again in that order.
local floor_base
local function latest_floor()
  if not floor_base then
    floor_base = now
    for i = 1, n do
      local last = redis.call('ZRANGE', KEYS[4 * i], -1, -1, 'WITHSCORES')
      if last[2] and tonumber(last[2]) > floor_base then
        floor_base = tonumber(last[2])
      end
    end
  end
  return floor_base
end

-- Per quota, the floors of this call's reservations still to write.
-- Made with the call's first reservation: most calls have none.
local pending_floors = {}

-- The instant from `at` on at which each quota has room for `u` units
-- (counting `excluded` fewer units of a quota's log: see "Moving up"),
-- the floor of that instant, whether an answer still to come holds it,
-- and the 1-based index of the quota that decided it (0: none). A request
-- of a class a share is left for leaves nothing free (`jump`).
local function place(u, keep, jump, at, excluded, floored)
  local floor_at, blocked = now, false
  local limiting, limiting_at = 0, -1
  for i = 1, n do
    local kept = keep[i]
    if jump then
      kept = 0
    end
    if u[i] > 0 and sums[i] + u[i] + kept > maxes[i] then
      prune_late(i)
    end
    local excess = sums[i] + u[i] + kept - maxes[i] - (excluded[i] or 0)
    if u[i] > 0 and excess > 0 then
      flush(i)
      local holder, holder_id = unit_holder(KEYS[4 * i - 3], KEYS[4 * i - 2], weighted[i], excess)
      holder = holder or now
      if holder - now > HALF then
        -- Held until an answer comes back: at the earliest, a span from now.
        blocked = true
        holder = now
      end
      local free_at = holder + spans[i]
      if floored and holder_id then
        floor_at = math.max(floor_at, floor_of(i, holder, holder_id) + spans[i])
      else
        floor_at = math.max(floor_at, free_at)
      end
      if free_at > limiting_at then
        limiting, limiting_at = i, free_at
      end
      if free_at > at then
        at = free_at
      end
    end
  end
  return at, floor_at, blocked, limiting
end

-- No units left out of any log.
local NOTHING = {}
-- The most entries a move up sweeps.
local SWEEP_MAX = 1000

local out = {}
local recorded = false
-- The longest any entry recorded here must be kept, in ms.
local needed = {}
for m = 1, k do
  local run = runs_of[m]
  local u, keep, jump = run.units, run.keeps, run.jump
  local id = ids[m]
  local at = base
  local jumped = false
  -- A reservation moving up: its instant; it leaves the log and the queue
  -- while it is decided again, from now.
  local old_at
  if run.move_up then
    for i = 1, n do
      if u[i] > 0 then
        old_at = tonumber(redis.call('ZSCORE', KEYS[4 * i - 1], id))
        break
      end
    end
    if old_at and old_at > now then
      at = now
      for i = 1, n do
        if u[i] > 0 then
          flush(i)
          if redis.call('ZREM', KEYS[4 * i - 3], id) == 1 then
            sums[i] = sums[i] - u[i]
          end
          redis.call('ZREM', KEYS[4 * i - 1], id)
        end
      end
    else
      old_at = nil
    end
  end
  local floored = not strict and not jump
  local floor_at, blocked, limiting = now, false, 0
  if jump then
    -- Each quota has room counting everything, or in the share left free
    -- once enough of the jumpers' entries have left.
    jumped = true
    at = now
    for i = 1, n do
      if u[i] > 0 and sums[i] + u[i] > maxes[i] then
        if u[i] > keep[i] then
          jumped = false
          break
        end
        local excess = jumper_sum(i) + u[i] - keep[i]
        if excess > 0 then
          local free_at = jumper_holder(i, excess) + spans[i]
          if free_at > at then
            at = free_at
          end
        end
      end
    end
    if not jumped then
      at = base
    end
  end
  if old_at then
    -- Moving up, in a log of at most SWEEP_MAX entries: the earliest instant
    -- from `from` on at which quota i has room for `need` units through the
    -- whole of `length` (the hold and span of an entry starting then),
    -- counting each entry only from its start (its reserved instant, or now)
    -- to its score and span. The log gives the ends in order and the queue
    -- the starts, so the load is swept in one merge. Nil when the log is
    -- larger. Made only by a call that moves a reservation up.
    local function sweep(i, need, from, length)
      local cap = maxes[i] - need
      if cap < 0 then
        return nil
      end
      local z, h, q = KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1]
      flush(i)
      local entries = redis.call('ZRANGEBYSCORE', z, '-inf', '(+inf', 'WITHSCORES', 'LIMIT', 0, SWEEP_MAX + 1)
      if #entries > 2 * SWEEP_MAX then
        return nil
      end
      local costs = {}
      if weighted[i] and #entries > 0 then
        local ids_of = {}
        for j = 1, #entries, 2 do
          ids_of[#ids_of + 1] = entries[j]
        end
        for first = 1, #ids_of, 1000 do
          local chunk = { unpack(ids_of, first, math.min(first + 999, #ids_of)) }
          local units = redis.call('HMGET', h, unpack(chunk))
          for j = 1, #chunk do
            costs[chunk[j]] = tonumber(units[j]) or 1
          end
        end
      end
      -- The ends, in order, of the entries still held at `from`, and the load
      -- then: all of them but the reservations that start later.
      local held, ends, end_units, load = {}, {}, {}, 0
      for j = 1, #entries, 2 do
        local id, ends_at = entries[j], tonumber(entries[j + 1]) + spans[i]
        if ends_at > from then
          local units = costs[id] or 1
          held[id] = units
          ends[#ends + 1], end_units[#end_units + 1] = ends_at, units
          load = load + units
        end
      end
      local starts, start_units = {}, {}
      local later = redis.call('ZRANGEBYSCORE', q, from + 1, '+inf', 'WITHSCORES')
      for j = 1, #later, 2 do
        local units = held[later[j]]
        if units then
          starts[#starts + 1], start_units[#start_units + 1] = tonumber(later[j + 1]), units
          load = load - units
        end
      end
      -- Segments: from times[j] on, the load is loads[j]. At one instant, ends
      -- come before starts (an entry no longer holds its slot at its end).
      local times, loads = { from }, { load }
      local a, b = 1, 1
      while a <= #ends or b <= #starts do
        local at
        if b > #starts or (a <= #ends and ends[a] <= starts[b]) then
          at, load, a = ends[a], load - end_units[a], a + 1
        else
          at, load, b = starts[b], load + start_units[b], b + 1
        end
        if times[#times] == at then
          loads[#loads] = load
        else
          times[#times + 1], loads[#loads + 1] = at, load
        end
      end
      -- The first instant with no segment over `cap` within `length` after it.
      local at, j = from, 1
      while true do
        while times[j + 1] and times[j + 1] <= at do
          j = j + 1
        end
        local bad
        local m = j
        while times[m] and times[m] < at + length do
          if loads[m] > cap and (times[m + 1] == nil or times[m + 1] > at) then
            bad = m
            break
          end
          m = m + 1
        end
        if not bad then
          return at
        end
        if not times[bad + 1] then
          return nil
        end
        at, j = times[bad + 1], bad + 1
      end
    end

    -- Moving up (see "Moving up"): the earliest instant every quota has
    -- room for it through its whole hold, each entry counted from its
    -- start only.
    local t, found, large = now, false, false
    for _ = 1, 4 do
      local settled = true
      for i = 1, n do
        if u[i] > 0 then
          local free = sweep(i, u[i] + keep[i], t, hold + spans[i])
          if not free then
            settled, large = false, true
            break
          end
          if free > t then
            t, settled = free, false
          end
        end
      end
      if large or t >= old_at then
        break
      end
      if settled then
        at, floor_at, found = t, t, true
        break
      end
    end
    -- A larger log: the reservations that start after this one would end
    -- need not be counted. Which ones depends on the instant found, so
    -- instants are guessed from now on, each guess counting fewer of
    -- them, until the instant found is no later than the guess. Only in
    -- logs where every entry costs 1: there the uncounted ones, whose
    -- scores are past the guess, are the last to leave, so the holder is
    -- found by rank.
    local guess = now
    for _ = 1, 4 do
      if not large then
        break
      end
      local excluded = {}
      for i = 1, n do
        if u[i] > 0 and not weighted[i] then
          excluded[i] = redis.call('ZCOUNT', KEYS[4 * i - 1], guess + hold + spans[i], '+inf')
        end
      end
      local t, floor, held, quota = place(u, keep, false, now, excluded, floored)
      if held or t >= old_at then
        break
      end
      if t <= guess then
        at, floor_at, limiting, found = t, floor, quota, true
        break
      end
      guess = t
    end
    if not found then
      -- Nothing earlier: the reservation stays as it was.
      at, floor_at = old_at, old_at
    end
  elseif not (run.move_up or jumped) then
    at, floor_at, blocked, limiting = place(u, keep, jump, at, NOTHING, floored)
  end
  if floored and not run.move_up and at > now then
    floor_at = math.max(floor_at, latest_floor())
  end
  if not floored or floor_at > at then
    floor_at = at
  end
  local wait = at - now
  local queued = 0
  if wait > 0 and not run.move_up then
    for i = 1, n do
      if ahead(i) > queued then
        queued = reserved[i]
      end
    end
    queued = queued + 1
  end
  local status = 0
  if run.move_up then
    if not old_at then
      status, wait, floor_at = 5, 0, now
    end
  elseif run.max_wait >= 0 and wait > run.max_wait then
    status = 1
  elseif max_queue >= 0 and wait > 0 and queued > max_queue then
    status = 2
  elseif blocked then
    status = 3
  else
    for i = 1, n do
      if sums[i] + u[i] > MAX_SUM then
        status, limiting = 2, i
        break
      end
    end
  end

  if status == 0 then
    local score = at + hold
    if strict then
      score = at + STRICT
    end
    for i = 1, n do
      if u[i] > 0 then
        local entry = pending[i]
        entry[#entry + 1], entry[#entry + 2] = score, id
        if u[i] ~= 1 then
          local costs = pending_costs[i]
          if not weighted[i] then
            -- The first entry of the log that costs other than 1: the
            -- hash starts with the sum of the others.
            weighted[i] = true
            costs[#costs + 1], costs[#costs + 2] = 's', sums[i]
          end
          costs[#costs + 1], costs[#costs + 2] = id, u[i]
        end
        sums[i] = sums[i] + u[i]
        if wait > 0 then
          local adds = queued_adds[i]
          adds[#adds + 1], adds[#adds + 2] = at, id
          if floored then
            local floors = pending_floors[i] or {}
            pending_floors[i] = floors
            floors[#floors + 1], floors[#floors + 2] = floor_at, id
            call_floors[id] = floor_at
          end
        end
        if wait > 0 and reserved[i] and not run.move_up then
          reserved[i] = reserved[i] + 1
        end
        written[i] = true
        local ttl = math.ceil((at - now + hold + spans[i]) / 1000)
        if ttl > (needed[i] or 0) then
          needed[i] = ttl
        end
        if jump then
          local jz = KEYS[4 * n + 1 + i]
          local before = jumper_sum(i)
          redis.call('ZADD', jz, score, id .. ':' .. string.format('%.0f', u[i]))
          jumper_sums[i] = before + u[i]
          if redis.call('PTTL', jz) < ttl + 1000 then
            redis.call('PEXPIRE', jz, ttl + 1000)
          end
        end
      end
    end
    if at > base then
      base = at
    end
    if floored and wait > 0 then
      floor_base = floor_at
    end
    recorded = true
  end
  out[#out + 1], out[#out + 2], out[#out + 3], out[#out + 4] = status, wait, queued, limiting
  out[#out + 1] = floor_at - now
end

if not recorded then
  return out
end
-- The log, costs, queue and floors of a quota share one expiry, which
-- covers every entry recorded in them: when an entry needs longer, they are
-- extended (never shortened) to a second past what it needs, and a key
-- made here gets the same expiry. So most calls extend nothing. The
-- anchor, with the signature, expires with the longest-kept of them
-- (`had_log` counts the signature: an anchor that holds it is only ever
-- extended).
local signature_expiry = 0
for i = 1, n do
  if written[i] then
    local z, h, q = KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1]
    local expiry = -2
    if had_log[i] then
      expiry = redis.call('PTTL', z)
    end
    local extend = expiry < needed[i]
    if extend then
      expiry = needed[i] + 1000
    end
    local function expire(key, existed)
      if not existed then
        redis.call('PEXPIRE', key, expiry)
      elseif extend then
        redis.call('PEXPIRE', key, expiry, 'GT')
      end
    end
    if weighted[i] then
      -- After any `s` pending: the later value of a field wins.
      local costs = pending_costs[i]
      costs[#costs + 1], costs[#costs + 2] = 's', sums[i]
    end
    flush(i)
    local adds = queued_adds[i]
    if #adds > 0 then
      redis.call('ZADD', q, unpack(adds))
    end
    if #adds > 0 or had_queue[i] then
      -- Only the reservations still ahead (instants are whole
      -- microseconds).
      redis.call('ZREMRANGEBYSCORE', q, '-inf', now - 1)
      expire(q, had_queue[i])
    end
    local floors = pending_floors[i]
    if floors then
      -- A floor a span past tells nothing more than its entry's score.
      local f = KEYS[4 * i]
      redis.call('ZREMRANGEBYSCORE', f, '-inf', now - spans[i])
      redis.call('ZADD', f, unpack(floors))
      if redis.call('PTTL', f) < expiry then
        redis.call('PEXPIRE', f, expiry)
      end
    end
    expire(z, had_log[i])
    if weighted[i] then
      expire(h, had_costs[i])
    end
    if (extend or not held) and expiry > signature_expiry then
      signature_expiry = expiry
    end
  end
end
if not held then
  redis.call('ZADD', anchor, '+inf', signature)
  -- The anchor may be new (its quota spent nothing): it has no expiry.
  if redis.call('PTTL', anchor) < signature_expiry then
    redis.call('PEXPIRE', anchor, signature_expiry)
  end
elseif signature_expiry > 0 then
  redis.call('PEXPIRE', anchor, signature_expiry, 'GT')
end
return out
