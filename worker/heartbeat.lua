-- Renew the in-progress leases of the jobs one worker is running, in one round trip.
-- KEYS[1] queue zset; ARGV[1] owner (worker id), ARGV[2] lease ms, ARGV[3] now ms,
-- ARGV[4] in-progress key prefix, ARGV[5..] ids of the jobs the worker runs.
-- A lease still ours is extended. A missing one (Redis lost writes, or the worker stalled past
-- its lease) is taken again if the job is still queued and due, i.e. nobody finished or deferred
-- it; a lease now naming another worker is left alone and reported. A job whose lease is ours stays
-- parked at its lease's end in the queue (claim.lua), so polls do not read it.
-- Returns {renewed, restored, {ids held by another worker}}.
local renewed, restored, lost = 0, 0, {}
local now = tonumber(ARGV[3])
local parked = now + tonumber(ARGV[2])
for i = 5, #ARGV do
  local id = ARGV[i]
  local ip = ARGV[4] .. id
  local v = redis.call('GET', ip)
  if v == ARGV[1] then
    redis.call('PEXPIRE', ip, ARGV[2])
    redis.call('ZADD', KEYS[1], 'XX', parked, id)
    renewed = renewed + 1
  elseif not v then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= now then
      redis.call('SET', ip, ARGV[1], 'PX', ARGV[2])
      redis.call('ZADD', KEYS[1], parked, id)
      restored = restored + 1
    end
  else
    lost[#lost + 1] = id
  end
end
return {renewed, restored, lost}
