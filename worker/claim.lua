-- Claim queued jobs for one worker in a single round trip (arq's own claim takes four per job:
-- WATCH, EXISTS, ZSCORE, MULTI/EXEC). Same rule as arq: a job is ours if it is due and no worker
-- holds its in-progress key. The key we set is a short lease naming this worker, renewed by its
-- heartbeat (heartbeat.lua) while the job runs, so a dead worker's jobs come back in one lease.
-- A running job is parked: its queue score becomes its lease's end (the heartbeat moves it on), so
-- the due range holds only jobs a worker could take and polls do not re-read every running job.
-- The worker keeps the score it claimed the job at and writes the job's next score from that
-- (worker/group_commit.py), as arq's ZINCRBY would have. If a dead worker's lease lapses, the
-- job is due again by then. A running job found in the due range (its score lowered by a
-- settle's call-back, or never parked) is parked here to its lease's end.
-- Then, with slots left, batch lines from the tenants' lanes: the arq queue (single jobs, deferred
-- and retried jobs) always goes first, and lanes take turns by smooth weighted round robin.
-- KEYS[1] queue zset, KEYS[2] set of non-empty lanes, KEYS[3] lane weights hash,
-- KEYS[4] round robin credits hash, KEYS[5] the fleet's loads hash ('': every worker claims alike)
-- ARGV[1] in-progress key prefix, ARGV[2] lease ms, ARGV[3] now ms,
-- ARGV[4] how many to claim at most (the worker's free slots), ARGV[5] owner (worker id),
-- ARGV[6] lane key prefix, ARGV[7] lane window (lines one tenant may have out per unit of weight;
-- 0 = take nothing from lanes), ARGV[8] suffix of a lane's out set,
-- ARGV[9] how many due jobs to read from the queue here (the poll's read and claim in one round trip;
-- 0: read none, take the candidates given),
-- ARGV[10] arq's job key prefix, ARGV[11] its try count key prefix, ARGV[12] its abort zset ('': none):
-- with a prefix, each claimed job also gets the start of arq's run_job done here (read its payload,
-- count the try, clear its abort mark), which is then one round trip less per job; '': not done,
-- ARGV[13] this worker's load (its running jobs), ARGV[14] '1' if it can take more (CPU and slots
-- to spare), ARGV[15] how long (ms) another worker's load counts,
-- ARGV[16..] with a read: ids to pass over (the worker's jobs whose end arq has recorded while their
-- task still runs: a deferred one may be due already, and a claim of it would leave a lease no one
-- renews), without: the candidate job ids, due first.
-- Returns a flat list {id, score, id, score, ...} of claimed jobs, each with the score it had; with
-- ARGV[10], {id, score, payload (nil if gone), try, aborted (0/1), ...}. A job the calling worker runs
-- already may come back (its lease lost with a failed-over primary): the worker does not start it twice,
-- and the lease is its own again. {'yield'}: a busier worker with room to spare takes the jobs (below).
local out = {}
local now = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local parked = now + tonumber(ARGV[2])
local ids = {}
local read = tonumber(ARGV[9])
local FIRST = 16

-- Workers fill one at a time: a worker with no jobs takes none while another (noted lately, with CPU
-- and slots to spare) runs some; it joins once none has room. An event loop's cost per job falls as its
-- load rises (calls and round trips share its wake-ups), so a fleet spreading a load thinly over every
-- worker pays more CPU per job than one carrying it in as few as it needs. A worker with jobs never
-- yields (its jobs hold provider slots: moving load back and forth would only churn).
local fleet = KEYS[5]
local function note(load, room)
  redis.call('HSET', fleet, ARGV[5], load .. ':' .. room .. ':' .. ARGV[3])
end
if fleet ~= '' and tonumber(ARGV[13]) == 0 then
  local me, fresh = ARGV[5], tonumber(ARGV[15])
  local all = redis.call('HGETALL', fleet)
  for i = 1, #all, 2 do
    if all[i] ~= me then
      local load, room, at = string.match(all[i + 1], '^(%d+):(%d):(%d+)$')
      at = tonumber(at)
      if at == nil or now - at > 60000 then
        redis.call('HDEL', fleet, all[i])  -- a worker gone without saying so
      elseif room == '1' and tonumber(load) > 0 and now - at <= fresh then
        note(0, ARGV[14])
        return {'yield'}
      end
    end
  end
end

if read > 0 then
  local skip = {}
  for i = FIRST, #ARGV do skip[ARGV[i]] = true end
  local got = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[3], 'LIMIT', 0, read + #ARGV - FIRST + 1)
  for _, id in ipairs(got) do
    if not skip[id] then ids[#ids + 1] = id end
  end
else
  for i = FIRST, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local start = ARGV[10] ~= ''

-- Redis commands taking many arguments at once, in chunks (Lua's unpack has a limit of a few thousand)
local CHUNK = 500  -- even: a ZADD's score-member pairs never split
local function many(cmd, key, items)
  local replies = {}
  for i = 1, #items, CHUNK do
    local part = {unpack(items, i, math.min(#items, i + CHUNK - 1))}
    local r
    if key then r = redis.call(cmd, key, unpack(part)) else r = redis.call(cmd, unpack(part)) end
    if type(r) == 'table' then
      for _, v in ipairs(r) do replies[#replies + 1] = v end
    end
  end
  return replies
end

-- the jobs are ours: noted as taken here, handed out at the end (emit) with arq's start transaction
-- (GET job, INCR + EXPIRE try, ZREM abort) done for all of them with a few calls
local took_ids, took_scores = {}, {}
local function took(id, score)
  took_ids[#took_ids + 1] = id
  took_scores[#took_scores + 1] = score
end
local function emit()
  local payloads, aborted = {}, {}
  if start and #took_ids > 0 then
    local jobs = {}
    for i, id in ipairs(took_ids) do jobs[i] = ARGV[10] .. id end
    payloads = many('MGET', nil, jobs)
    if ARGV[12] ~= '' then
      aborted = many('ZMSCORE', ARGV[12], took_ids)
      local marked = {}
      for i, id in ipairs(took_ids) do
        if aborted[i] then marked[#marked + 1] = id end
      end
      if #marked > 0 then many('ZREM', ARGV[12], marked) end
    end
  end
  for i, id in ipairs(took_ids) do
    out[#out + 1] = id
    out[#out + 1] = took_scores[i]
    if start then
      out[#out + 1] = payloads[i]
      local try = ARGV[11] .. id
      out[#out + 1] = redis.call('INCR', try)
      redis.call('EXPIRE', try, 88400)  -- arq's own expiry of the count
      out[#out + 1] = aborted[i] and 1 or 0
    end
  end
  return out
end
for _, id in ipairs(ids) do
  if #took_ids >= want then break end
  local ip = ARGV[1] .. id
  local ttl = redis.call('PTTL', ip)
  if ttl == -2 then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= now then
      redis.call('SET', ip, ARGV[5], 'PX', ARGV[2])
      redis.call('ZADD', KEYS[1], 'XX', parked, id)
      took(id, score)
    end
  elseif ttl > 0 then
    redis.call('ZADD', KEYS[1], 'XX', 'GT', now + ttl, id)
  end
end

local function noted()
  -- this worker's load after the claim, for the others' next claims; one that found fewer jobs than it
  -- asked for has no room to offer (it may sleep a while now: nobody should wait for it)
  if fleet ~= '' then
    local got = #took_ids
    note(tonumber(ARGV[13]) + got, got < want and '0' or ARGV[14])
  end
  return emit()
end

local need = want - #took_ids
local window = tonumber(ARGV[7])
if need <= 0 or window <= 0 then return noted() end
local names = redis.call('SMEMBERS', KEYS[2])
if #names == 0 then return noted() end
table.sort(names)  -- ties go the same way in every call

-- A tenant's lines out (claimed from its lane and held by a worker: running or waiting there for a
-- provider) are bounded by window * weight. Behind a saturated provider each tenant then holds a share
-- of the waiting lines proportional to its weight, so the provider's slots go to tenants at their
-- weights. A line a worker gave back to the queue (deferred: its provider is saturated or open, or its
-- budget is spent) no longer counts: the same tenant's lines for other providers must not wait behind
-- it (head-of-line). It comes back from the queue, which goes before the lanes, when it is due.
local function lines_out(okey, bound)
  local n = redis.call('ZCARD', okey)
  if n < bound then return n end
  -- at the bound: drop the oldest entries no worker holds any more (finished, or deferred), rotate the rest
  local olds = redis.call('ZRANGE', okey, 0, math.max(16, 2 * need) - 1)
  for _, id in ipairs(olds) do
    if redis.call('EXISTS', ARGV[1] .. id) == 1 then
      redis.call('ZADD', okey, now, id)
    else
      redis.call('ZREM', okey, id)
      n = n - 1
    end
  end
  return n
end

local lanes = {}
for _, name in ipairs(names) do
  local w = math.max(1, tonumber(redis.call('HGET', KEYS[3], name) or '1') or 1)
  local key = ARGV[6] .. name
  if redis.call('EXISTS', key) == 0 then
    -- empty: it leaves the rotation and banks no credit
    redis.call('SREM', KEYS[2], name)
    redis.call('HDEL', KEYS[4], name)
  else
    local okey = key .. ARGV[8]
    local bound = window * w
    local n = lines_out(okey, bound)
    if n < bound then
      local cur = tonumber(redis.call('HGET', KEYS[4], name) or '0') or 0
      lanes[#lanes + 1] = {name = name, w = w, key = key, okey = okey, bound = bound, n = n, cur = cur}
    end
  end
end

-- Up to k lines from the head of lane l in one go: the ones not in the queue already are ours (-> how
-- many, and whether the lane is empty now).
local function take_lane(l, k)
  local head = redis.call('ZRANGE', l.key, 0, k - 1, 'WITHSCORES')
  local ids, scores = {}, {}
  for i = 1, #head, 2 do
    ids[#ids + 1] = head[i]
    scores[#scores + 1] = head[i + 1]
  end
  local got = 0
  if #ids > 0 then
    many('ZREM', l.key, ids)
    local queued = many('ZMSCORE', KEYS[1], ids)  -- never in both: a line in the queue runs from there
    local parks, outs = {}, {}
    for i, id in ipairs(ids) do
      if not queued[i] then
        -- from here on an ordinary arq job: finish, retry, lease expiry and reconciliation as usual
        redis.call('SET', ARGV[1] .. id, ARGV[5], 'PX', ARGV[2])
        parks[#parks + 1] = parked
        parks[#parks + 1] = id
        outs[#outs + 1] = now
        outs[#outs + 1] = id
        took(id, scores[i])
        got = got + 1
      end
    end
    if got > 0 then
      many('ZADD', KEYS[1], parks)
      many('ZADD', l.okey, outs)
    end
  end
  return got, #ids < k or redis.call('EXISTS', l.key) == 0
end

-- Rounds of smooth weighted round robin: each plans the picks still needed without a Redis call, then
-- takes each lane's picks in one go. A lane that ran empty leaves the rotation (its picks go to the
-- others next round); one at its bound keeps its credit for the next claim.
local taken = 0
while taken < need and #lanes > 0 do
  local rot = {}
  for _, l in ipairs(lanes) do
    l.want = 0
    rot[#rot + 1] = l
  end
  for _ = 1, need - taken do
    if #rot == 0 then break end
    local total, best, at = 0, nil, 0
    for i, l in ipairs(rot) do
      l.cur = l.cur + l.w
      total = total + l.w
      if best == nil or l.cur > best.cur then best, at = l, i end
    end
    best.cur = best.cur - total
    best.want = best.want + 1
    if best.n + best.want >= best.bound then table.remove(rot, at) end
  end
  local left = {}
  for _, l in ipairs(lanes) do
    local empty = false
    if l.want > 0 then
      local got
      got, empty = take_lane(l, l.want)
      taken = taken + got
      l.n = l.n + got
    end
    if empty then
      -- it leaves the rotation and banks no credit
      redis.call('SREM', KEYS[2], l.name)
      redis.call('HDEL', KEYS[4], l.name)
    elseif l.n >= l.bound then
      redis.call('HSET', KEYS[4], l.name, l.cur)
    else
      left[#left + 1] = l
    end
  end
  lanes = left
end
for _, l in ipairs(lanes) do redis.call('HSET', KEYS[4], l.name, l.cur) end
return noted()
