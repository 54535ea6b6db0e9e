-- Idempotency forget: drop the record whatever its state (an operator's reset).
-- KEYS[1] the record hash
-- ARGV none
-- Returns 1 when there was a record, else 0.
-- retry: safe (a second run finds nothing; the record is gone either way)
return redis.call('DEL', KEYS[1])
