-- Cache fill, the last step of get_or_set: store the computed value, drop this caller's
-- compute lease, and wake every registered waiter (one token each on the notify list) so
-- they read the value. The value is stored only while the namespace is at the version
-- fetch saw (no clear meanwhile) and this caller still holds the compute lease. The lease
-- is gone when a set or delete of the key invalidated the computation (they drop it:
-- invalidation wins over an in-flight fill), or when the compute ran past its lease (and
-- another caller may have taken over and filled a newer value). An XFetch refresh holds
-- the lease too (fetch gave it), so it stores unless something invalidated it.
-- KEYS[1] version key, KEYS[2] value hash, KEYS[3] compute lease, KEYS[4] waiter count,
-- KEYS[5] notify list (all under the namespace's {tag})
-- ARGV[1] caller token, ARGV[2] JSON value, ARGV[3] value TTL (ms), ARGV[4] compute time
-- (ms, XFetch's delta), ARGV[5] version seen by fetch, ARGV[6] version-key TTL (ms),
-- ARGV[7] notify-list TTL (ms)
-- Returns 1 when the value was stored, 0 when the namespace moved on or the lease was lost.
-- retry: safe (a second run finds its lease gone and stores nothing; the waiters were
-- already woken)
local stored = 0
local mine = redis.call('GET', KEYS[3]) == ARGV[1]
if mine and redis.call('GET', KEYS[1]) == ARGV[5] then
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[6]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[6])
  end
  redis.call('HSET', KEYS[2], 'v', ARGV[2], 'w', ARGV[5], 'd', ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  stored = 1
end
if mine then
  redis.call('DEL', KEYS[3])
end
local waiting = math.min(tonumber(redis.call('GET', KEYS[4]) or '0') or 0, 10000)
if waiting > 0 then
  for _ = 1, waiting do
    redis.call('RPUSH', KEYS[5], '1')
  end
  redis.call('PEXPIRE', KEYS[5], ARGV[7])
  redis.call('DEL', KEYS[4])
end
return stored
