-- Idempotency renew: set the remaining lease of an in-progress claim (absolute, not added).
-- Owner-checked; the heartbeat of a running caller calls it.
-- KEYS[1] the record hash
-- ARGV[1] owner, ARGV[2] lease (ms)
-- Returns 1 when renewed, 0 when the claim is not this owner's in-progress claim.
-- retry: safe (setting the same absolute lease twice is the same)
local rec = redis.call('HMGET', KEYS[1], 's', 'o')
if rec[1] == 'p' and rec[2] == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
