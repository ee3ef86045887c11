-- One step of a batch's reconciliation: find lines whose job was lost (no result and no arq job:
-- Redis lost writes, or a job was deleted without a result) and queue them again from the payload
-- stored at enqueue. Lines seen with a result drop their stored payload. A line lost more than
-- ARGV[8] times gets an error result instead, so the batch always ends.
-- Result writes are exactly-once (complete.lua's HSETNX), so a line queued again is never counted
-- twice. Every state a line passes through (queued, running, deferred, answered, cancelled) has a
-- job key or a result, each written atomically with the other changes, so "neither" means lost.
-- KEYS[1] specs hash, KEYS[2] ids hash, KEYS[3] results hash, KEYS[4] arq queue, KEYS[5] batch hash,
-- KEYS[6] done list, KEYS[7] requeued hash, KEYS[8] finalize job key, KEYS[9] active batches set,
-- KEYS[10] the batch's lane (lines waiting for their turn), KEYS[11] set of non-empty lanes
-- ARGV[1] HSCAN cursor, ARGV[2] HSCAN count, ARGV[3] arq job key prefix, ARGV[4] in-progress key
-- prefix, ARGV[5] batch id, ARGV[6] now ms, ARGV[7] job expiry ms, ARGV[8] max requeues per line,
-- ARGV[9] finalize job id, ARGV[10] finalize payload, ARGV[11] now (unix s), ARGV[12] lane name
-- A line queued again goes back to its lane, so it takes its tenant's turn like any other.
-- Returns {next cursor, dropped, requeued, relinked, failed, status}; cursor '0' = done.
--#include shared/jobs/_finish.lua
local status = redis.call('HGET', KEYS[5], 'status')
if status == 'finalizing' then
  -- the job that completes the batch must exist (queued by _finish.lua when the last line landed)
  if redis.call('EXISTS', KEYS[8]) == 0 and not redis.call('ZSCORE', KEYS[4], ARGV[9]) then
    redis.call('SET', KEYS[8], ARGV[10], 'PX', 86400000)
    redis.call('ZADD', KEYS[4], ARGV[6], ARGV[9])
    return {'0', 0, 0, 1, 0, status}
  end
  return {'0', 0, 0, 0, 0, status}
end
if status == 'validating' then return {'0', 0, 0, 0, 0, status} end
if status ~= 'in_progress' and status ~= 'cancelling' then
  -- ended (or gone): nothing left to watch
  redis.call('DEL', KEYS[1], KEYS[7])
  redis.call('SREM', KEYS[9], ARGV[5])
  return {'0', 0, 0, 0, 0, status or false}
end
local scan = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local kv = scan[2]
local dropped, requeued, relinked, failed = 0, 0, 0, 0
local now_ms = tonumber(ARGV[6])
for i = 1, #kv, 2 do
  local cid, payload = kv[i], kv[i + 1]
  local id = ARGV[5] .. ':' .. cid
  local idx = redis.call('HGET', KEYS[2], cid)
  if not idx or redis.call('HEXISTS', KEYS[3], idx) == 1 then
    redis.call('HDEL', KEYS[1], cid)
    dropped = dropped + 1
  elseif redis.call('EXISTS', ARGV[3] .. id) == 1 then
    -- the job exists but nothing will run it: neither queued (in the queue or its lane) nor held by
    -- a worker
    if not redis.call('ZSCORE', KEYS[4], id) and not redis.call('ZSCORE', KEYS[10], id)
      and redis.call('EXISTS', ARGV[4] .. id) == 0 then
      redis.call('ZADD', KEYS[10], now_ms, id)
      redis.call('SADD', KEYS[11], ARGV[12])
      relinked = relinked + 1
    end
  else
    local n = redis.call('HINCRBY', KEYS[7], cid, 1)
    if status == 'cancelling' or n > tonumber(ARGV[8]) then
      local code, msg = 'job_lost', 'the request was lost ' .. (n - 1) .. ' times and not run again'
      if status == 'cancelling' then
        local reason = redis.call('HGET', KEYS[5], 'cancel_reason') or 'cancelled'
        code, msg = 'batch_' .. reason, 'batch ended (' .. reason .. ') before this request ran'
      end
      local res = cmsgpack.pack({
        id = id, status_code = 500, custom_id = cid, batch_id = ARGV[5], line = tonumber(idx),
        completed_at = tonumber(ARGV[11]), error = {code = code, message = msg, error_class = 'final'},
      })
      if redis.call('HSETNX', KEYS[3], idx, res) == 1 then
        redis.call('RPUSH', KEYS[6], idx)
        redis.call('HINCRBY', KEYS[5], 'failed', 1)
        failed = failed + 1
      end
      redis.call('HDEL', KEYS[1], cid)
    else
      redis.call('SET', ARGV[3] .. id, payload, 'PX', ARGV[7])
      redis.call('ZADD', KEYS[10], now_ms, id)
      redis.call('SADD', KEYS[11], ARGV[12])
      requeued = requeued + 1
    end
  end
end
if failed > 0 then
  status = finish(KEYS[5], ARGV[11], KEYS[4], KEYS[8], ARGV[9], ARGV[10]) or status
end
return {scan[1], dropped, requeued, relinked, failed, status}
