-- Give back the token's slot. Leases that ended are dropped first, so a token
-- whose lease ran out is told it held nothing.
-- KEYS[1]  sorted set: member = owner token, score = lease end (server ms)
-- ARGV[1]  owner token
-- Returns 1 when a live slot was given back, 0 otherwise.
-- The key expires with its latest remaining lease.
-- retry: safe (a second run finds no slot and changes nothing; it then answers 0
-- for a release that did happen)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('PEXPIREAT', KEYS[1], string.format('%d', tonumber(last[2])))
end
return removed
