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


-- microseconds from `e` (elapsed in the current window) until `cost` fits
local function wait(limit, period, e, c, p)
  if c + cost <= limit then
    -- later in this window, once enough of p has slid out: p * (period - x) <= room * period
    return period - math.floor((limit - c - cost) * period / p) - e
  end
  -- next window, where c becomes the previous count
  return period - e + math.max(period - math.floor((limit - cost) * period / c), 0)
end

local seen, all_ok = {}, true
for i, key in ipairs(KEYS) do
  local limit, period = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
  local w = math.floor(now / period)
  local e = now - w * period
  local stored = redis.call('HMGET', key, 'w', 'c', 'p')
  local sw, c, p = tonumber(stored[1]), 0, 0
  if sw == w then
    c, p = tonumber(stored[2]) or 0, tonumber(stored[3]) or 0
  elseif sw == w - 1 then
    p = tonumber(stored[2]) or 0
  end
  -- weighted in whole units of (microsecond * count) to stay exact
  local used = p * (period - e) + c * period
  local s = {limit = limit, period = period, w = w, e = e, c = c, p = p, used = used, retry = 0}
  s.ok = used + cost * period <= limit * period
  if not s.ok then
    s.retry = wait(limit, period, e, c, p)
  end
  all_ok = all_ok and s.ok
  seen[i] = s
end
charge = charge and all_ok
local out = {now}
for i, key in ipairs(KEYS) do
  local s = seen[i]
  local c, used = s.c, s.used
  if charge then
    c, used = c + cost, used + cost * s.period
    redis.call('HSET', key, 'w', string.format('%.0f', s.w), 'c', string.format('%d', c),
      'p', string.format('%d', s.p))
    redis.call('PEXPIREAT', key, expire_at(2 * s.period - s.e))
  end
  local reset = 0
  if c > 0 then
    reset = 2 * s.period - s.e
  elseif s.p > 0 then
    reset = s.period - s.e
  end
  table.insert(out, s.ok and 1 or 0)
  table.insert(out, math.max(math.floor((s.limit * s.period - used) / s.period), 0))
  table.insert(out, s.retry)
  table.insert(out, reset)
end
return out
