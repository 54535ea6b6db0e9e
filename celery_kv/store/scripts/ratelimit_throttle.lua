-- Throttle limits: no admission before now + delay (a partner answered 429 Retry-After).
-- Each key is a limit's "throttled until" key, beside its state, holding server
-- microseconds; every rate-limit script reads it (when given its optional keys) and
-- admits or reserves nothing earlier, whatever the algorithm. Only ever moved later,
-- and it expires when it is reached.
-- KEYS[i]  "throttled until" key of limit i (all keys share one hash tag)
-- ARGV[1]  delay in whole microseconds (>= 0)
-- Returns the "until" of the first key, in server microseconds, as a string.
-- retry: safe (a replay sets the same "until" or one a few ms later: it only ever delays)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wanted = now + tonumber(ARGV[1])
local first = nil
for _, key in ipairs(KEYS) do
  local till = math.max(tonumber(redis.call('GET', key)) or 0, wanted)
  redis.call('SET', key, string.format('%.0f', till), 'PXAT',
    string.format('%.0f', math.ceil(till / 1000)))
  first = first or till
end
return string.format('%.0f', first or wanted)
