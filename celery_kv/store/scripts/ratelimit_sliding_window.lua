-- Sliding window counter (Cloudflare style) over N limits, charged all-or-nothing.
-- Approximate: at time t in window w (w = floor(t / period), e = t - w * period) the
-- last period's traffic is estimated as p * (period - e) / period + c, c the units
-- charged to window w and p those charged to w - 1. No fixed window ever admits more
-- than `limit`; a sliding period can admit more (up to about twice `limit`) only when
-- traffic bunched up at a window boundary.
-- Each key is a hash of counters, field "<w>" = units charged to window w (reservations
-- included) and "m" = the latest window holding any; it expires when window m's count
-- has left the period (the end of window m + 1).
-- The slot S is the earliest t >= now, in window m or later, at which p * (period - e)
-- + (c + cost) * period <= limit * period, c counting every unit of S's window
-- (reserved ones after S too, so the estimate at S is never low). Never before window m:
-- a unit added to an earlier window would raise the p of window m's units after they
-- were admitted, so requests queue in arrival order behind the latest reservation.
-- Within one window the bound of every later unit still holds, as the p term only
-- shrinks with e. 'hit' charges only when S = now, 'reserve' also charges a later S
-- within the horizon. A call that charges nothing writes nothing.
-- KEYS[i], i <= N  counters of limit i (all keys share one hash tag)
-- KEYS[N+i]        optional: limit i's "throttled until" key (server us; see ratelimit_throttle)
-- KEYS[2N+1]       optional: the overrides hash (field: KEYS[i]; value "limit period_us until_us")
-- ARGV[1]          'hit', 'reserve' or 'peek' (charge nothing)
-- ARGV[2]          horizon: the latest slot a 'reserve' takes, in us from now
-- ARGV[3i..3i+2]   limit i: cost (>= 1), limit, period in whole us
-- Returns one string of space-separated integers: now_us, slot_us (0 when nothing was charged),
-- then for each key allowed-now 0/1, remaining, retry_after_us, reset_after_us, mark (the window
-- charged, 0 if none) and amount (the cost: what a give-back takes off).
-- retry: unsafe (a hit replayed after a lost reply would charge twice; peek mode is safe)
-- uses: ratelimit_limit_of ratelimit_charge
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local mode = ARGV[1]
local n = (#ARGV - 2) / 3
local aux = #KEYS > n
local SCAN = 1000  -- windows looked at per key: past that, no slot is offered
-- Expiries are absolute (PXAT/PEXPIREAT, ms, from TIME): a relative TTL counts from the
-- server's own command-time snapshot, which can trail TIME (by microseconds on Redis,
-- milliseconds on fakeredis) and would let the key vanish before its state is spent.

-- units charged to window w of key i (read once per call: k.seen caches them)
local function count(i, k, w)
  local c = k.seen[w]
  if c == nil then
    c = tonumber(redis.call('HGET', KEYS[i], string.format('%.0f', w))) or 0
    k.seen[w] = c
  end
  return c
end

-- the earliest time >= from, in window m or later, at which key i admits its cost, or nil
local function fit(i, k, from)
  local P = k.period
  local w = math.max(math.floor(from / P), k.last)
  local p = count(i, k, w - 1)
  for _ = 1, SCAN do
    local c = count(i, k, w)
    if c + k.cost <= k.limit then
      local e = 0
      if p > 0 then
        -- p * (P - e) <= room * P  <=>  e >= P - floor(room * P / p), e whole microseconds
        e = math.max(P - math.floor((k.limit - c - k.cost) * P / p), 0)
      end
      local at = math.max(from, w * P + e)
      if at < (w + 1) * P then
        return at
      end
    end
    w, p = w + 1, c
  end
  return nil
end

local ks, slot, never = {}, now, false
for i = 1, n do
  local k = {cost = tonumber(ARGV[3 * i]), limit = tonumber(ARGV[3 * i + 1]),
    period = tonumber(ARGV[3 * i + 2]), hold = 0}
  if aux then
    local lim, per, hold = ratelimit_limit_of({KEYS[2 * n + 1], KEYS[i], KEYS[n + i]}, {now})
    k.limit, k.period, k.hold = lim or k.limit, per or k.period, hold
  end
  local w = math.floor(now / k.period)
  local got = redis.call('HMGET', KEYS[i], 'm', string.format('%.0f', w),
    string.format('%.0f', w - 1))
  k.last = tonumber(got[1]) or -1
  k.seen = {[w] = tonumber(got[2]) or 0, [w - 1] = tonumber(got[3]) or 0}
  local at = k.cost <= k.limit and fit(i, k, math.max(now, k.hold)) or nil
  if at == nil then
    never = true
    at = math.max(now, k.hold) + SCAN * k.period
  end
  k.at = at
  slot = math.max(slot, at)
  ks[i] = k
end
-- a slot every key admits (moved on until no key needs a later one), and the charge
local charge
charge, slot = ratelimit_charge({}, {mode, ARGV[2], now, slot, never, ks, fit})
local out = {string.format('%.0f', now), charge and string.format('%.0f', slot) or '0'}
for i = 1, n do
  local k, key = ks[i], KEYS[i]
  local P = k.period
  local w = math.floor(now / P)
  local e = now - w * P
  local ok, retry, mark, last = 1, 0, 0, k.last
  if k.at > now then
    ok, retry = 0, k.at - now
  end
  if charge then
    mark = math.floor(slot / P)
    if last < w - 1 then
      redis.call('DEL', key)  -- every window it counted has left the period
    elseif redis.call('HLEN', key) > 3 then
      for _, field in ipairs(redis.call('HKEYS', key)) do
        local old = tonumber(field)
        if old and old < w - 1 then
          redis.call('HDEL', key, field)
        end
      end
    end
    redis.call('HINCRBY', key, string.format('%.0f', mark), k.cost)
    if mark > last then
      last = mark
      redis.call('HSET', key, 'm', string.format('%.0f', last))
    end
    redis.call('PEXPIREAT', key, string.format('%.0f', math.ceil((last + 2) * P / 1000)))
  end
  local c, p = count(i, k, w), count(i, k, w - 1)
  if charge and mark == w then
    c = c + k.cost
  end
  local used = p * (P - e) + c * P
  local reset = 0
  if last > w or c > 0 then
    reset = (math.max(last, w) + 2) * P - now
  elseif p > 0 then
    reset = P - e
  end
  local remaining = math.max(math.floor((k.limit * P - used) / P), 0)
  out[i + 2] = string.format('%d %d %.0f %.0f %.0f %d', ok, remaining, retry, reset, mark, k.cost)
end
return table.concat(out, ' ')
