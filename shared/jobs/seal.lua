-- Mark a batch fully submitted: its total is now known, so completion can be detected.
-- KEYS[1] batch hash, KEYS[2] arq queue, KEYS[3] finalize job key
-- ARGV[1] total, ARGV[2] now, ARGV[3] '1' if validation failed (no line accepted),
-- ARGV[4] finalize job id, ARGV[5] finalize payload
-- Returns the batch status after sealing.
--#include _finish.lua
redis.call('HSET', KEYS[1], 'total', ARGV[1])
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'validating' then
  if ARGV[3] == '1' then
    redis.call('HSET', KEYS[1], 'status', 'failed', 'failed_at', ARGV[2])
    redis.call('SET', KEYS[3], ARGV[5], 'PX', 86400000)
    redis.call('ZADD', KEYS[2], math.floor(tonumber(ARGV[2]) * 1000), ARGV[4])
    return 'failed'
  end
  redis.call('HSET', KEYS[1], 'status', 'in_progress', 'in_progress_at', ARGV[2])
end
return finish(KEYS[1], ARGV[2], KEYS[2], KEYS[3], ARGV[4], ARGV[5]) or redis.call('HGET', KEYS[1], 'status')
