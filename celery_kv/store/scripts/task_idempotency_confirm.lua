-- Idempotency, enqueue phase two (the publish succeeded): the claim lives for the queued TTL.
-- A claim a fast worker already took over, or completed, is left alone. The lifetime is
-- only ever lengthened: a fast worker's retry may already have handed the claim back for
-- its countdown plus the queued TTL.
-- KEYS[1] record hash
-- ARGV[1] task id, ARGV[2] queued lifetime (ms)
-- Returns {'ok'}.
-- retry: safe (sets the same lifetime again)
local rec = redis.call('HMGET', KEYS[1], 's', 'o')
if rec[1] == 'p' and rec[2] == ARGV[1] and redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {'ok'}
