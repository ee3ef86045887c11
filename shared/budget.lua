-- Spend caps: reserve an estimated cost against every counter, or adjust them by a delta.
-- KEYS: spend counters (USD, float strings). ARGV[1] = 'reserve' | 'adjust', ARGV[2] = amount (USD),
-- ARGV[3] = counter TTL seconds, ARGV[3 + i] = cap of KEYS[i] (negative: no cap).
-- reserve: all or nothing; refused when a counter is at its cap or the amount would take it past:
-- {0, index of the counter, its spend}; else {1}. adjust: adds amount (may be negative) to all.
-- One KEY more than caps given (reserve only): the batch's 'paused' note, deleted when a reservation
-- succeeds (a worker with a stale cap may have paused it again just after the cap was raised).
local mode, amount, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local counters = #KEYS
local note = nil
if mode == 'reserve' and #KEYS > #ARGV - 3 then
  counters = #KEYS - 1
  note = KEYS[#KEYS]
end
if mode == 'reserve' then
  for i = 1, counters do
    local k = KEYS[i]
    local cap = tonumber(ARGV[3 + i])
    if cap >= 0 then
      local spent = tonumber(redis.call('GET', k) or '0')
      if spent >= cap or spent + amount > cap then
        return {0, i, tostring(spent)}
      end
    end
  end
end
for i = 1, counters do
  redis.call('INCRBYFLOAT', KEYS[i], amount)
  redis.call('EXPIRE', KEYS[i], ttl)
end
if note then redis.call('DEL', note) end
return {1}
