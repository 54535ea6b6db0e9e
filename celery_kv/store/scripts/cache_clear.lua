-- Cache clear: invalidate every value of the namespace in O(1) by moving its version on.
-- The new version is max(old + 1, server time in microseconds), so versions only grow,
-- even across an expired version key. Old values stay until their own TTL, unreadable.
-- KEYS[1] the namespace's version key
-- ARGV[1] version-key TTL (ms)
-- Returns the new version as a string.
-- retry: unsafe (a second run would also hide values written between the two runs)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local old = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local version = string.format('%.0f', math.max(old + 1, now))
redis.call('SET', KEYS[1], version, 'PX', ARGV[1])
return version
