-- Enqueue a chunk of batch lines in one round trip, idempotently per (batch, custom_id).
-- KEYS[1] the batch tenant's lane (zset; claim.lua moves lines from it into the arq queue), KEYS[2] batch results hash, KEYS[3] batch done list, KEYS[4] batch hash,
-- KEYS[5] batch ids hash (custom_id -> input index), KEYS[6] batch specs hash (custom_id -> job
-- payload, kept so reconciliation can queue a lost line again), KEYS[7] set of active batches,
-- KEYS[8] workers' wake-up list (a few tokens, so idle workers start at once; bounded),
-- KEYS[9] set of non-empty lanes
-- ARGV[1] now_ms, ARGV[2] job expiry ms, ARGV[3] arq job key prefix, ARGV[4] batch id,
-- ARGV[5] lane name (the tenant, '-' for none), then quads (kind, custom_id, payload, index):
-- 'j': queue the job unless this custom_id was submitted to this batch before.
-- 'r': a line rejected at validation: store its error result and count it failed, once.
local queued, skipped, rejected = 0, 0, 0
for i = 6, #ARGV, 4 do
  local kind, cid, payload, idx = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if kind == 'j' then
    if redis.call('HSETNX', KEYS[5], cid, idx) == 0 then
      skipped = skipped + 1
    else
      local id = ARGV[4] .. ':' .. cid
      redis.call('SET', ARGV[3] .. id, payload, 'PX', ARGV[2])
      redis.call('HSET', KEYS[6], cid, payload)
      redis.call('ZADD', KEYS[1], ARGV[1], id)
      queued = queued + 1
    end
  elseif redis.call('HSETNX', KEYS[2], idx, payload) == 1 then
    redis.call('RPUSH', KEYS[3], idx)
    redis.call('HINCRBY', KEYS[4], 'failed', 1)
    rejected = rejected + 1
  else
    skipped = skipped + 1
  end
end
if queued > 0 then
  redis.call('SADD', KEYS[7], ARGV[4])
  redis.call('SADD', KEYS[9], ARGV[5])
  -- cancel, reconciliation and retry find the batch's lines in this lane
  redis.call('HSET', KEYS[4], 'lane', ARGV[5])
  for _ = 1, math.min(queued, 4) do redis.call('LPUSH', KEYS[8], '1') end
  redis.call('LTRIM', KEYS[8], 0, 15)
end
return {queued, skipped, rejected}
