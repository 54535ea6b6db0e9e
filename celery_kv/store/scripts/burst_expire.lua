-- Debounce bursts (not run alone; the task_burst_* scripts use it): keep the burst hash as
-- long as a deadline in it matters, or delete it when none does. The pending message's
-- deadline (pexp), the running lease (rdl) plus the redelivery window (ARGV[2]: a lapsed
-- run's message may still come back and must find its record), the leading window, and
-- the lapsed run that a later burst covers (lid, until lexp).
-- KEYS[1] burst hash
-- ARGV[1] server time (ms), ARGV[2] how long a lapsed run is remembered (ms)
-- Returns {'ok'}.
-- retry: safe (sets a lifetime from the fields)
local f = redis.call('HMGET', KEYS[1], 'pid', 'pexp', 'rid', 'rdl', 'wid', 'wend', 'lid', 'lexp')
local now, last = tonumber(ARGV[1]), 0
if f[1] then last = math.max(last, tonumber(f[2])) end
if f[3] then last = math.max(last, tonumber(f[4]) + tonumber(ARGV[2])) end
if f[5] then last = math.max(last, tonumber(f[6])) end
if f[7] then last = math.max(last, tonumber(f[8])) end
if last <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], last - now)
end
return {'ok'}
