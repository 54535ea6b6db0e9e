-- The next fencing token of a key (not run alone; the step scripts that hand out fences
-- use it). The counter starts from server time in microseconds when missing, so tokens
-- keep increasing across a counter that expired (lock_acquire.lua explains the bound),
-- and its TTL is refreshed on every token.
-- KEYS[1] fence counter
-- ARGV[1] fence counter TTL (ms)
-- Returns the token, as a decimal string.
-- retry: unsafe (each run hands out a new token)
if redis.call('EXISTS', KEYS[1]) == 0 then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[1], now[1] .. string.format('%06d', tonumber(now[2])), 'PX', ARGV[1])
end
local fence = string.format('%d', redis.call('INCR', KEYS[1]))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return fence
