-- Whether the given token holds the lock right now, as Redis sees it.
-- KEYS[1]  lock hash
-- ARGV[1]  owner token
-- Returns 1 or 0.
-- retry: safe (read only)
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  return 1
end
return 0
