-- Whether the token holds a live slot right now (its lease ends after now, server time).
-- KEYS[1]  sorted set: member = owner token, score = lease end (server ms)
-- ARGV[1]  owner token
-- Returns 1 or 0.
-- retry: safe (read only)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > now then
  return 1
end
return 0
