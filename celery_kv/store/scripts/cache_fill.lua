-- Cache fill, the last step of get_or_set: store the computed value (only if the namespace
-- was not cleared while it was computed), drop this caller's compute lease, and wake every
-- registered waiter (one token each on the notify list) so they read the value.
-- KEYS[1] version key, KEYS[2] value hash, KEYS[3] compute lease, KEYS[4] waiter count,
-- KEYS[5] notify list (all under the namespace's {tag})
-- ARGV[1] caller token, ARGV[2] JSON value, ARGV[3] value TTL (ms), ARGV[4] compute time
-- (ms, XFetch's delta), ARGV[5] version seen by fetch, ARGV[6] version-key TTL (ms),
-- ARGV[7] notify-list TTL (ms)
-- Returns 1 when the value was stored, 0 when the namespace moved on meanwhile.
-- retry: safe (a second run stores the same value; the waiters were already woken)
local stored = 0
if redis.call('GET', KEYS[1]) == ARGV[5] then
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[6]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[6])
  end
  redis.call('HSET', KEYS[2], 'v', ARGV[2], 'w', ARGV[5], 'd', ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  stored = 1
end
if redis.call('GET', KEYS[3]) == ARGV[1] then
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
