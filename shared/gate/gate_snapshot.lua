-- Read one scope's breaker and limiter state at the server's now, without changing anything.
-- KEYS[1] state hash, KEYS[2] window hash, KEYS[3] leases zset, KEYS[4] probes zset
-- ARGV[1] window bucket ms, ARGV[2] window buckets
-- Returns {now_ms, state hash as a flat list, calls, failures, slow, leases in flight, probes in flight}.
--#include _gate.lua

local now = now_ms()
local w = win_read(KEYS[2], now, tonumber(ARGV[1]), tonumber(ARGV[2]))
local live = '(' .. fmt(now)
return {
  fmt(now),
  redis.call('HGETALL', KEYS[1]),
  w[1], w[2], w[3],
  redis.call('ZCOUNT', KEYS[3], live, '+inf'),
  redis.call('ZCOUNT', KEYS[4], live, '+inf'),
}
