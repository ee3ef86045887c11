-- Spend caps: reserve an estimated cost against every counter, or adjust them by a delta.
-- KEYS: spend counters (USD, float strings). ARGV[1] = 'reserve' | 'adjust', ARGV[2] = amount (USD),
-- ARGV[3] = counter TTL seconds, ARGV[3 + i] = cap of KEYS[i] (negative: no cap).
-- reserve: all or nothing; refused when a counter is at its cap or the amount would take it past:
-- {0, index of the counter, its spend}; else {1}. adjust: adds amount (may be negative) to all.
local mode, amount, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if mode == 'reserve' then
  for i, k in ipairs(KEYS) do
    local cap = tonumber(ARGV[3 + i])
    if cap >= 0 then
      local spent = tonumber(redis.call('GET', k) or '0')
      if spent >= cap or spent + amount > cap then
        return {0, i, tostring(spent)}
      end
    end
  end
end
for _, k in ipairs(KEYS) do
  redis.call('INCRBYFLOAT', k, amount)
  redis.call('EXPIRE', k, ttl)
end
return {1}
