-- Idempotency state: the record and its remaining time, read in one step.
-- KEYS[1] the record hash
-- ARGV none
-- Returns {status ('' when absent), owner, fingerprint, result, ms left}.
-- retry: safe (read only)
local rec = redis.call('HMGET', KEYS[1], 's', 'o', 'f', 'r')
if not rec[1] then
  return {'', '', '', '', 0}
end
return {rec[1], rec[2] or '', rec[3] or '', rec[4] or '', redis.call('PTTL', KEYS[1])}
