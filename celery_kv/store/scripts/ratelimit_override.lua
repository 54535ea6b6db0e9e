-- Per-identity rate overrides: operator data read by every rate-limit script.
-- One hash per limit scope, beside the limits' state keys; field = the state key of
-- one (limit, identity), value "limit period_us until_us" (until 0: no expiry). An
-- override lapses at its until (the scripts ignore it; the next write here removes
-- it): a per-field TTL that Redis 6.2 hashes lack. The hash itself has no TTL while it
-- holds a permanent override: overrides are configuration, not transient state.
-- A GCRA state is a time (its TAT), so a change of rate rescales the identity's debt
-- (TAT - now) from the old emission interval to the new one: the units it owes stay
-- the same. Window counts and logs are units already. An override that lapses by its
-- ttl is not rescaled back (at most one burst of its rate carries over as time).
-- KEYS[1]  the overrides hash
-- KEYS[2]  the state key of the (limit, identity) (the field)
-- ARGV[1]  'set' or 'unset'
-- ARGV[2]  the limit's algorithm; ARGV[3] its own emission interval in us (GCRA; else 0)
-- ARGV[4]  limit, ARGV[5] period in whole us, ARGV[6] ttl in whole us (0: none) (set only)
-- Returns 1 when a field was set or removed, 0 when unset found none.
-- retry: safe (setting or removing the same field twice leaves the same hash and debt)
-- uses: ratelimit_interval
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local key, field = KEYS[1], KEYS[2]

local function current()
  local o = redis.call('HGET', key, field)
  if o then
    local lim, per, till = string.match(o, '^(%d+) (%d+) (%d+)')
    if lim and (tonumber(till) == 0 or tonumber(till) > now) then
      return ratelimit_interval({}, {tonumber(lim), tonumber(per)})
    end
  end
  return tonumber(ARGV[3])
end

local before = 0
if ARGV[2] == 'gcra' then
  before = current()
end
local changed = 0
if ARGV[1] == 'set' then
  local ttl = tonumber(ARGV[6])
  local till = 0
  if ttl > 0 then
    till = now + ttl
  end
  redis.call('HSET', key, field, ARGV[4] .. ' ' .. ARGV[5] .. ' ' .. string.format('%.0f', till))
  changed = 1
else
  changed = redis.call('HDEL', key, field)
end
-- drop lapsed overrides; the hash expires with its last timed one, or never
local latest, permanent = 0, false
local all = redis.call('HGETALL', key)
for i = 1, #all, 2 do
  local till = tonumber(string.match(all[i + 1], '^%d+ %d+ (%d+)')) or 0
  if till == 0 then
    permanent = true
  elseif till <= now then
    redis.call('HDEL', key, all[i])
  else
    latest = math.max(latest, till)
  end
end
if permanent then
  redis.call('PERSIST', key)
elseif latest > 0 then
  redis.call('PEXPIREAT', key, string.format('%.0f', math.ceil(latest / 1000)))
end
if before > 0 then
  local after = current()
  local tat = tonumber(redis.call('GET', field))
  if tat and tat > now and after ~= before then
    tat = now + math.ceil((tat - now) * after / before)
    redis.call('SET', field, string.format('%.0f', tat), 'PXAT',
      string.format('%.0f', math.ceil(tat / 1000)))
  end
end
return changed
