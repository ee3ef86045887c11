-- Claim queued jobs for one worker in a single round trip (arq's own claim takes four per job:
-- WATCH, EXISTS, ZSCORE, MULTI/EXEC). Same rule as arq: a job is ours if it is due and no worker
-- holds its in-progress key; we then set that key for the job's timeout.
-- KEYS[1] queue zset; ARGV[1] in-progress key prefix, ARGV[2] in-progress ttl ms, ARGV[3] now ms,
-- ARGV[4..] candidate job ids. Returns a flat list {id, score, id, score, ...} of claimed jobs.
local out = {}
local now = tonumber(ARGV[3])
for i = 4, #ARGV do
  local id = ARGV[i]
  local ip = ARGV[1] .. id
  if redis.call('EXISTS', ip) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= now then
      redis.call('SET', ip, '1', 'PX', ARGV[2])
      out[#out + 1] = id
      out[#out + 1] = score
    end
  end
end
return out
