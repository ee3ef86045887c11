-- Record one job's result exactly once; counters and usage move in the same atomic step.
-- KEYS[1] results hash (batch) or result key (single job), KEYS[2] done list, KEYS[3] batch hash,
-- KEYS[4] usage minute hash, KEYS[5] arq queue, KEYS[6] finalize job key, KEYS[7] (single jobs)
-- notify list: an API process waiting for this job BLPOPs it, so nobody polls; (batch lines) the
-- lane's out set (claim.lua): an answered line no longer counts against its tenant's window
-- ARGV[1] index, ARGV[2] result payload, ARGV[3] '1' ok / '0' failed, ARGV[4] now (unix s),
-- ARGV[5] finalize job id, ARGV[6] finalize payload, ARGV[7] usage key TTL s, ARGV[8] result TTL s
-- (single jobs), ARGV[9] cost usd, ARGV[10..12] prompt, completion and cached tokens,
-- ARGV[13] usage dimensions 'provider|model|tenant|batch', ARGV[14] latency bucket, ARGV[15] error
-- class ('' = ok): the minute bucket's fields are '<dimensions>|<metric>' (see shared/usage.py),
-- ARGV[16] job id.
-- KEYS[8..12], if given: the job's arq in-progress key, job key, try count key, abort zset and queue:
-- the job's end is recorded here as arq's finish_job would (the worker then skips its own round trip),
-- whether this run wrote the result or an earlier one did; a script error finishes nothing.
-- Returns {written, status}: written=0 means a re-run job already recorded it (nothing counted again).
--#include _finish.lua
local function record()
local single = KEYS[2] == ''
if not single and KEYS[7] then redis.call('ZREM', KEYS[7], ARGV[16]) end
if single then
  if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'EX', ARGV[8]) then return {0, false} end
elseif redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return {0, false}
end
-- Token counts come from providers: a fraction, "-0", NaN or junk must not fail HINCRBY (the result is
-- already written), so each becomes a whole number first; a cost that is not a finite positive number
-- is left out.
local function count(v)
  local n = tonumber(v)
  if n == nil or n ~= n or n == math.huge or n == -math.huge then return 0 end
  return math.floor(n)
end
local tokens = {count(ARGV[10]), count(ARGV[11]), count(ARGV[12])}
local cost = tonumber(ARGV[9]) or 0
local has_cost = cost > 0 and cost < math.huge
local d = ARGV[13] .. '|'
redis.call('HINCRBY', KEYS[4], d .. 'req', 1)
redis.call('HINCRBY', KEYS[4], d .. 'lat:' .. ARGV[14], 1)
if ARGV[15] ~= '' then redis.call('HINCRBY', KEYS[4], d .. 'err:' .. ARGV[15], 1) end
local metrics = {'in', 'out', 'cached'}
for j = 1, 3 do
  if tokens[j] ~= 0 then redis.call('HINCRBY', KEYS[4], d .. metrics[j], string.format('%d', tokens[j])) end
end
if has_cost then redis.call('HINCRBYFLOAT', KEYS[4], d .. 'cost', ARGV[9]) end
redis.call('EXPIRE', KEYS[4], ARGV[7])
if single then
  redis.call('RPUSH', KEYS[7], '1')
  redis.call('EXPIRE', KEYS[7], 300)
  return {1, false}
end
redis.call('RPUSH', KEYS[2], ARGV[1])
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[3], 'completed', 1)
else
  redis.call('HINCRBY', KEYS[3], 'failed', 1)
end
if has_cost then redis.call('HINCRBYFLOAT', KEYS[3], 'cost_usd', ARGV[9]) end
local names = {'prompt_tokens', 'completion_tokens', 'cached_tokens'}
for j = 1, 3 do
  if tokens[j] ~= 0 then redis.call('HINCRBY', KEYS[3], names[j], string.format('%d', tokens[j])) end
end
return {1, finish(KEYS[3], ARGV[4], KEYS[5], KEYS[6], ARGV[5], ARGV[6])}
end

local reply = record()
if #KEYS >= 12 then  -- arq 0.28's finish_job transaction for a finished job without a kept result
  redis.call('ZREM', KEYS[11], ARGV[16])
  redis.call('ZREM', KEYS[12], ARGV[16])
  redis.call('DEL', KEYS[10], KEYS[9], KEYS[8])
end
return reply
