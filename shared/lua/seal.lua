-- Mark a batch fully submitted: its total is now known, so completion can be detected.
-- KEYS[1] batch hash; ARGV[1] total, ARGV[2] now (unix seconds)
-- Returns 1 if every line already has a result (the batch completes here), else 0.
redis.call('HSET', KEYS[1], 'total', ARGV[1], 'status', 'in_progress', 'submitted_at', ARGV[2])
local st = redis.call('HMGET', KEYS[1], 'completed', 'failed')
if tonumber(ARGV[1]) == (tonumber(st[1]) or 0) + (tonumber(st[2]) or 0) then
  redis.call('HSET', KEYS[1], 'status', 'completed', 'completed_at', ARGV[2])
  return 1
end
return 0
