-- Debounce: this run lets go of its burst without a final outcome (a retry, a deferral,
-- or a later feature of the same start phase denied). The burst stays this task id's, for
-- ARGV[12] ms: its message is queued again and takes it over, and the next burst waits.
-- KEYS and ARGV as task_burst_fire.lua.
-- Returns {'ok'}.
-- uses: burst_expire
-- retry: safe (a second run finds the burst no longer this run's)
if redis.call('HGET', KEYS[1], 'rtok') == ARGV[1] then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[1], 'rtok', '', 'rdl', now + tonumber(ARGV[12]))
  burst_expire(KEYS, {now, ARGV[11]})
end
return {'ok'}
