-- Settle one admitted call: release its lease, reconcile its token reservation, record its outcome
-- in the breaker (window or half-open probe tally, fenced by generation), take any transition and
-- adjust the adaptive concurrency limit, all in one step.
-- KEYS[1] state hash, KEYS[2] window hash, KEYS[3] leases zset, KEYS[4] probes zset, KEYS[5] events
-- ARGV[1] scope, ARGV[2] lease id, ARGV[3] generation at admit, ARGV[4] probe 1/0,
-- ARGV[5] limit generation at admit, ARGV[6] outcome (success|failure|rate_limited|ignored),
-- ARGV[7] latency ms, ARGV[8] estimated tokens, ARGV[9] actual tokens (-1 = keep the estimate),
-- ARGV[10] random in [0, 1) for the open-wait jitter,
-- ARGV[11] tpm (0 = none), ARGV[12] failure rate threshold, ARGV[13] slow rate threshold,
-- ARGV[14] slow call ms, ARGV[15] minimum calls, ARGV[16] window bucket ms, ARGV[17] window buckets,
-- ARGV[18] open wait base ms, ARGV[19] wait growth, ARGV[20] wait max ms, ARGV[21] jitter fraction,
-- ARGV[22] half-open probes, ARGV[23] count 429 as failure 1/0, ARGV[24] adaptive 1/0,
-- ARGV[25] max_concurrency, ARGV[26] decrease factor, ARGV[27] increase step,
-- ARGV[28] success window, ARGV[29] events stream max length, ARGV[30] consecutive failures that trip,
-- ARGV[31] '1' if the call was admitted with the concurrency limit reached (the limit was binding),
-- ARGV[32] arq's in-progress key prefix, ARGV[33] '1': a job waiting in the caller's worker takes the
-- freed slot next (no call-back), ARGV[34] '1': the lease runs on for that job, which already calls
-- (the caller passes a slot on only after a success, with no rate limits, while the last such settle
-- said the scope may run it): no release and no new admission, ARGV[35] lease ms,
-- ARGV[36] '1': with a kept lease, count the workers holding the scope's slots (as admit does),
-- ARGV[37] the job id of a call that ran on a passed-on slot ('' = none): it leaves the scope's line
-- KEYS[6] the scope's waiting zset (its line of deferred jobs), KEYS[7] the arq queue,
-- KEYS[8] the workers refused lately as saturated (admit.lua)
-- Returns {state after, 1 if this outcome caused a transition else 0}; with ARGV[34] also: 1 if the
-- lease runs on (0: it had expired and was reclaimed), the effective limit, in flight, workers holding
-- slots (0: not counted), 1 if the scope may still run a passed-on slot (closed breaker, in flight
-- within the limit) else 0.
--#include _gate.lua

local S, W, L, P, E = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local scope, id = ARGV[1], ARGV[2]
local gen, probe, lgen = tonumber(ARGV[3]), ARGV[4] == '1', tonumber(ARGV[5])
local outcome, latency = ARGV[6], tonumber(ARGV[7])
local est, actual = tonumber(ARGV[8]), tonumber(ARGV[9])
local tpm = tonumber(ARGV[11])
local maxlen = ARGV[29]
local now = now_ms()

-- Releasing is idempotent, and a lease already reclaimed as expired is simply gone.
local keep = ARGV[34] == '1'
local released = 0
if not keep then released = redis.call('ZREM', L, id) end
if probe then redis.call('ZREM', P, id) end

-- Jobs deferred while this scope was saturated come back on an estimate of their turn. Each freed
-- slot also calls the next of them back now: closed-loop, so slots never idle while jobs sit in arq's
-- queue waiting for a turn estimated too late (a job waiting in a worker may take this slot first;
-- the one called back then waits there in turn). Not when the caller hands the slot to a job waiting in
-- its worker: the one called back would only be refused and deferred again. Waiters a worker still
-- holds (their in-progress key exists: they wait in its local line, woken by its own calls) are passed
-- over: lowering their parked score would call back no one and only make every worker's next poll
-- read them again.
if released == 1 and ARGV[33] ~= '1' then
  local nxt = redis.call('ZRANGEBYSCORE', KEYS[6], '(' .. fmt(now), '+inf', 'LIMIT', 0, 16)
  for _, job in ipairs(nxt) do
    if redis.call('EXISTS', ARGV[32] .. job) == 0 then
      if redis.call('ZSCORE', KEYS[7], job) then
        redis.call('ZADD', KEYS[6], fmt(now), job)
        redis.call('ZADD', KEYS[7], 'XX', 'LT', math.floor(now), job)
        break
      end
      redis.call('ZREM', KEYS[6], job)  -- answered already (a slot passed on to it): calls back no one
    end
  end
end
-- A job that ran on a slot passed on to it never had an admission take it out of the line it stood in.
if ARGV[37] ~= '' then redis.call('ZREM', KEYS[6], ARGV[37]) end

local h = redis.call('HMGET', S, 'st', 'gen', 'ttat', 'lat', 'lim', 'lgen', 'lmax', 'cf', 'okrun')
-- The state hash's plain writes of a counted call (latency, failure streak reset, success run) go out
-- together at the end: each redis.call() costs about as much as the work it does.
local sets = {}
local function push(t, ...)
  for _, x in ipairs({...}) do t[#t + 1] = x end
end
local st, cur_gen = h[1] or 'closed', num(h[2], 0)

if tpm > 0 and actual >= 0 and h[3] then
  local delta = math.min(actual, tpm) - math.min(est, tpm)
  if delta ~= 0 then
    redis.call('HSET', S, 'ttat', fmt(tonumber(h[3]) + delta * 60000 / tpm))
  end
end

if outcome == 'ignored' then
  if keep then redis.call('ZREM', L, id) end
  return {st, 0}
end

local rl_fails = ARGV[23] == '1'
local fault = outcome == 'failure' or (outcome == 'rate_limited' and rl_fails)
local counted = outcome == 'success' or fault
local slow = counted and latency >= tonumber(ARGV[14])
local moved = 0

if counted then
  push(sets, 'lat', fmt(num(h[4], latency) * 0.8 + latency * 0.2))
end

local base, growth, max_wait = tonumber(ARGV[18]), tonumber(ARGV[19]), tonumber(ARGV[20])
local jitter, rand = tonumber(ARGV[21]), tonumber(ARGV[10])
local slow_thr = tonumber(ARGV[13])

if counted and gen == cur_gen and (st == 'closed' or st == 'forced_closed') then
  local bucket_ms, nb = tonumber(ARGV[16]), tonumber(ARGV[17])
  -- The window's totals and this bucket's counts: one read and one write while the bucket is current
  -- (win_roll drops the buckets that left the window when it moves on).
  local b = math.floor(now / bucket_ms)
  local fb, sb = 'f' .. b, 's' .. b
  local v = redis.call('HMGET', W, 'h', 'c', 'f', 's', 'c' .. b, fb, sb)
  if tonumber(v[1]) ~= b then
    b = win_roll(W, now, bucket_ms, nb)
    fb, sb = 'f' .. b, 's' .. b
    v = redis.call('HMGET', W, 'h', 'c', 'f', 's', 'c' .. b, fb, sb)
  end
  local c, fails, slows = num(v[2], 0) + 1, num(v[3], 0), num(v[4], 0)
  local win = {'c', int_arg(c), 'c' .. b, int_arg(num(v[5], 0) + 1)}
  if fault then
    fails = fails + 1
    push(win, 'f', int_arg(fails), fb, int_arg(num(v[6], 0) + 1))
  end
  if slow then
    slows = slows + 1
    push(win, 's', int_arg(slows), sb, int_arg(num(v[7], 0) + 1))
  end
  redis.call('HSET', W, unpack(win))
  -- Failures in a row: successes earlier in the window must not hide a provider that just went down.
  local streak = 0
  if fault then
    streak = redis.call('HINCRBY', S, 'cf', 1)
  elseif num(h[8], 0) ~= 0 then
    push(sets, 'cf', 0)
  end
  -- forced_closed keeps the figures for ops but never trips.
  if st == 'closed' then
    local reason = nil
    if c >= tonumber(ARGV[15]) and fails / c >= tonumber(ARGV[12]) then
      reason = 'failure_rate'
    elseif c >= tonumber(ARGV[15]) and slows / c >= slow_thr then
      reason = 'slow_call_rate'
    elseif streak >= tonumber(ARGV[30]) then
      reason = 'consecutive_failures'
    end
    if reason then
      local fields = {'calls', c, 'failures', fails, 'slow', slows,
        'failure_rate', fmt(fails / c), 'slow_rate', fmt(slows / c), 'consecutive', streak}
      trip(S, E, maxlen, scope, reason, now, fields, base, growth, max_wait, jitter, rand)
      redis.call('DEL', W, P)
      st, moved = 'open', 1
    end
  end
elseif probe and counted and gen == cur_gen and st == 'half_open' then
  if fault then
    trip(S, E, maxlen, scope, 'probe_failed', now, {'outcome', outcome}, base, growth, max_wait, jitter, rand)
    redis.call('DEL', P)
    st, moved = 'open', 1
  else
    local ok = redis.call('HINCRBY', S, 'hp_ok', 1)
    local slows = redis.call('HINCRBY', S, 'hp_slow', slow and 1 or 0)
    if ok >= tonumber(ARGV[22]) then
      local fields = {'probes', ok, 'slow', slows}
      if slows / ok >= slow_thr then
        trip(S, E, maxlen, scope, 'probe_slow', now, fields, base, growth, max_wait, jitter, rand)
        st = 'open'
      else
        transition(S, E, maxlen, scope, 'closed', 'probes_succeeded', now, fields)
        redis.call('HSET', S, 'trips', 0)
        redis.call('HDEL', S, 'until')
        st = 'closed'
      end
      redis.call('DEL', W, P)
      moved = 1
    end
  end
end

-- Adaptive concurrency (AIMD): one multiplicative decrease per limit generation, so a burst of
-- 429s from calls admitted under the same limit shrinks it once; additive growth after a run of
-- successes. Shared by the whole fleet.
-- A 429 that came while the limit was binding marks the level the provider refused ('lmax'); growth
-- back up to just below it is as usual, but it probes that level PLATEAU_GROWTH times as fast, so the
-- limit spends most of its time at the provider's real capacity instead of paying a 429 every few
-- dozen calls to re-discover it. Past lmax + 1 (the capacity grew) growth is normal again. Without
-- 'lim' (never shrunk, or an ops reset) any remembered level is void.
local PLATEAU_GROWTH = 0.25
if ARGV[24] == '1' then
  local max_conc = tonumber(ARGV[25])
  local lim = math.min(num(h[5], max_conc), max_conc)
  local lmax = h[5] and tonumber(h[7]) or nil
  if outcome == 'rate_limited' then
    if lgen == num(h[6], 0) then
      local shrunk = math.max(1, lim * tonumber(ARGV[26]))
      redis.call('HSET', S, 'lim', fmt(shrunk), 'lgen', lgen + 1, 'okrun', 0)
      if ARGV[31] == '1' then
        redis.call('HSET', S, 'lmax', math.floor(lim))
      elseif not h[5] then
        redis.call('HDEL', S, 'lmax')
      end
    end
  elseif outcome == 'success' then
    local run = num(h[9], 0) + 1
    if run >= tonumber(ARGV[28]) then
      if lim < max_conc then
        local step = tonumber(ARGV[27])
        if lmax and lim >= lmax - 1 and lim < lmax + 1 then step = step * PLATEAU_GROWTH end
        push(sets, 'lim', fmt(math.min(max_conc, lim + step)))
      end
      run = 0
    end
    push(sets, 'okrun', run)
  end
end
if #sets > 0 then redis.call('HSET', S, unpack(sets)) end

if keep then
  local max_conc = tonumber(ARGV[25])
  local limit = max_conc
  if ARGV[24] == '1' then limit = math.max(1, math.floor(math.min(num(h[5], max_conc), max_conc))) end
  local inflight = redis.call('ZCARD', L)
  -- CH: 1 only if the lease was still there (ours) and now runs on; an expired one was reclaimed
  local kept = redis.call('ZADD', L, 'XX', 'CH', fmt(now + tonumber(ARGV[35])), id)
  local owners = 0
  if ARGV[36] == '1' then owners = count_owners(L, KEYS[8], owner_of(id), now) end
  local may = 0
  if (st == 'closed' or st == 'forced_closed') and inflight <= limit then may = 1 end
  return {st, moved, kept, limit, inflight, owners, may}
end
return {st, moved}
