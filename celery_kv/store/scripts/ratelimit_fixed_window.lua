-- Fixed window counter over N limits, charged all-or-nothing.
-- Windows are aligned on server time (w = floor(now / period)); each key is a
-- hash {w = window index, c = units admitted in it} that expires at the window's
-- end. The stored index makes a key that outlives its window by the last
-- millisecond of rounding count as empty. Up to `limit` units per window; a
-- burst at the end of one window and the start of the next can admit 2 * limit
-- within one period. Only when every key admits is anything written.
-- KEYS[i]        counter of limit i (all keys share one hash tag)
-- ARGV[1]        'hit' (charge when every key admits) or 'peek' (charge nothing)
-- ARGV[2]        cost, an integer >= 1 (peek passes 1)
-- ARGV[2i+1]     limit i, ARGV[2i+2] its period in whole microseconds
-- Returns {now_us, then for each key: allowed 0/1, remaining, retry_after_us, reset_after_us}.
-- retry: unsafe (a hit replayed after a lost reply would charge twice; peek mode is safe)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local charge = ARGV[1] == 'hit'
local cost = tonumber(ARGV[2])

-- The absolute expiry (ms) of state needed `us` microseconds more. Absolute, from
-- TIME: a relative TTL counts from the server's own command-time snapshot, which
-- can trail TIME (by microseconds on Redis, milliseconds on fakeredis) and would
-- let the key vanish before its state is spent.
local function expire_at(us)
  return string.format('%.0f', math.ceil((now + us) / 1000))
end

local seen, all_ok = {}, true
for i, key in ipairs(KEYS) do
  local limit, period = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
  local w = math.floor(now / period)
  local left = (w + 1) * period - now
  local stored = redis.call('HMGET', key, 'w', 'c')
  local c = 0
  if tonumber(stored[1]) == w then
    c = tonumber(stored[2]) or 0
  end
  local s = {limit = limit, w = w, left = left, c = c, ok = c + cost <= limit, retry = 0}
  if not s.ok then
    s.retry = left
  end
  all_ok = all_ok and s.ok
  seen[i] = s
end
charge = charge and all_ok
local out = {now}
for i, key in ipairs(KEYS) do
  local s = seen[i]
  local c = s.c
  if charge then
    c = c + cost
    redis.call('HSET', key, 'w', string.format('%.0f', s.w), 'c', string.format('%d', c))
    redis.call('PEXPIREAT', key, expire_at(s.left))
  end
  table.insert(out, s.ok and 1 or 0)
  table.insert(out, math.max(s.limit - c, 0))
  table.insert(out, s.retry)
  table.insert(out, c > 0 and s.left or 0)
end
return out
