-- Idempotency begin: claim a key, or report what holds it (the state machine's entry).
-- absent -> in_progress(owner, fingerprint) with the record expiring after the lease;
-- in_progress by the same owner -> lease refreshed ("reentered", a Celery retry);
-- in_progress by exactly the takeover owner -> handed to this owner, lease set ("reentered":
-- a Celery task's queued claim becoming its running one); in_progress by another owner ->
-- "in_progress"; completed -> "completed" with the result.
-- A fingerprint mismatch (both non-empty and different) changes nothing: "reused".
-- KEYS[1] the record hash: s (status p|c), o (owner), f (fingerprint), r (JSON result)
-- ARGV[1] owner, ARGV[2] fingerprint ('' = do not check), ARGV[3] lease (ms),
-- ARGV[4] takeover owner ('' = none)
-- Returns {status, owner, result or '', ms left (lease while in progress, ttl when done)}.
-- retry: safe (a second run by the same owner re-enters its own claim, taken over or not)
local rec = redis.call('HMGET', KEYS[1], 's', 'o', 'f', 'r')
local status, owner, fp = rec[1], rec[2], rec[3]
if not status then
  redis.call('HSET', KEYS[1], 's', 'p', 'o', ARGV[1], 'f', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'acquired', ARGV[1], '', tonumber(ARGV[3])}
end
if ARGV[2] ~= '' and fp and fp ~= '' and fp ~= ARGV[2] then
  return {'reused', owner or '', '', 0}
end
if status == 'c' then
  return {'completed', owner or '', rec[4] or '', redis.call('PTTL', KEYS[1])}
end
if ARGV[4] ~= '' and owner == ARGV[4] then
  redis.call('HSET', KEYS[1], 'o', ARGV[1])
  owner = ARGV[1]
end
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'reentered', owner, '', tonumber(ARGV[3])}
end
return {'in_progress', owner or '', '', redis.call('PTTL', KEYS[1])}
