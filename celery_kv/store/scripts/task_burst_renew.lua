-- Debounce heartbeat: set the running burst's lease again, only while this run holds it.
-- KEYS[1] burst hash
-- ARGV[1] run token, ARGV[2] lease (ms), ARGV[3] how long a lapsed run is remembered (ms)
-- Returns {'ok'} when renewed, {'deny'} when the burst is no longer this run's (lost).
-- uses: burst_expire
-- retry: safe (setting the same lease twice is setting it once)
if redis.call('HGET', KEYS[1], 'rtok') ~= ARGV[1] then
  return {'deny'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'rdl', now + tonumber(ARGV[2]))
burst_expire(KEYS, {now, ARGV[3]})
return {'ok'}
