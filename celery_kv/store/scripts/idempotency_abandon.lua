-- Idempotency abandon: in_progress(owner) -> absent, so a retry can run (compute raised).
-- Owner-checked; a completed record is never removed here.
-- KEYS[1] the record hash
-- ARGV[1] owner
-- Returns 1 when this owner's claim was released, else 0.
-- retry: safe (a second run finds nothing of this owner's; the claim is gone either way)
local rec = redis.call('HMGET', KEYS[1], 's', 'o')
if rec[1] == 'p' and rec[2] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
