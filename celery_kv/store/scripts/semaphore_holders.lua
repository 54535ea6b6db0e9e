-- Count the live holders of a semaphore (leases that end after now, server time).
-- KEYS[1]  sorted set: member = owner token, score = lease end (server ms)
-- Returns the count.
-- retry: safe (read only)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%d', now), '+inf')
