-- Idempotency heartbeat: set this run's lease again, only while it holds the claim.
-- KEYS[1] record hash
-- ARGV[1] run token, ARGV[2] lease (ms)
-- Returns {'ok'} when renewed, {'deny'} when the claim is no longer this run's (lost).
-- retry: safe (setting the same lease twice is setting it once)
local rec = redis.call('HMGET', KEYS[1], 's', 'o')
if rec[1] == 'p' and rec[2] == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'ok'}
end
return {'deny'}
