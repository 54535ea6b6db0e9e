-- Cache abandon: a computing caller failed (compute raised, or its value is not JSON).
-- Drop its compute lease and wake every waiter, so one of them takes the lease over.
-- KEYS[1] compute lease, KEYS[2] waiter count, KEYS[3] notify list (one {namespace} tag)
-- ARGV[1] caller token, ARGV[2] notify-list TTL (ms)
-- Returns 1 when the lease was this caller's, else 0.
-- retry: safe (a second run finds the lease gone and nobody left to wake)
local mine = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  mine = 1
end
local waiting = math.min(tonumber(redis.call('GET', KEYS[2]) or '0') or 0, 10000)
if waiting > 0 then
  for _ = 1, waiting do
    redis.call('RPUSH', KEYS[3], '1')
  end
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
  redis.call('DEL', KEYS[2])
end
return mine
