-- Fixed window counter over N limits, charged all-or-nothing.
-- Windows are aligned on server time (w = floor(t / period)); each key is a hash of
-- counters, field "<w>" = units charged to window w (reservations included) and field
-- "m" = the latest window holding any, and it expires at the end of window m. Up to
-- `limit` units per window; a burst at the end of one window and the start of the next
-- can admit 2 * limit within one period. The slot S is the earliest t >= now at which
-- every key's window floor(t / period) has room (and every throttle has passed): 'hit'
-- charges only when S = now, 'reserve' also charges a later S within the horizon, into
-- the first window with room (HINCRBY of that window's counter). A call that charges
-- nothing writes nothing.
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

-- the earliest time >= from at which key i's window has room for its cost, or nil
local function fit(i, k, from)
  local w = math.floor(from / k.period)
  for _ = 1, SCAN do
    if count(i, k, w) + k.cost <= k.limit then
      return math.max(from, w * k.period)
    end
    w = w + 1
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
  local got = redis.call('HMGET', KEYS[i], 'm', string.format('%.0f', w))
  k.last, k.seen = tonumber(got[1]) or -1, {[w] = tonumber(got[2]) or 0}
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
  local w = math.floor(now / k.period)
  local ok, retry, mark = 1, 0, 0
  if k.at > now then
    ok, retry = 0, k.at - now
  end
  local last = k.last
  local c = count(i, k, w)
  if charge then
    mark = math.floor(slot / k.period)
    if last < w then
      redis.call('DEL', key)  -- every window it counted has passed
    elseif redis.call('HLEN', key) > 2 then
      for _, field in ipairs(redis.call('HKEYS', key)) do
        local old = tonumber(field)
        if old and old < w then
          redis.call('HDEL', key, field)
        end
      end
    end
    redis.call('HINCRBY', key, string.format('%.0f', mark), k.cost)
    if mark == w then
      c = c + k.cost
    end
    if mark > last then
      last = mark
      redis.call('HSET', key, 'm', string.format('%.0f', last))
    end
    redis.call('PEXPIREAT', key, string.format('%.0f', math.ceil((last + 1) * k.period / 1000)))
  end
  local reset = 0
  if last >= w and (c > 0 or last > w) then
    reset = (last + 1) * k.period - now
  end
  out[i + 2] = string.format('%d %d %.0f %.0f %.0f %d', ok, math.max(k.limit - c, 0), retry, reset,
    mark, k.cost)
end
return table.concat(out, ' ')
