-- Idempotency heartbeat: set this run's lease again, only while it holds the claim (even
-- after the lease lapsed: a lapsed record is "ran, result unknown", which only this run,
-- or a redelivery of its task id, can take).
-- KEYS[1] record hash
-- ARGV[1] run token, ARGV[2] lease (ms)
-- Returns {'ok'} when renewed, {'deny'} when the claim is no longer this run's (lost).
-- retry: safe (setting the same lease twice is setting it once)
local rec = redis.call('HMGET', KEYS[1], 's', 'o')
if rec[1] == 'p' and rec[2] == ARGV[1] then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[1], 'l', now + tonumber(ARGV[2]))
  return {'ok'}
end
return {'deny'}
