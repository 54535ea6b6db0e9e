-- Idempotency: this run lets go of its claim without a final outcome (a retry, a deferral,
-- or a later feature of the same start phase denied): the claim goes back to the bare task
-- id, which is queued again, for ARGV[5] ms (the countdown plus the queued TTL). A queued
-- claim has no lease deadline: it lapses by its TTL, as a message that never ran.
-- KEYS and ARGV as task_idempotency_start.lua.
-- Returns {'ok'}.
-- retry: safe (a second run finds the claim no longer this run's)
local rec = redis.call('HMGET', KEYS[1], 's', 'o')
if rec[1] == 'p' and rec[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'o', ARGV[2])
  redis.call('HDEL', KEYS[1], 'l')
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return {'ok'}
