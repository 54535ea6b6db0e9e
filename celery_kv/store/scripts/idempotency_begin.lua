-- Idempotency begin: claim a key, or report what holds it (the state machine's entry).
-- absent -> in_progress(owner, fingerprint, lease deadline 'l'), the record kept for the
-- record TTL: a runner whose lease lapses (killed, or cut off as its body ended) leaves
-- "ran, result unknown" behind, never "free", so no duplicate runs its effects again;
-- in_progress by the same owner -> lease refreshed ("reentered", even after it lapsed:
-- nobody else can have taken the key); in_progress by exactly the takeover owner -> handed
-- to this owner ("reentered"); in_progress by another owner -> "in_progress", or "unknown"
-- once its lease lapsed; completed -> "completed" with the result.
-- A fingerprint mismatch (both non-empty and different) changes nothing: "reused".
-- KEYS[1] the record hash: s (status p|c), o (owner), f (fingerprint), r (JSON result),
-- l (lease deadline, server ms)
-- ARGV[1] owner, ARGV[2] fingerprint ('' = do not check), ARGV[3] lease (ms),
-- ARGV[4] takeover owner ('' = none), ARGV[5] record TTL (ms)
-- Returns {status, owner, result or '', ms left (lease while in progress, ttl when done)}.
-- retry: safe (a second run by the same owner re-enters its own claim, taken over or not)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
local rec = redis.call('HMGET', KEYS[1], 's', 'o', 'f', 'r', 'l')
local status, owner, fp, deadline = rec[1], rec[2], rec[3], tonumber(rec[5])
local function hold(by)
  redis.call('HSET', KEYS[1], 's', 'p', 'o', by, 'l', now + lease)
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[5]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
  end
end
if not status then
  redis.call('HSET', KEYS[1], 'f', ARGV[2])
  hold(ARGV[1])
  return {'acquired', ARGV[1], '', lease}
end
if ARGV[2] ~= '' and fp and fp ~= '' and fp ~= ARGV[2] then
  return {'reused', owner or '', '', 0}
end
if status == 'c' then
  return {'completed', owner or '', rec[4] or '', redis.call('PTTL', KEYS[1])}
end
if owner == ARGV[1] or (ARGV[4] ~= '' and owner == ARGV[4]) then
  hold(ARGV[1])
  return {'reentered', ARGV[1], '', lease}
end
if deadline and deadline <= now then
  return {'unknown', owner or '', '', redis.call('PTTL', KEYS[1])}
end
return {'in_progress', owner or '', '', deadline and deadline - now or redis.call('PTTL', KEYS[1])}
