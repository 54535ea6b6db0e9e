-- Delay store, publish phase one: claim up to n due entries for one poller.
-- A claimed entry is re-scored to now + lease and its claimer recorded; the poller
-- publishes it, then acks it (delay_ack). A poller that dies in between loses nothing:
-- at the lease's end the entry is due again and another poller claims it.
-- KEYS[1] due ZSET, KEYS[2] bodies HASH, KEYS[3] claims HASH
-- ARGV[1] poller token, ARGV[2] at most this many entries, ARGV[3] lease (ms),
-- ARGV[4] grace (ms)
-- Returns {ms until the next entry falls due (-1: none), id1, body1, id2, body2, ...}.
-- retry: safe (a second run claims what is due then; entries a lost reply claimed come
-- due again when their lease ends, and are claimed then)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {-1}
for _, id in ipairs(ids) do
  local body = redis.call('HGET', KEYS[2], id)
  if body then
    redis.call('ZADD', KEYS[1], now + lease, id)
    redis.call('HSET', KEYS[3], id, ARGV[1])
    out[#out + 1] = id
    out[#out + 1] = body
  else  -- no body to publish (removed by hand): nothing to keep
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[3], id)
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] then
  out[1] = math.max(tonumber(first[2]) - now, 0)
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  local until_ms = math.max(tonumber(last[2]), now) + tonumber(ARGV[4])
  for i = 1, 3 do
    redis.call('PEXPIREAT', KEYS[i], until_ms)
  end
end
return out
