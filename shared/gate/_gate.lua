-- Shared by the gate scripts (admit, settle, renew, gate_force, gate_snapshot): the server clock,
-- the breaker's sliding window and its transitions. Times are milliseconds of the Redis server's
-- clock, so workers with skewed clocks still agree.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

-- Lua's tostring keeps 14 digits: enough for ms since 1970 with 0.1 ms, so format explicitly.
local function fmt(x)
  return string.format('%.3f', x)
end

local function num(v, default)
  local n = tonumber(v)
  if n == nil then return default end
  return n
end

-- An integer argument for HINCRBY from a stored count (nil counts as 0): never "-0", never a fraction.
local function int_arg(v)
  return string.format('%d', math.floor(num(v, 0)))
end

local function neg_int(v)
  return int_arg(0 - math.floor(num(v, 0)))
end

-- Sliding window of `nb` buckets of `bucket_ms` each, kept as running totals (c calls, f failures,
-- s slow) plus per-bucket counts, so rolling forward costs one step per bucket that left the window.
-- Returns the window's current bucket index after dropping expired buckets (writes the hash).
-- Integers handed to HINCRBY are built as `0 - x` of a floored number: a unary minus of zero formats
-- as "-0", which Redis 7 rejects ("value is not an integer").
local function win_roll(key, now, bucket_ms, nb)
  local b = math.floor(now / bucket_ms)
  local h = tonumber(redis.call('HGET', key, 'h'))
  if h == nil or b - h >= nb then
    redis.call('DEL', key)
    redis.call('HSET', key, 'h', b, 'c', 0, 'f', 0, 's', 0)
    return b
  end
  if b <= h then return h end
  for i = h - nb + 1, b - nb do
    local v = redis.call('HMGET', key, 'c' .. i, 'f' .. i, 's' .. i)
    if v[1] then
      redis.call('HINCRBY', key, 'c', neg_int(v[1]))
      redis.call('HINCRBY', key, 'f', neg_int(v[2]))
      redis.call('HINCRBY', key, 's', neg_int(v[3]))
      redis.call('HDEL', key, 'c' .. i, 'f' .. i, 's' .. i)
    end
  end
  redis.call('HSET', key, 'h', b)
  return b
end

-- The window's totals {calls, failures, slow} at `now`, without writing.
local function win_read(key, now, bucket_ms, nb)
  local b = math.floor(now / bucket_ms)
  local v = redis.call('HMGET', key, 'h', 'c', 'f', 's')
  local h = tonumber(v[1])
  if h == nil or b - h >= nb then return {0, 0, 0} end
  local c, f, s = num(v[2], 0), num(v[3], 0), num(v[4], 0)
  for i = h - nb + 1, b - nb do
    local o = redis.call('HMGET', key, 'c' .. i, 'f' .. i, 's' .. i)
    c, f, s = c - num(o[1], 0), f - num(o[2], 0), s - num(o[3], 0)
  end
  return {c, f, s}
end

-- Move the breaker to `to`: bump the generation (the fence that makes late outcomes from before
-- this moment harmless), remember the transition and append it to the capped events stream.
-- `fields` are extra name/value pairs for the stream entry (window figures, wait).
local function transition(state_key, events_key, maxlen, scope, to, reason, now, fields)
  local from = redis.call('HGET', state_key, 'st') or 'closed'
  local gen = redis.call('HINCRBY', state_key, 'gen', 1)
  redis.call('HSET', state_key, 'st', to, 'at', fmt(now), 'from', from, 'why', reason, 'hp_ok', 0, 'hp_slow', 0,
    'cf', 0)
  local entry = {'scope', scope, 'from', from, 'to', to, 'reason', reason, 'gen', gen, 'at_ms', fmt(now)}
  for _, v in ipairs(fields or {}) do entry[#entry + 1] = v end
  redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', unpack(entry))
  return gen
end

-- Open the breaker for a wait that grows with consecutive trips; `rand` in [0, 1) spreads it by
-- +-jitter so breakers that tripped together do not all probe at the same instant.
local function trip(state_key, events_key, maxlen, scope, reason, now, fields, base, growth, max_wait, jitter, rand)
  local trips = redis.call('HINCRBY', state_key, 'trips', 1)
  local wait = math.min(max_wait, base * growth ^ (trips - 1))
  wait = wait * (1 + jitter * (2 * rand - 1))
  redis.call('HSET', state_key, 'until', fmt(now + wait), 'wait', fmt(wait))
  fields[#fields + 1] = 'wait_ms'
  fields[#fields + 1] = fmt(wait)
  fields[#fields + 1] = 'trips'
  fields[#fields + 1] = trips
  return transition(state_key, events_key, maxlen, scope, 'open', reason, now, fields)
end

-- How many workers hold a scope's slots (each lease id is '<gate prefix>:<n>'), read off the leases
-- due to end first (enough to see every worker that holds a few), or were refused one in the last
-- second (the `wanting` hash, admit.lua): a worker holding more than its share stops passing its freed
-- slots to its own waiting jobs (worker/calls.py), so one that joined while another held every slot
-- gets its share too. `me` (this caller's prefix) holds a slot now: its own refusal note goes.
local OWNERS_SAMPLE = 32
local function owner_of(lease) return string.match(lease, '^(.*):%d+$') or lease end
local function count_owners(leases_key, wanting_key, me, now)
  local owners, seen = 0, {}
  local function count(o)
    if not seen[o] then
      seen[o] = true
      owners = owners + 1
    end
  end
  for _, m in ipairs(redis.call('ZRANGE', leases_key, 0, OWNERS_SAMPLE - 1)) do
    count(owner_of(m))
  end
  local wanting = redis.call('HGETALL', wanting_key)
  for i = 1, #wanting, 2 do
    local at = tonumber(wanting[i + 1]) or 0
    if wanting[i] == me or now - at > 60000 then
      redis.call('HDEL', wanting_key, wanting[i])  -- holds a slot now, or gone
    elseif now - at <= 1000 then
      count(wanting[i])
    end
  end
  return owners
end
