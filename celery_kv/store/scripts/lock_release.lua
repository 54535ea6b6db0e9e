-- Release a lock, only when the given token holds it. The fence counter stays,
-- so the next holder's fence is still higher.
-- KEYS[1]  lock hash
-- ARGV[1]  owner token
-- Returns 1 when released, 0 when the lock was not (or no longer) this token's.
-- retry: safe (a second run finds the lock gone or someone else's and changes
-- nothing; it then answers 0 for a release that did happen)
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
