-- Idempotency complete: in_progress(owner) -> completed(result), kept for the record TTL.
-- Owner-checked: a claim that was taken over is not overwritten. A claim whose lease lapsed
-- while the runner could not reach Redis (the record is gone, and nobody claimed it since)
-- is completed all the same: the body ran, and "absent" would let a duplicate run it again.
-- KEYS[1] the record hash
-- ARGV[1] owner, ARGV[2] JSON result, ARGV[3] record TTL (ms), ARGV[4] fingerprint ('' for
-- none: a caller that only completes what it still holds)
-- Returns 1 when stored (or already completed by this owner), 2 when stored on a lapsed,
-- free key, 0 when another owner holds or completed it.
-- retry: safe (a second run by the same owner finds its own completed record)
local rec = redis.call('HMGET', KEYS[1], 's', 'o')
if not rec[1] and ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 's', 'c', 'o', ARGV[1], 'f', ARGV[4], 'r', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 2
end
if rec[2] ~= ARGV[1] then
  return 0
end
if rec[1] == 'c' then
  return 1
end
redis.call('HSET', KEYS[1], 's', 'c', 'r', ARGV[2])
redis.call('HDEL', KEYS[1], 'l')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
