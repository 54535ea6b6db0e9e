-- Singleton heartbeat: set this run's lease again, only while it holds the key.
-- KEYS[1] lock hash
-- ARGV[1] run token, ARGV[2] lease (ms)
-- Returns {'ok'} when renewed, {'deny'} when the key is no longer this run's (lost).
-- retry: safe (setting the same lease twice is setting it once)
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'ok'}
end
return {'deny'}
