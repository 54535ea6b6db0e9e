-- Take one of `limit` slots for an owner token, or refresh its lease when it has one.
-- Leases that ended are dropped first, so a crashed holder's slot comes back when
-- its own lease ends, however busy the other holders keep the key.
-- KEYS[1]  sorted set: member = owner token, score = lease end (server ms)
-- ARGV[1]  owner token
-- ARGV[2]  lease in milliseconds
-- ARGV[3]  limit (number of slots)
-- ARGV[4]  takeover token, or '': that token's live slot is handed over to ARGV[1]
-- Returns {1, holders} when the token holds a slot now,
--         {0, holders, ms until the earliest lease ends} when all slots are taken.
-- The key expires with its latest lease.
-- retry: safe (a second run by the same token only refreshes its own lease)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
local count = redis.call('ZCARD', KEYS[1])
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not mine and ARGV[4] ~= '' and redis.call('ZREM', KEYS[1], ARGV[4]) == 1 then
  count = count - 1
end
if not mine and count >= tonumber(ARGV[3]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, count, tonumber(first[2]) - now}
end
local added = redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[2])), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], string.format('%d', tonumber(last[2])))
return {1, count + added}
