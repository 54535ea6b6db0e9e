-- Set the remaining lease of a lock to ARGV[2] ms (absolute, not added on),
-- only when the given token holds it. The heartbeat calls this.
-- KEYS[1]  lock hash
-- ARGV[1]  owner token
-- ARGV[2]  new lease in milliseconds
-- Returns 1 when extended, 0 when the lock is not this token's.
-- retry: safe (setting the same absolute lease twice is the same as once)
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
