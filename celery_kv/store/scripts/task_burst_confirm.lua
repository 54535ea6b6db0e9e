-- Debounce, enqueue phase two (the publish succeeded): the pending burst's message is
-- expected until its due time plus the queued TTL; past that a trigger adopts the burst.
-- KEYS[1] burst hash
-- ARGV[1] task id, ARGV[2] message nonce, ARGV[3] queued TTL (ms), ARGV[4] how long a
-- lapsed run is remembered (ms)
-- Returns {'ok'}.
-- uses: burst_expire
-- retry: safe (sets the same deadline again)
local f = redis.call('HMGET', KEYS[1], 'pid', 'pmsg', 'pdue', 'pexp')
if f[1] == ARGV[1] and f[2] == ARGV[2] then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[1], 'pexp',
    math.max(tonumber(f[4]), tonumber(f[3]) + tonumber(ARGV[3])))
  redis.call('HDEL', KEYS[1], 'pprev', 'pprevn', 'pprevargs', 'pprevdue')
  burst_expire(KEYS, {now, ARGV[4]})
end
return {'ok'}
