-- Drop the in-progress leases a worker still holds (shutdown, jobs cut off by a Redis outage) so
-- those jobs run again at once; a lease that names another worker is left alone. A released job
-- leaves its parking place (claim.lua) for the score it was claimed at, so it is due again now.
-- KEYS[1] queue zset; ARGV[1] owner (worker id), ARGV[2] in-progress key prefix,
-- ARGV[3] arq's try count key prefix: each released job's try is uncounted (a claim counted it for a
-- run that never started, claim.lua); '': left alone (the run started, or ran),
-- ARGV[4..] pairs of job id and the score it was claimed at ('' = unknown: leave it).
-- Returns how many leases were dropped.
local n = 0
for i = 4, #ARGV, 2 do
  local id, score = ARGV[i], ARGV[i + 1]
  local ip = ARGV[2] .. id
  if redis.call('GET', ip) == ARGV[1] then
    redis.call('DEL', ip)
    if score ~= '' then redis.call('ZADD', KEYS[1], 'XX', score, id) end
    if ARGV[3] ~= '' and (tonumber(redis.call('GET', ARGV[3] .. id)) or 0) > 0 then
      redis.call('DECR', ARGV[3] .. id)
    end
    n = n + 1
  end
end
return n
