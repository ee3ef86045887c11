-- Shared by complete/seal/cancel: when every line of a sealed batch has a result, move the batch
-- to its end state and queue the arq job that finalizes it (usage TTLs, webhook). The finalize
-- job id is fixed per batch, so it is queued at most once.
-- finish(batch_key, now, queue_key, fin_job_key, fin_job_id, fin_payload) -> new status or false
local function finish(batch_key, now, queue_key, fin_key, fin_id, fin_payload)
  local st = redis.call('HMGET', batch_key, 'total', 'completed', 'failed', 'status', 'cancel_reason')
  if not st[1] or tonumber(st[1]) ~= (tonumber(st[2]) or 0) + (tonumber(st[3]) or 0) then
    return false
  end
  local new
  if st[4] == 'in_progress' then
    new = 'finalizing'
  elseif st[4] == 'cancelling' then
    new = st[5] or 'cancelled'
  else
    return false
  end
  redis.call('HSET', batch_key, 'status', new, new .. '_at', now)
  redis.call('SET', fin_key, fin_payload, 'PX', 86400000)
  redis.call('ZADD', queue_key, math.floor(tonumber(now) * 1000), fin_id)
  return new
end
