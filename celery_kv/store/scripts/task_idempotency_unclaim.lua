-- Idempotency, enqueue: undo a phase-one claim (the publish failed, or a later feature found
-- a duplicate). Only this call's own claim (same task id and nonce, still in progress) goes.
-- KEYS and ARGV as task_idempotency_claim.lua.
-- Returns {'ok'}.
-- retry: safe (a second run finds nothing of this call's left)
local rec = redis.call('HMGET', KEYS[1], 's', 'o', 'n')
if rec[1] == 'p' and rec[2] == ARGV[1] and rec[3] == ARGV[2] then
  redis.call('DEL', KEYS[1])
end
return {'ok'}
