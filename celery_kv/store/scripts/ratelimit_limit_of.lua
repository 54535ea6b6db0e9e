-- The limit one rate-limit key stands under now (not run alone: the ratelimit_* scripts
-- use it): its live per-identity override (ratelimit_override) and its "throttled until"
-- (ratelimit_throttle).
-- KEYS[1] the overrides hash, KEYS[2] the key's state key (the field), KEYS[3] its
-- "throttled until" key
-- ARGV[1] server time (us)
-- Returns limit and period (us) of a live override (nil, nil: none), and the throttle's
-- until (us; 0: none).
-- retry: safe (reads only)
local hold = tonumber(redis.call('GET', KEYS[3])) or 0
local o = redis.call('HGET', KEYS[1], KEYS[2])
if o then
  local lim, per, till = string.match(o, '^(%d+) (%d+) (%d+)')
  if lim and (tonumber(till) == 0 or tonumber(till) > ARGV[1]) then
    return tonumber(lim), tonumber(per), hold
  end
end
return nil, nil, hold
