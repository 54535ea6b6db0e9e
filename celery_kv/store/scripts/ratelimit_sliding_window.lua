-- Sliding window counter (Cloudflare style) over N limits, charged all-or-nothing.
-- Approximate: it keeps two counts per identity, the current fixed window's (c)
-- and the previous one's (p), and estimates the last period's traffic as
-- p * (share of the previous window still inside the period) + c. No fixed
-- window ever admits more than `limit`; a sliding period can admit more (up to
-- about twice `limit`) only when traffic bunched up at a window boundary.
-- Each key is a hash {w = window index, c, p}, expiring when both counts
-- have left the period. Windows are aligned on server time: w = floor(now / period).
-- Only when every key admits is anything written. A denied call writes nothing.
-- KEYS[i]        counters of limit i (all keys share one hash tag)
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

-- microseconds from `e` (elapsed in the current window) until `cost` fits
local function wait(limit, period, e, c, p)
  if c + cost <= limit then
    -- later in this window, once enough of p has slid out: p * (period - x) <= room * period
    return period - math.floor((limit - c - cost) * period / p) - e
  end
  -- next window, where c becomes the previous count
  return period - e + math.max(period - math.floor((limit - cost) * period / c), 0)
end

local cs, ps, all_ok = {}, {}, true
for i = 1, #KEYS do
  local limit, period = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
  local w = math.floor(now / period)
  local stored = redis.call('HMGET', KEYS[i], 'w', 'c', 'p')
  local sw, c, p = tonumber(stored[1]), 0, 0
  if sw == w then
    c, p = tonumber(stored[2]) or 0, tonumber(stored[3]) or 0
  elseif sw == w - 1 then
    p = tonumber(stored[2]) or 0
  end
  cs[i], ps[i] = c, p
  -- weighted in whole units of (microsecond * count) to stay exact
  if p * (period - (now - w * period)) + (c + cost) * period > limit * period then
    all_ok = false
  end
end
local charge = all_ok and ARGV[1] == 'hit'
local out = {string.format('%.0f', now)}
for i = 1, #KEYS do
  local limit, period = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
  local w = math.floor(now / period)
  local e = now - w * period
  local c, p = cs[i], ps[i]
  local used = p * (period - e) + c * period
  local ok, retry = 1, 0
  if used + cost * period > limit * period then
    ok, retry = 0, wait(limit, period, e, c, p)
  end
  if charge then
    c, used = c + cost, used + cost * period
    redis.call('HSET', KEYS[i], 'w', string.format('%.0f', w), 'c', string.format('%d', c),
      'p', string.format('%d', p))
    redis.call('PEXPIREAT', KEYS[i],
      string.format('%.0f', math.ceil((now + 2 * period - e) / 1000)))
  end
  local reset = 0
  if c > 0 then
    reset = 2 * period - e
  elseif p > 0 then
    reset = period - e
  end
  local remaining = math.max(math.floor((limit * period - used) / period), 0)
  out[i + 1] = string.format('%d %d %.0f %.0f', ok, remaining, retry, reset)
end
return table.concat(out, ' ')
