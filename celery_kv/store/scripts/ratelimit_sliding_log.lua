-- Sliding log over N limits, charged all-or-nothing: exact, never more than
-- `limit` units in any window of `period`.
-- Each key is a sorted set of admitted units: score = server microseconds,
-- member "<us>:<n>" where n numbers the units admitted in that same microsecond
-- (so members stay unique for cost > 1 and for calls within one microsecond).
-- Units scored <= now - period have left the window. A request of `cost` is
-- admitted when live + cost <= limit; only then, and only when every key admits,
-- is anything written (stale units trimmed, new ones added, expiry one period on).
-- KEYS[i]        log of limit i (all keys share one hash tag)
-- ARGV[1]        'hit' (charge when every key admits) or 'peek' (charge nothing)
-- ARGV[2]        cost, an integer >= 1 (peek passes 1)
-- ARGV[2i+1]     limit i, ARGV[2i+2] its period in whole microseconds
-- Returns one string of space-separated integers: now_us, then for each key allowed 0/1,
-- remaining, retry_after_us, reset_after_us (one bulk reply parses faster than an array).
-- retry: unsafe (a hit replayed after a lost reply would charge twice; peek mode is safe)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[2])
-- Expiries are absolute (PXAT/PEXPIREAT, ms, from TIME): a relative TTL counts from the
-- server's own command-time snapshot, which can trail TIME (by microseconds on Redis,
-- milliseconds on fakeredis) and would let the key vanish before its state is spent.

local seen, all_ok = {}, true
for i, key in ipairs(KEYS) do
  local limit, period = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
  local gone = string.format('%.0f', now - period)
  local live = redis.call('ZCOUNT', key, '(' .. gone, '+inf')
  local s = {limit = limit, period = period, gone = gone, live = live, retry = 0, reset = 0}
  s.ok = live + cost <= limit
  if not s.ok then
    -- the unit whose expiry frees enough room for this cost
    local nth = redis.call('ZRANGEBYSCORE', key, '(' .. gone, '+inf', 'WITHSCORES',
      'LIMIT', live + cost - limit - 1, 1)
    s.retry = tonumber(nth[2]) + period - now
  end
  if live > 0 then
    local newest = redis.call('ZREVRANGEBYSCORE', key, '+inf', '(' .. gone, 'WITHSCORES',
      'LIMIT', 0, 1)
    s.reset = math.max(tonumber(newest[2]) + period - now, 0)
  end
  all_ok = all_ok and s.ok
  seen[i] = s
end
local charge = all_ok and ARGV[1] == 'hit'
local stamp = string.format('%.0f', now)
local out = {stamp}
for i, key in ipairs(KEYS) do
  local s = seen[i]
  local live, reset = s.live, s.reset
  if charge then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', s.gone)
    local seq = redis.call('ZCOUNT', key, stamp, stamp)
    for n = seq + 1, seq + cost do
      redis.call('ZADD', key, stamp, stamp .. ':' .. string.format('%d', n))
    end
    live, reset = live + cost, math.max(reset, s.period)
    redis.call('PEXPIREAT', key, string.format('%.0f', math.ceil((now + reset) / 1000)))
  end
  out[i + 1] = string.format('%d %d %.0f %.0f', s.ok and 1 or 0, math.max(s.limit - live, 0),
    s.retry, reset)
end
return table.concat(out, ' ')
