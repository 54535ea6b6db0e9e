-- Idempotency, execution start: claim the record for this run, take over the queued claim
-- of this task id, or replay the stored outcome.
-- KEYS[1] record hash
-- ARGV[1] run token, ARGV[2] task id, ARGV[3] fingerprint ('' = do not check),
-- ARGV[4] running lease (ms), ARGV[5] how long a handed-back claim lives (ms)
-- Returns {'ok'} when this run holds the claim,
--         {'stop', 'completed', owner, result, error} to replay the stored outcome,
--         {'deny', 'reused', owner} for a different fingerprint,
--         {'deny', why, owner, ms left} while another run holds it: why is 'self' when it is
--         an earlier delivery of this same task id, else 'in_progress'.
-- undo: task_idempotency_hand_back
-- retry: safe (a second run by the same token finds the claim its own)
local rec = redis.call('HMGET', KEYS[1], 's', 'o', 'f', 'r', 'e')
local status, owner, fp = rec[1], rec[2], rec[3]
if not status then
  redis.call('HSET', KEYS[1], 's', 'p', 'o', ARGV[1], 'f', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {'ok'}
end
if ARGV[3] ~= '' and fp and fp ~= '' and fp ~= ARGV[3] then
  return {'deny', 'reused', owner or ''}
end
if status == 'c' then
  return {'stop', 'completed', owner or '', rec[4] or '', rec[5] or ''}
end
if owner == ARGV[2] or owner == ARGV[1] then
  redis.call('HSET', KEYS[1], 'o', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {'ok'}
end
local why = 'in_progress'
if owner and string.sub(owner, 1, #ARGV[2] + 5) == ARGV[2] .. '#run:' then
  why = 'self'
end
return {'deny', why, owner or '', redis.call('PTTL', KEYS[1])}
