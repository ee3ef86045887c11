-- Drop the in-progress leases a worker still holds (shutdown, jobs cut off by a Redis outage) so
-- those jobs run again at once; a lease that names another worker is left alone.
-- ARGV[1] owner (worker id), ARGV[2] in-progress key prefix, ARGV[3..] job ids.
-- Returns how many leases were dropped.
local n = 0
for i = 3, #ARGV do
  local ip = ARGV[2] .. ARGV[i]
  if redis.call('GET', ip) == ARGV[1] then
    redis.call('DEL', ip)
    n = n + 1
  end
end
return n
