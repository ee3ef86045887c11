-- Ops: force a breaker open or closed, disable it, or reset it to an automatic, closed breaker with
-- an empty window, no trip history and the full concurrency limit. Leases and rate reservations
-- are kept: the calls in flight are real.
-- KEYS[1] state hash, KEYS[2] window hash, KEYS[3] probes zset, KEYS[4] events stream
-- ARGV[1] scope, ARGV[2] target (forced_open|forced_closed|disabled|closed),
-- ARGV[3] events stream max length, ARGV[4] actor, ARGV[5] why (audit: both land in the stream entry)
-- Returns the generation after the change.
--#include _gate.lua

local S, W, P, E = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local target = ARGV[2]
local now = now_ms()
local audit = {}
if ARGV[4] and ARGV[4] ~= '' then audit = {'actor', ARGV[4], 'why', ARGV[5] or ''} end
if target == 'closed' then
  redis.call('DEL', W, P)
  redis.call('HDEL', S, 'until', 'wait', 'lim', 'okrun')
  redis.call('HSET', S, 'trips', 0)
  redis.call('HINCRBY', S, 'lgen', 1)
  return transition(S, E, ARGV[3], ARGV[1], 'closed', 'ops_reset', now, audit)
end
if target ~= 'forced_open' and target ~= 'forced_closed' and target ~= 'disabled' then
  return redis.error_reply('unknown breaker target ' .. target)
end
redis.call('DEL', P)
return transition(S, E, ARGV[3], ARGV[1], target, 'ops', now, audit)
