-- Idempotency, enqueue phase two (the publish succeeded): the claim lives for the queued TTL.
-- A claim a fast worker already took over, or completed, is left alone.
-- KEYS[1] record hash
-- ARGV[1] task id, ARGV[2] queued lifetime (ms)
-- Returns {'ok'}.
-- retry: safe (sets the same lifetime again)
local rec = redis.call('HMGET', KEYS[1], 's', 'o')
if rec[1] == 'p' and rec[2] == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {'ok'}
