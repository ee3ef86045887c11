-- Admit one provider call, or say why not: breaker (incl. the half-open probe lease), concurrency
-- lease against the (adaptive) limit, and rpm/tpm reservation, all in one step.
-- KEYS[1] state hash, KEYS[2] leases zset, KEYS[3] probes zset, KEYS[4] events stream,
-- KEYS[5] waiting zset (jobs deferred because the scope was saturated), KEYS[6..n-1] the waiting
-- zsets of the job's other candidates (an admitted job leaves every line it stood in), KEYS[n] the
-- workers refused lately as saturated (hash: gate prefix -> server ms)
-- ARGV[1] scope, ARGV[2] lease id, ARGV[3] estimated tokens,
-- ARGV[4] max_concurrency, ARGV[5] rpm (0 = none), ARGV[6] tpm (0 = none), ARGV[7] lease ms,
-- ARGV[8] probe lease ms, ARGV[9] half-open probes, ARGV[10] adaptive 1/0,
-- ARGV[11] retry hint ms while forced open, ARGV[12] events stream max length,
-- ARGV[13] waiter id ('' = the caller will not defer): a saturated scope keeps a virtual line of
-- deferred jobs and tells each to come back about when its turn comes, so a deep backlog does not
-- spin through the queue being refused over and over. ARGV[14] '1': the waiter is a single
-- (interactive) job: it does not queue behind the batch lines waiting, only for the next free slot
-- (a freed slot calls the earliest waiter back, settle.lua, so it goes first).
-- ARGV[15] '1': count the workers holding the scope's slots (else 0 comes back for them: the caller
-- counted them lately, and reading the leases is about half of this script's cost).
-- Returns {1, gen, probe 1/0, limit generation, effective limit, in flight, workers holding slots}
-- when admitted, {0, reason, retry_ms} when not.
--#include _gate.lua

local S, L, P, E = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local scope, id = ARGV[1], ARGV[2]
local est = tonumber(ARGV[3])
local max_conc, rpm, tpm = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local lease_ms, probe_ms, n_probes = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local now = now_ms()
local WANTING = KEYS[#KEYS]
local me = owner_of(ARGV[2])

local h = redis.call('HMGET', S, 'st', 'until', 'lim', 'lgen', 'rtat', 'ttat', 'lat', 'gen')
local st = h[1] or 'closed'

-- 1. breaker
if st == 'forced_open' then
  return {0, 'forced_open', math.ceil(tonumber(ARGV[11]))}
end
if st == 'open' then
  local until_ms = num(h[2], 0)
  if now < until_ms then
    return {0, 'open', math.ceil(until_ms - now)}
  end
  h[8] = transition(S, E, ARGV[12], scope, 'half_open', 'wait_elapsed', now, {})
  redis.call('DEL', P)
  st = 'half_open'
end
local probe = 0
if st == 'half_open' then
  -- An expired probe (its worker died) frees its slot here, so a killed probe cannot wedge the breaker.
  redis.call('ZREMRANGEBYSCORE', P, '-inf', fmt(now))
  if redis.call('ZCARD', P) >= n_probes then
    local first = redis.call('ZRANGE', P, 0, 0, 'WITHSCORES')
    return {0, 'half_open_busy', math.ceil(math.min(1000, tonumber(first[2]) - now))}
  end
  probe = 1
end

-- 2. concurrency: expired leases belong to crashed workers and free themselves here.
redis.call('ZREMRANGEBYSCORE', L, '-inf', fmt(now))
local limit = max_conc
if ARGV[10] == '1' then
  limit = math.max(1, math.floor(math.min(num(h[3], max_conc), max_conc)))
end
local inflight = redis.call('ZCARD', L)
local waiter = ARGV[13] or ''
if inflight >= limit then
  -- Until a slot frees: about one mean call latency spread over the calls in flight.
  local lat = num(h[7], 100)
  local wait = math.max(5, lat / math.max(1, inflight))
  if waiter ~= '' then
    local W = KEYS[5]
    redis.call('ZREMRANGEBYSCORE', W, '-inf', fmt(now - 2000))
    local ahead = redis.call('ZCOUNT', W, fmt(now), '+inf')
    if redis.call('ZSCORE', W, waiter) then ahead = ahead - 1 end
    if ARGV[14] == '1' then ahead = 0 end
    -- slots free at about limit / latency per ms: come back when the jobs ahead have had theirs
    wait = math.max(wait, (ahead + 1) * lat / limit)
    redis.call('ZADD', W, fmt(now + wait), waiter)
  end
  redis.call('HSET', WANTING, me, fmt(now))  -- this worker counts in the others' share though it holds none
  redis.call('PEXPIRE', WANTING, 60000)  -- a scope no one asks for any more leaves no key behind
  return {0, 'saturated', math.ceil(wait)}
end

-- 3. rate: GCRA with a one-minute burst; tat is when the bucket would be empty again.
local rtat, ttat
if rpm > 0 then
  rtat = math.max(num(h[5], 0), now) + 60000 / rpm
  if rtat - now > 60000 then
    return {0, 'rate_limited', math.ceil(rtat - now - 60000)}
  end
end
if tpm > 0 then
  -- A call larger than the whole minute's budget still runs, alone, when the bucket is empty.
  ttat = math.max(num(h[6], 0), now) + math.min(est, tpm) * 60000 / tpm
  if ttat - now > 60000 then
    return {0, 'rate_limited', math.ceil(ttat - now - 60000)}
  end
end

redis.call('ZADD', L, fmt(now + lease_ms), id)
if waiter ~= '' then
  for i = 5, #KEYS - 1 do redis.call('ZREM', KEYS[i], waiter) end
end
if probe == 1 then redis.call('ZADD', P, fmt(now + probe_ms), id) end
if rtat then redis.call('HSET', S, 'rtat', fmt(rtat)) end
if ttat then redis.call('HSET', S, 'ttat', fmt(ttat)) end
local gen = num(h[8], 0)
if ARGV[15] ~= '1' then
  return {1, gen, probe, num(h[4], 0), limit, inflight + 1, 0}
end
return {1, gen, probe, num(h[4], 0), limit, inflight + 1, count_owners(L, WANTING, me, now)}
