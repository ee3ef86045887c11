-- Claim queued jobs for one worker in a single round trip (arq's own claim takes four per job:
-- WATCH, EXISTS, ZSCORE, MULTI/EXEC). Same rule as arq: a job is ours if it is due and no worker
-- holds its in-progress key. The key we set is a short lease naming this worker, renewed by its
-- heartbeat (heartbeat.lua) while the job runs, so a dead worker's jobs come back in one lease.
-- KEYS[1] queue zset; ARGV[1] in-progress key prefix, ARGV[2] lease ms, ARGV[3] now ms,
-- ARGV[4] how many to claim at most (the worker's free slots), ARGV[5] owner (worker id),
-- ARGV[6..] candidate job ids, due first, minus those this worker runs already: all of them are
-- scanned, since jobs other workers are running (long calls, jobs waiting in a worker) keep their
-- old scores and sit at the head of the queue.
-- Returns a flat list {id, score, id, score, ...} of claimed jobs.
local out = {}
local now = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
for i = 6, #ARGV do
  if #out >= 2 * want then break end
  local id = ARGV[i]
  local ip = ARGV[1] .. id
  if redis.call('EXISTS', ip) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= now then
      redis.call('SET', ip, ARGV[5], 'PX', ARGV[2])
      out[#out + 1] = id
      out[#out + 1] = score
    end
  end
end
return out
