-- Idempotency, enqueue phase one: claim the record for a new task id, on a short lease.
-- The record is the idempotency primitive's hash (see idempotency_begin.lua) plus the claim
-- nonce 'n', one per apply_async call: a claim retried after a lost reply is this call's own,
-- not a duplicate (lifecycle rule 13).
-- KEYS[1] record hash: s (p|c), o (owner), f (fingerprint), r (JSON result), e (error), n,
-- l (a running claim's lease deadline)
-- ARGV[1] task id, ARGV[2] claim nonce, ARGV[3] fingerprint, ARGV[4] claim lease (ms)
-- Returns {'ok'} when claimed (or re-claimed by this call),
--         {'deny', 'reused', owner} for a different fingerprint,
--         {'deny', 'completed', owner, result, error} when done,
--         {'deny', 'in_progress', owner, ms left} when another task id (or this one,
--         enqueued twice) holds it, {'deny', 'unknown', owner, ms left} when a run of it
--         lapsed without an outcome (ran, result unknown).
-- undo: task_idempotency_unclaim
-- retry: safe (the nonce makes a second run of the same call answer 'ok' again)
local rec = redis.call('HMGET', KEYS[1], 's', 'o', 'f', 'r', 'e', 'n', 'l')
local status, owner, fp = rec[1], rec[2], rec[3]
if not status then
  redis.call('HSET', KEYS[1], 's', 'p', 'o', ARGV[1], 'f', ARGV[3], 'n', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {'ok'}
end
if ARGV[3] ~= '' and fp and fp ~= '' and fp ~= ARGV[3] then
  return {'deny', 'reused', owner or ''}
end
if status == 'c' then
  return {'deny', 'completed', owner or '', rec[4] or '', rec[5] or ''}
end
if owner == ARGV[1] and rec[6] == ARGV[2] then
  return {'ok'}
end
local deadline = tonumber(rec[7])
if deadline then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if deadline <= now then
    return {'deny', 'unknown', owner or '', redis.call('PTTL', KEYS[1])}
  end
end
return {'deny', 'in_progress', owner or '', redis.call('PTTL', KEYS[1])}
