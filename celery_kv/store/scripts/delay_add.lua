-- Delay store: add one deferred message, due after a delay measured on the server clock.
-- Idempotent per entry id: an id already waiting, published (sent marker) or consumed
-- (used marker) is left as it is.
-- KEYS[1] due ZSET (entry id -> due ms, or claim lease end), KEYS[2] bodies HASH,
-- KEYS[3] claims HASH, KEYS[4] the entry's sent marker, KEYS[5] the entry's used marker
-- ARGV[1] entry id, ARGV[2] delay (ms, >= 0), ARGV[3] body (JSON), ARGV[4] grace (ms)
-- Returns {'ok', ms until due} for a new entry, {'exists', ms until due or 0}.
-- The due, bodies and claims keys live until the latest due entry + grace.
-- retry: safe (a second run finds the entry it added and answers 'exists')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local found = redis.call('ZSCORE', KEYS[1], id)
if found then
  return {'exists', math.max(tonumber(found) - now, 0)}
end
if redis.call('EXISTS', KEYS[4]) == 1 or redis.call('EXISTS', KEYS[5]) == 1 then
  return {'exists', 0}
end
local due = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], due, id)
redis.call('HSET', KEYS[2], id, ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local until_ms = math.max(tonumber(last[2]), now) + tonumber(ARGV[4])
for i = 1, 3 do
  redis.call('PEXPIREAT', KEYS[i], until_ms)
end
return {'ok', due - now}
