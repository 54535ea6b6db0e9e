-- Idempotency renew: set the remaining lease of an in-progress claim (absolute, not added).
-- Owner-checked; the heartbeat of a running caller calls it. A lease that lapsed is renewed
-- too: a lapsed record says "ran, result unknown", which no one else can take, so its
-- runner coming back (a long pause) is still the only one that can run it.
-- KEYS[1] the record hash
-- ARGV[1] owner, ARGV[2] lease (ms)
-- Returns 1 when renewed, 0 when the claim is not this owner's in-progress claim.
-- retry: safe (setting the same absolute lease twice is the same)
local rec = redis.call('HMGET', KEYS[1], 's', 'o', 'l')
if rec[1] == 'p' and rec[2] == ARGV[1] then
  if rec[3] then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('HSET', KEYS[1], 'l', now + tonumber(ARGV[2]))
  else
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
  return 1
end
return 0
