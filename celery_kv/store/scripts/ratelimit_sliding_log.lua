-- Sliding log over N limits, charged all-or-nothing: exact, never more than
-- `limit` units in any window of `period`.
-- Each key is a sorted set of charged units: score = server microseconds (a reserved
-- unit's is its slot, in the future), member "<us>:<n>" where n numbers the units
-- charged at that same microsecond (so members stay unique for cost > 1 and for calls
-- within one microsecond). A unit scored <= t - period has left t's window.
-- The slot S is the earliest t >= now and >= the newest unit's score at which the
-- units scored in (t - period, t] leave room for `cost` (and every throttle has
-- passed). Never before the newest unit: a unit slipped in ahead of a later one could
-- push that later unit's window over the limit, so requests queue in arrival order
-- behind the latest reservation. 'hit' charges only when S = now, 'reserve' also
-- charges a later S within the horizon; stale units are trimmed only when charging.
-- KEYS[i], i <= N  log of limit i (all keys share one hash tag)
-- KEYS[N+i]        optional: limit i's "throttled until" key (server us; see ratelimit_throttle)
-- KEYS[2N+1]       optional: the overrides hash (field: KEYS[i]; value "limit period_us until_us")
-- ARGV[1]          'hit', 'reserve' or 'peek' (charge nothing)
-- ARGV[2]          horizon: the latest slot a 'reserve' takes, in us from now
-- ARGV[3i..3i+2]   limit i: cost (>= 1), limit, period in whole us
-- Returns one string of space-separated integers: now_us, slot_us (0 when nothing was charged),
-- then for each key allowed-now 0/1, remaining, retry_after_us, reset_after_us, mark (the first
-- unit number n charged at the slot, 0 if none) and amount (the cost).
-- retry: unsafe (a hit replayed after a lost reply would charge twice; peek mode is safe)
-- uses: ratelimit_limit_of ratelimit_charge
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local mode = ARGV[1]
local n = (#ARGV - 2) / 3
local aux = #KEYS > n
-- Expiries are absolute (PXAT/PEXPIREAT, ms, from TIME): a relative TTL counts from the
-- server's own command-time snapshot, which can trail TIME (by microseconds on Redis,
-- milliseconds on fakeredis) and would let the key vanish before its state is spent.

local function fmt(v)
  return string.format('%.0f', v)
end

-- the earliest time >= from (and >= the newest unit) at which key i admits its cost
local function fit(i, k, from)
  local at = math.max(from, k.newest)
  local room = k.limit - k.cost
  local inside = k.live
  if at ~= now then
    inside = redis.call('ZCOUNT', KEYS[i], '(' .. fmt(at - k.period), '+inf')
  end
  if inside > room then
    -- the unit whose leaving makes room: then (at - period) must reach its score
    local nth = redis.call('ZRANGEBYSCORE', KEYS[i], '(' .. fmt(at - k.period), '+inf',
      'WITHSCORES', 'LIMIT', inside - room - 1, 1)
    at = tonumber(nth[2]) + k.period
  end
  return at
end

local ks, slot, never = {}, now, false
for i = 1, n do
  local key = KEYS[i]
  local k = {cost = tonumber(ARGV[3 * i]), limit = tonumber(ARGV[3 * i + 1]),
    period = tonumber(ARGV[3 * i + 2]), hold = 0, newest = 0}
  if aux then
    local lim, per, hold = ratelimit_limit_of({KEYS[2 * n + 1], key, KEYS[n + i]}, {now})
    k.limit, k.period, k.hold = lim or k.limit, per or k.period, hold
  end
  local newest = redis.call('ZREVRANGEBYSCORE', key, '+inf', '(' .. fmt(now - k.period),
    'WITHSCORES', 'LIMIT', 0, 1)
  if newest[2] then
    k.newest = tonumber(newest[2])
  end
  k.live = redis.call('ZCOUNT', key, '(' .. fmt(now - k.period), '+inf')
  if k.cost > k.limit then
    never = true
    k.at = now + k.period
  else
    k.at = fit(i, k, math.max(now, k.hold))
  end
  slot = math.max(slot, k.at)
  ks[i] = k
end
-- a slot every key admits (moved on until no key needs a later one), and the charge
local charge
charge, slot = ratelimit_charge({}, {mode, ARGV[2], now, slot, never, ks, fit})
local stamp = fmt(slot)
local out = {fmt(now), charge and stamp or '0'}
for i, key in ipairs(KEYS) do
  if i > n then
    break
  end
  local k = ks[i]
  local live, newest, ok, retry, mark = k.live, k.newest, 1, 0, 0
  if k.at > now then
    ok, retry = 0, k.at - now
  end
  if charge then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now - k.period))
    local seq = 0  -- the highest unit number at this microsecond (a give-back leaves gaps)
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', key, stamp, stamp)) do
      seq = math.max(seq, tonumber(string.match(member, ':(%d+)$')) or 0)
    end
    mark = seq + 1
    for u = seq + 1, seq + k.cost do
      redis.call('ZADD', key, stamp, stamp .. ':' .. string.format('%d', u))
    end
    live, newest = live + k.cost, math.max(newest, slot)
    redis.call('PEXPIREAT', key, fmt(math.ceil((newest + k.period) / 1000)))
  end
  local reset = 0
  if live > 0 then
    reset = math.max(newest + k.period - now, 0)
  end
  out[i + 2] = string.format('%d %d %.0f %.0f %d %d', ok, math.max(k.limit - live, 0), retry,
    reset, mark, k.cost)
end
return table.concat(out, ' ')
