-- Idempotency complete: in_progress(owner) -> completed(result), kept for the record TTL.
-- Owner-checked: a claim that expired or was taken over is not overwritten.
-- KEYS[1] the record hash
-- ARGV[1] owner, ARGV[2] JSON result, ARGV[3] record TTL (ms)
-- Returns 1 when stored (or already completed by this owner), 0 when the claim was lost.
-- retry: safe (a second run by the same owner finds its own completed record)
local rec = redis.call('HMGET', KEYS[1], 's', 'o')
if rec[2] ~= ARGV[1] then
  return 0
end
if rec[1] == 'c' then
  return 1
end
redis.call('HSET', KEYS[1], 's', 'c', 'r', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
