-- Singleton, enqueue: undo a phase-one claim (the publish failed, or a later feature found a
-- duplicate). Only this call's own claim goes (same task id and nonce), or its place as a
-- running holder's successor. The fence counter stays.
-- KEYS and ARGV as task_singleton_claim.lua.
-- Returns {'ok'}.
-- retry: safe (a second run finds nothing of this call's left)
local rec = redis.call('HMGET', KEYS[1], 'owner', 'nonce', 'next')
if rec[1] == ARGV[1] and rec[2] == ARGV[2] then
  redis.call('DEL', KEYS[1])
elseif rec[3] == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'next')
end
return {'ok'}
