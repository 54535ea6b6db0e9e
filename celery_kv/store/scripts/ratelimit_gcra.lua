-- GCRA (generic cell rate algorithm) over N limits, charged all-or-nothing.
-- Each key holds one identity's TAT (theoretical arrival time) in server
-- microseconds as a decimal string. It expires when the TAT is reached, so an
-- idle identity costs no memory. A request of `cost` is admitted when
-- max(TAT, now) + cost * interval - burst * interval <= now; only then, and only
-- when every key admits, is any TAT moved. A denied call writes nothing.
-- KEYS[i]        TAT of limit i (all keys share one hash tag)
-- ARGV[1]        'hit' (charge when every key admits) or 'peek' (charge nothing)
-- ARGV[2]        cost, an integer >= 1 (peek passes 1: "would one more be admitted?")
-- ARGV[2i+1]     emission interval of limit i in whole microseconds (>= 1)
-- ARGV[2i+2]     burst of limit i (>= cost; burst * interval <= 2^51, so that every
--                value here, at most now + 2 * burst * interval, is exact in a double)
-- Returns one string of space-separated integers: now_us, then for each key allowed 0/1,
-- remaining, retry_after_us, reset_after_us (one bulk reply parses faster than an array).
-- remaining and reset_after describe the state after this call (unchanged when not charged).
-- retry: unsafe (a hit replayed after a lost reply would charge twice; peek mode is safe)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[2])
-- Expiries are absolute (PXAT/PEXPIREAT, ms, from TIME): a relative TTL counts from the
-- server's own command-time snapshot, which can trail TIME (by microseconds on Redis,
-- milliseconds on fakeredis) and would let the key vanish before its state is spent.

local tats, all_ok = {}, true
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then
    tat = now
  end
  tats[i] = tat
  -- admitted when tat + cost * interval - burst * interval <= now
  if tat + (cost - tonumber(ARGV[2 * i + 2])) * tonumber(ARGV[2 * i + 1]) > now then
    all_ok = false
  end
end
local charge = all_ok and ARGV[1] == 'hit'
local out = {string.format('%.0f', now)}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i + 1])
  local tau = interval * tonumber(ARGV[2 * i + 2])
  local tat = tats[i]
  local allow_at = tat + cost * interval - tau
  local ok, retry = 1, 0
  if allow_at > now then
    ok, retry = 0, allow_at - now
  end
  if charge then
    tat = tat + cost * interval
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PXAT',
      string.format('%.0f', math.ceil(tat / 1000)))
  end
  local remaining = math.max(math.floor((tau - (tat - now)) / interval), 0)
  out[i + 1] = string.format('%d %d %.0f %.0f', ok, remaining, retry, tat - now)
end
return table.concat(out, ' ')
