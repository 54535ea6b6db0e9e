-- Singleton heartbeat: set this run's lease again, only while it holds the key. A run whose
-- task id a newer call superseded (on_duplicate 'supersede') is told so, not that it lost
-- the key: it is expected to stop (self.kv_checkpoint() raises Superseded).
-- KEYS[1] lock hash, KEYS[2] tombstones (see task_singleton_claim.lua)
-- ARGV[1] run token, ARGV[2] lease (ms), ARGV[3] task id, ARGV[4] on_duplicate:
-- 'supersede' to read the tombstones, else ''
-- Returns {'ok'} when renewed, {'deny', 'superseded', holder} when superseded (holder: the
-- owner now, or ''), {'deny'} when the key is no longer this run's (lost).
-- retry: safe (setting the same lease twice is setting it once)
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'ok'}
end
if ARGV[4] == 'supersede' and redis.call('SISMEMBER', KEYS[2], 'id:' .. ARGV[3]) == 1 then
  return {'deny', 'superseded', owner or ''}
end
return {'deny'}
