-- Extend a long call's concurrency lease (and its half-open probe lease) from the server's now.
-- A lease that was already reclaimed as expired is not resurrected: its slot may be someone else's.
-- KEYS[1] leases zset, KEYS[2] probes zset
-- ARGV[1] lease id, ARGV[2] lease ms, ARGV[3] probe 1/0, ARGV[4] probe lease ms
-- Returns {lease still held 1/0, probe still held 1/0}.
--#include _gate.lua

local now = now_ms()
local held, probe_held = 0, 0
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', fmt(now + tonumber(ARGV[2])), ARGV[1])
  held = 1
end
if ARGV[3] == '1' and redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  redis.call('ZADD', KEYS[2], 'XX', fmt(now + tonumber(ARGV[4])), ARGV[1])
  probe_held = 1
end
return {held, probe_held}
