-- Set the token's lease to end ARGV[2] ms from now (absolute, not added on),
-- only when the token holds a live slot. The heartbeat calls this.
-- KEYS[1]  sorted set: member = owner token, score = lease end (server ms)
-- ARGV[1]  owner token
-- ARGV[2]  new lease in milliseconds
-- Returns 1 when extended, 0 when the token holds no live slot.
-- The key expires with its latest lease.
-- retry: safe (setting the same lease length twice is the same as once)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[2])), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], string.format('%d', tonumber(last[2])))
return 1
