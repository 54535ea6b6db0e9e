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
-- ARGV[2i+2]     burst of limit i (>= cost)
-- Returns {now_us, then for each key: allowed 0/1, remaining, retry_after_us, reset_after_us}.
-- remaining and reset_after describe the state after this call (unchanged when not charged).
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
  local interval = tonumber(ARGV[2 * i + 1])
  local tau = interval * tonumber(ARGV[2 * i + 2])
  local tat = math.max(tonumber(redis.call('GET', key) or 0), now)
  local new_tat = tat + cost * interval
  local allow_at = new_tat - tau
  local s = {interval = interval, tau = tau, tat = tat, new_tat = new_tat, ok = now >= allow_at}
  s.retry = math.max(allow_at - now, 0)
  all_ok = all_ok and s.ok
  seen[i] = s
end
charge = charge and all_ok
local out = {now}
for i, key in ipairs(KEYS) do
  local s = seen[i]
  local tat = s.tat
  if charge then
    tat = s.new_tat
    redis.call('SET', key, string.format('%.0f', tat), 'PXAT', expire_at(tat - now))
  end
  local remaining = math.max(math.floor((s.tau - (tat - now)) / s.interval), 0)
  table.insert(out, s.ok and 1 or 0)
  table.insert(out, remaining)
  table.insert(out, s.retry)
  table.insert(out, tat - now)
end
return out
