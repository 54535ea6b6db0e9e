-- GCRA (generic cell rate algorithm) over N limits, charged all-or-nothing.
-- Each key holds one identity's TAT (theoretical arrival time) in server
-- microseconds as a decimal string. It expires when the TAT is reached, so an
-- idle identity costs no memory. A request of `cost` on a key is admitted at time
-- t when max(TAT, t) + cost * interval - burst * interval <= t; the slot S is the
-- earliest t >= now at which every key admits (and every throttle has passed).
-- 'hit' charges only when S = now; 'reserve' also charges when S is later (within
-- the horizon): every key's TAT becomes max(TAT, S) + cost * interval, as if the
-- request arrived at S. A call that charges nothing writes nothing.
-- KEYS[i], i <= N  TAT of limit i (all keys share one hash tag)
-- KEYS[N+i]        optional: limit i's "throttled until" key (server us; see ratelimit_throttle)
-- KEYS[2N+1]       optional: the overrides hash (field: KEYS[i]; value "limit period_us until_us")
-- ARGV[1]          'hit', 'reserve' or 'peek' (charge nothing)
-- ARGV[2]          horizon: the latest slot a 'reserve' takes, in us from now
-- ARGV[3i..3i+2]   limit i: cost (>= 1), emission interval in whole us (>= 1), burst (an
--                  override makes them ceil(period / limit) and limit); burst * interval
--                  <= 2^51 keeps every value here exact in a double
-- Returns one string of space-separated integers: now_us, slot_us (0 when nothing was charged),
-- then for each key allowed-now 0/1, remaining, retry_after_us, reset_after_us, mark (the TAT
-- this call set, 0 if none) and amount (cost * interval: what a give-back takes off).
-- retry: unsafe (a hit replayed after a lost reply would charge twice; peek mode is safe)
-- uses: ratelimit_limit_of ratelimit_interval ratelimit_charge
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local mode = ARGV[1]
local n = (#ARGV - 2) / 3
local aux = #KEYS > n
-- Expiries are absolute (PXAT/PEXPIREAT, ms, from TIME): a relative TTL counts from the
-- server's own command-time snapshot, which can trail TIME (by microseconds on Redis,
-- milliseconds on fakeredis) and would let the key vanish before its state is spent.

local ks, slot, never = {}, now, false
for i = 1, n do
  local k = {cost = tonumber(ARGV[3 * i]), interval = tonumber(ARGV[3 * i + 1]),
    burst = tonumber(ARGV[3 * i + 2]), hold = 0}
  if aux then
    local lim, per, hold = ratelimit_limit_of({KEYS[2 * n + 1], KEYS[i], KEYS[n + i]}, {now})
    if lim then
      k.interval, k.burst = ratelimit_interval({}, {lim, per}), lim
    end
    k.hold = hold
  end
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then
    tat = now
  end
  k.tat = tat
  k.at = math.max(tat + (k.cost - k.burst) * k.interval, k.hold)
  if k.cost > k.burst then
    never = true  -- an override shrank the burst below the cost: no slot admits it
  end
  slot = math.max(slot, k.at)
  ks[i] = k
end
local charge
charge, slot = ratelimit_charge({}, {mode, ARGV[2], now, slot, never, ks, false})
local out = {string.format('%.0f', now), charge and string.format('%.0f', slot) or '0'}
for i = 1, n do
  local k = ks[i]
  local tau = k.interval * k.burst
  local tat, ok, retry, mark = k.tat, 1, 0, 0
  if k.at > now or k.cost > k.burst then
    ok, retry = 0, math.max(k.at - now, 0)
  end
  if charge then
    tat = math.max(tat, slot) + k.cost * k.interval
    mark = tat
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PXAT',
      string.format('%.0f', math.ceil(tat / 1000)))
  end
  local remaining = math.max(math.floor((tau - (tat - now)) / k.interval), 0)
  out[i + 2] = string.format('%d %d %.0f %.0f %.0f %.0f', ok, remaining, retry, tat - now, mark,
    k.cost * k.interval)
end
return table.concat(out, ' ')
