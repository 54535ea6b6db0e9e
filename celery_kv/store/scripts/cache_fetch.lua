-- Cache fetch, the first step of get_or_set (single flight + XFetch early recompute).
-- On a hit it returns the value; if XFetch says "recompute early" (delta * factor >= the
-- value's remaining TTL, on server time) and nobody holds the compute lease, it also hands
-- the lease to this caller. On a miss the caller gets the compute lease (SET NX PX) or,
-- while another caller holds it, is registered as a waiter to be woken through the notify
-- list when the value is filled or the computer gives up.
-- KEYS[1] version key, KEYS[2] value hash, KEYS[3] compute lease, KEYS[4] waiter count,
-- KEYS[5] notify list (all under the namespace's {tag})
-- ARGV[1] caller token, ARGV[2] lease (ms), ARGV[3] XFetch factor -beta*log(rand) (>= 0),
-- ARGV[4] version-key TTL (ms)
-- Returns one string (a bulk reply parses faster than an array): 'h' .. value on a hit;
-- 'r' .. ms .. ' ' .. version .. ' ' .. value to refresh (a hit; recompute early, lease held
-- for ms); 'c' .. ms .. ' ' .. version to compute (a miss; lease held for ms); 'w' .. ms ..
-- ' ' .. version to wait (a miss; the lease is another's for ms more).
-- retry: safe (a second run by the same token re-enters its own lease; an extra waiter
-- registration only wakes one more time)
local lease_ms = tonumber(ARGV[2])
local version = redis.call('GET', KEYS[1])
if not version then
  local t = redis.call('TIME')
  version = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
  redis.call('SET', KEYS[1], version, 'PX', ARGV[4])
end
local rec = redis.call('HMGET', KEYS[2], 'w', 'v', 'd')
if rec[1] == version and rec[2] then
  local factor = tonumber(ARGV[3])
  local delta = tonumber(rec[3]) or 0
  if factor > 0 and delta > 0 and delta * factor >= redis.call('PTTL', KEYS[2]) then
    if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', lease_ms) then
      return 'r' .. ARGV[2] .. ' ' .. version .. ' ' .. rec[2]
    end
  end
  return 'h' .. rec[2]
end
local holder = redis.call('GET', KEYS[3])
if not holder or holder == ARGV[1] then
  redis.call('SET', KEYS[3], ARGV[1], 'PX', lease_ms)
  return 'c' .. ARGV[2] .. ' ' .. version
end
local left = redis.call('PTTL', KEYS[3])
if left < 0 then
  left = lease_ms
end
redis.call('INCR', KEYS[4])
redis.call('PEXPIRE', KEYS[4], left + lease_ms)
return 'w' .. string.format('%d', left) .. ' ' .. version
