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
-- Returns one string of space-separated integers: now_us, then for each key allowed 0/1,
-- remaining, retry_after_us, reset_after_us (one bulk reply parses faster than an array).
-- retry: unsafe (a hit replayed after a lost reply would charge twice; peek mode is safe)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[2])
-- Expiries are absolute (PXAT/PEXPIREAT, ms, from TIME): a relative TTL counts from the
-- server's own command-time snapshot, which can trail TIME (by microseconds on Redis,
-- milliseconds on fakeredis) and would let the key vanish before its state is spent.

local windows, counts, all_ok = {}, {}, true
for i = 1, #KEYS do
  local w = math.floor(now / tonumber(ARGV[2 * i + 2]))
  local stored = redis.call('HMGET', KEYS[i], 'w', 'c')
  local c = 0
  if tonumber(stored[1]) == w then
    c = tonumber(stored[2]) or 0
  end
  windows[i], counts[i] = w, c
  if c + cost > tonumber(ARGV[2 * i + 1]) then
    all_ok = false
  end
end
local charge = all_ok and ARGV[1] == 'hit'
local out = {string.format('%.0f', now)}
for i = 1, #KEYS do
  local limit, period = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
  local w, c = windows[i], counts[i]
  local left = (w + 1) * period - now
  local ok, retry = 1, 0
  if c + cost > limit then
    ok, retry = 0, left
  end
  if charge then
    c = c + cost
    redis.call('HSET', KEYS[i], 'w', string.format('%.0f', w), 'c', string.format('%d', c))
    redis.call('PEXPIREAT', KEYS[i], string.format('%.0f', math.ceil((now + left) / 1000)))
  end
  local reset = 0
  if c > 0 then
    reset = left
  end
  out[i + 1] = string.format('%d %d %.0f %.0f', ok, math.max(limit - c, 0), retry, reset)
end
return table.concat(out, ' ')
