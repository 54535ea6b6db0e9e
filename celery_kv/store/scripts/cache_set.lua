-- Cache set: store one value under the namespace's current version, and drop the key's
-- compute lease: an explicit write wins over a get_or_set computing at the same time,
-- whose fill then finds its lease gone and stores nothing (see cache_fill).
-- A missing version is started from server time in microseconds, so a version key that
-- expired can never make values written under an older version readable again.
-- KEYS[1] the namespace's version key, KEYS[2] the value hash, KEYS[3] the key's compute
-- lease (all under the namespace's {tag})
-- ARGV[1] JSON value, ARGV[2] value TTL (ms), ARGV[3] version-key TTL (ms, > value TTL)
-- Returns 1.
-- retry: safe (a second run writes the same value again; a lease taken in between is
-- dropped too, and its holder's fill defers to this value)
local version = redis.call('GET', KEYS[1])
if not version then
  local t = redis.call('TIME')
  version = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
  redis.call('SET', KEYS[1], version, 'PX', ARGV[3])
elseif redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
redis.call('HSET', KEYS[2], 'v', ARGV[1], 'w', version, 'd', '0')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
return 1
