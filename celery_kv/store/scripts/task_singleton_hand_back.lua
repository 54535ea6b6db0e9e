-- Singleton: this run lets go of the key without a final outcome (a retry, a deferral, or a
-- later feature of the same start phase denied). In 'queued' mode the key goes back to the
-- bare task id, which is queued again, for ARGV[5] ms (the countdown plus the queued TTL);
-- in 'running' mode it is freed.
-- KEYS and ARGV as task_singleton_start.lua.
-- Returns {'ok'}.
-- retry: safe (a second run finds the key no longer this run's)
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  if ARGV[6] == 'queued' then
    redis.call('HSET', KEYS[1], 'owner', ARGV[2])
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
  else
    redis.call('DEL', KEYS[1])
  end
end
return {'ok'}
