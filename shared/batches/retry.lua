-- Re-run a finished batch's failed lines into the same batch (fusebox retry), in steps, each atomic.
-- While a retry is under way the batch is 'validating' with a 'retry_started_at' field, so no
-- completion can finish it early; seal.lua then moves it to in_progress and the last line
-- finalizes it again. Every step may run again after an interrupted retry.
-- KEYS[1] batch hash, KEYS[2] results hash, KEYS[3] done list, KEYS[4] retry set (hash idx -> 1),
-- KEYS[5] scratch list for the compacted done list, KEYS[6] the batch's lane, KEYS[7] ids hash,
-- KEYS[8] expiry zset, KEYS[9] specs hash (custom_id -> payload, for reconciliation),
-- KEYS[10] set of active batches, KEYS[11] set of non-empty lanes
-- ARGV[1] step, ARGV[2] now (unix s), then per step:
--   begin:   ARGV[3] batch id -> {outcome, status}; outcome 'begun'|'resumed'|'busy'|'missing'
--   mark:    ARGV[3..] line indexes to retry (kept only if their stored result is a failure) -> n
--   compact: ARGV[3] start, ARGV[4] count -> next start, or -1 when the done list was swapped
--   requeue: ARGV[3] now ms, ARGV[4] job expiry ms, ARGV[5] arq job key prefix, ARGV[6] batch id,
--            ARGV[7] lane name, then triples (index, custom_id, job payload) -> lines queued
--   finish:  lines still marked but not queued get their done entry back -> n
local function failed(idx)
  local r = redis.call('HGET', KEYS[2], idx)
  return r and cmsgpack.unpack(r).error ~= nil
end

local function retrying()
  return redis.call('HGET', KEYS[1], 'status') == 'validating'
    and redis.call('HEXISTS', KEYS[1], 'retry_started_at') == 1
end

local step = ARGV[1]
if step == 'begin' then
  local st = redis.call('HGET', KEYS[1], 'status')
  if not st then return {'missing', false} end
  if retrying() then return {'resumed', st} end
  if st ~= 'completed' and st ~= 'expired' and st ~= 'cancelled' and st ~= 'failed' then
    return {'busy', st}
  end
  redis.call('HDEL', KEYS[1], 'finalizing_at', 'completed_at', 'cancelling_at', 'cancelled_at',
    'expired_at', 'failed_at', 'cancel_reason')
  redis.call('HSET', KEYS[1], 'status', 'validating', 'retry_started_at', ARGV[2], 'retried_from', st)
  redis.call('HINCRBY', KEYS[1], 'retries', 1)
  -- The finalize job gave these a TTL; the batch is live again until it finalizes anew.
  for _, k in ipairs({KEYS[1], KEYS[2], KEYS[3], KEYS[7]}) do redis.call('PERSIST', k) end
  local times = redis.call('HMGET', KEYS[1], 'created_at', 'expires_at')
  local created, expires = times[1], times[2]
  if created and expires then
    -- A fresh completion window, as long as the original one.
    local at = tonumber(ARGV[2]) + (tonumber(expires) - tonumber(created))
    redis.call('HSET', KEYS[1], 'expires_at', tostring(at))
    redis.call('ZADD', KEYS[8], at, ARGV[3])
  end
  return {'begun', st}
end

if step == 'finish' then
  -- Also run after a retry stopped early (e.g. cancelled): no marked line may stay out of the list.
  local n = 0
  for _, idx in ipairs(redis.call('HKEYS', KEYS[4])) do
    if redis.call('HEXISTS', KEYS[2], idx) == 1 then
      redis.call('RPUSH', KEYS[3], idx)
      n = n + 1
    end
  end
  redis.call('DEL', KEYS[4], KEYS[5])
  return n
end

if not retrying() then return -2 end

if step == 'mark' then
  local n = 0
  for i = 3, #ARGV do
    if failed(ARGV[i]) then
      redis.call('HSET', KEYS[4], ARGV[i], 1)
      n = n + 1
    end
  end
  return n
end

if step == 'compact' then
  -- Copy the done list without marked lines (each will be pushed again when it completes). One
  -- slice per call keeps Redis responsive; the last call swaps the lists, so entries appended
  -- meanwhile (lines of an interrupted retry completing) are never lost.
  local start, count = tonumber(ARGV[3]), tonumber(ARGV[4])
  if start == 0 then redis.call('DEL', KEYS[5]) end
  local items = redis.call('LRANGE', KEYS[3], start, start + count - 1)
  local keep = {}
  for _, idx in ipairs(items) do
    if redis.call('HEXISTS', KEYS[4], idx) == 0 then keep[#keep + 1] = idx end
  end
  if #keep > 0 then redis.call('RPUSH', KEYS[5], unpack(keep)) end
  if start + #items < redis.call('LLEN', KEYS[3]) then return start + #items end
  if redis.call('EXISTS', KEYS[5]) == 1 then
    redis.call('RENAME', KEYS[5], KEYS[3])
  else
    redis.call('DEL', KEYS[3])
  end
  return -1
end

if step == 'requeue' then
  local n = 0
  for i = 8, #ARGV, 3 do
    local idx, cid, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local owner = redis.call('HGET', KEYS[7], cid)
    -- A line rejected at submission and fixed in the file since has no id yet; a custom_id that
    -- belongs to another line is never taken.
    if (owner == idx or not owner) and redis.call('HDEL', KEYS[4], idx) == 1 and failed(idx) then
      if not owner then redis.call('HSET', KEYS[7], cid, idx) end
      redis.call('HDEL', KEYS[2], idx)
      redis.call('HINCRBY', KEYS[1], 'failed', -1)
      local id = ARGV[6] .. ':' .. cid
      redis.call('SET', ARGV[5] .. id, payload, 'PX', ARGV[4])
      redis.call('HSET', KEYS[9], cid, payload)
      redis.call('ZADD', KEYS[6], ARGV[3], id)
      n = n + 1
    end
  end
  if n > 0 then
    redis.call('SADD', KEYS[10], ARGV[6])
    redis.call('SADD', KEYS[11], ARGV[7])
    redis.call('HSET', KEYS[1], 'lane', ARGV[7])
  end
  return n
end

return redis.error_reply('unknown retry step ' .. tostring(step))
