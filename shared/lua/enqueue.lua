-- Enqueue a chunk of batch lines in one round trip, idempotently.
-- KEYS[1] arq queue zset, KEYS[2] batch results hash, KEYS[3] batch done list, KEYS[4] batch hash
-- ARGV[1] now_ms, ARGV[2] job expiry ms, ARGV[3] arq job key prefix,
-- then quads (kind, job id, payload, line):
-- 'j': enqueue unless the job already exists or its line already has a result (re-submission).
-- 'r': a line rejected at validation: store its error result and count it failed, once.
local queued, skipped, rejected = 0, 0, 0
for i = 4, #ARGV, 4 do
  local kind, id, payload, line = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if kind == 'j' then
    local job_key = ARGV[3] .. id
    if redis.call('EXISTS', job_key) == 1 or redis.call('HEXISTS', KEYS[2], line) == 1 then
      skipped = skipped + 1
    else
      redis.call('SET', job_key, payload, 'PX', ARGV[2])
      redis.call('ZADD', KEYS[1], ARGV[1], id)
      queued = queued + 1
    end
  else
    if redis.call('HSETNX', KEYS[2], line, payload) == 1 then
      redis.call('RPUSH', KEYS[3], line)
      redis.call('HINCRBY', KEYS[4], 'failed', 1)
      rejected = rejected + 1
    else
      skipped = skipped + 1
    end
  end
end
return {queued, skipped, rejected}
