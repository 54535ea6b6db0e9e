-- Take a lock for an owner token, or re-enter it when that token already holds it.
-- A fresh holding gets the next fence from the counter; a counter that is missing
-- (first use, or expired after fence_ttl idle) starts from server time in
-- microseconds, so its tokens still exceed every token handed out before.
-- KEYS[1]  lock hash {owner, fence, at (when taken, server ms)}, its TTL is the lease
-- KEYS[2]  fence counter (same hash tag)
-- ARGV[1]  owner token
-- ARGV[2]  lease in milliseconds
-- ARGV[3]  fence counter TTL in milliseconds (refreshed on every acquire)
-- ARGV[4]  takeover token, or '': a holding by exactly this token is handed over
--          to ARGV[1] with its fence kept (a queued claim becoming a running one)
-- Returns {1, fence} when the token took the lock now (fresh, or handed over),
--         {2, fence} when the token already held it (re-entry; fence as a decimal string),
--         {0, holder, holder_pttl_ms} when another token holds it.
-- retry: safe (a second run by the same token re-enters: same fence, lease set again)
local function at_ms()  -- when the holder took it (server ms): the lock's age for metrics
  local t = redis.call('TIME')
  return string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
local held = redis.call('HMGET', KEYS[1], 'owner', 'fence')
local owner = held[1]
local status = 2
if owner and ARGV[4] ~= '' and owner == ARGV[4] then
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'at', at_ms())
  owner = ARGV[1]
  status = 1
end
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return {status, held[2]}
end
if owner then
  return {0, owner, redis.call('PTTL', KEYS[1])}
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  local now = redis.call('TIME')
  local micros = now[1] .. string.format('%06d', tonumber(now[2]))
  redis.call('SET', KEYS[2], micros, 'PX', ARGV[3])
end
local fence = string.format('%d', redis.call('INCR', KEYS[2]))
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'fence', fence, 'at', at_ms())
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, fence}
