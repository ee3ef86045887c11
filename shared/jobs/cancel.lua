-- Cancel (or expire) part of a batch: queued jobs are taken off the queue and answered with an
-- error result; jobs already running finish normally. Called once per chunk of job ids found by
-- ZSCAN, then once with none to settle the end state.
-- KEYS[1] arq queue, KEYS[2] results hash, KEYS[3] done list, KEYS[4] batch hash, KEYS[5] ids hash,
-- KEYS[6] finalize job key, KEYS[7] the batch's lane (lines not claimed yet)
-- ARGV[1] arq job key prefix, ARGV[2] batch id, ARGV[3] reason ('cancelled'|'expired'),
-- ARGV[4] message, ARGV[5] now, ARGV[6] finalize job id, ARGV[7] finalize payload, then job ids.
-- Returns {removed, status}; removed = -1 when the batch had already ended.
--#include _finish.lua
local status = redis.call('HGET', KEYS[4], 'status')
if status == 'validating' or status == 'in_progress' then
  redis.call('HSET', KEYS[4], 'status', 'cancelling', 'cancelling_at', ARGV[5], 'cancel_reason', ARGV[3])
elseif status ~= 'cancelling' then
  return {-1, status or false}
end
local removed = 0
local plen = #ARGV[2] + 2
for i = 8, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', KEYS[1], id) == 1 or redis.call('ZREM', KEYS[7], id) == 1 then
    redis.call('DEL', ARGV[1] .. id)
    local cid = string.sub(id, plen)
    local idx = redis.call('HGET', KEYS[5], cid)
    if idx then
      local res = cmsgpack.pack({
        id = id, status_code = 0, custom_id = cid, batch_id = ARGV[2], line = tonumber(idx),
        completed_at = tonumber(ARGV[5]),
        error = {code = 'batch_' .. ARGV[3], message = ARGV[4], error_class = 'final'},
      })
      if redis.call('HSETNX', KEYS[2], idx, res) == 1 then
        redis.call('RPUSH', KEYS[3], idx)
        redis.call('HINCRBY', KEYS[4], 'failed', 1)
        -- counted apart too ('cancelled_lines' / 'expired_lines'): Anthropic's batches report them so
        redis.call('HINCRBY', KEYS[4], ARGV[3] .. '_lines', 1)
        removed = removed + 1
      end
    end
  end
end
local fin = finish(KEYS[4], ARGV[5], KEYS[1], KEYS[6], ARGV[6], ARGV[7])
return {removed, fin or redis.call('HGET', KEYS[4], 'status')}
