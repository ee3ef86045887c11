-- Record one batch line's result exactly once and move the counters in the same step.
-- KEYS[1] batch results hash, KEYS[2] batch done list, KEYS[3] batch hash
-- ARGV[1] line, ARGV[2] result payload, ARGV[3] '1' ok / '0' failed, ARGV[4] now (unix seconds)
-- Returns {written, last}: written=0 means a re-run job already recorded this line (not counted
-- again); last=1 means this write completed the batch.
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return {0, 0}
end
redis.call('RPUSH', KEYS[2], ARGV[1])
local field = 'failed'
if ARGV[3] == '1' then field = 'completed' end
redis.call('HINCRBY', KEYS[3], field, 1)
local st = redis.call('HMGET', KEYS[3], 'total', 'completed', 'failed', 'status')
if st[1] and st[4] == 'in_progress' and tonumber(st[1]) == (tonumber(st[2]) or 0) + (tonumber(st[3]) or 0) then
  redis.call('HSET', KEYS[3], 'status', 'completed', 'completed_at', ARGV[4])
  return {1, 1}
end
return {1, 0}
