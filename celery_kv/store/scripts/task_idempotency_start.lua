-- Idempotency, execution start: claim the record for this run, take over the queued claim
-- of this task id, or replay the stored outcome.
-- A running claim carries its lease as a deadline ('l', server ms) and the record lives for
-- the record TTL: a run whose lease lapses (its worker killed, or cut off as the body ended)
-- leaves "ran, result unknown", which a duplicate refuses rather than run the effects
-- again. Only a redelivery of the same task id takes a lapsed run's claim over (the broker
-- redelivers a killed run's message only under acks_late: at-least-once, chosen).
-- KEYS[1] record hash
-- ARGV[1] run token, ARGV[2] task id, ARGV[3] fingerprint ('' = do not check),
-- ARGV[4] running lease (ms), ARGV[5] how long a handed-back claim lives (ms),
-- ARGV[6] record TTL (ms)
-- Returns {'ok'} when this run holds the claim,
--         {'stop', 'completed', owner, result, error} to replay the stored outcome,
--         {'deny', 'reused', owner} for a different fingerprint,
--         {'deny', why, owner, ms left} while another run holds it: why is 'self' when it is
--         an earlier delivery of this same task id, 'unknown' when that run's lease lapsed
--         (ran, result unknown), else 'in_progress'.
-- undo: task_idempotency_hand_back
-- retry: safe (a second run by the same token finds the claim its own)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rec = redis.call('HMGET', KEYS[1], 's', 'o', 'f', 'r', 'e', 'l')
local status, owner, fp, deadline = rec[1], rec[2], rec[3], tonumber(rec[6])
local function hold()
  redis.call('HSET', KEYS[1], 's', 'p', 'o', ARGV[1], 'l', now + tonumber(ARGV[4]))
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[6]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[6])
  end
end
if not status then
  redis.call('HSET', KEYS[1], 'f', ARGV[3])
  hold()
  return {'ok'}
end
if ARGV[3] ~= '' and fp and fp ~= '' and fp ~= ARGV[3] then
  return {'deny', 'reused', owner or ''}
end
if status == 'c' then
  return {'stop', 'completed', owner or '', rec[4] or '', rec[5] or ''}
end
if owner == ARGV[2] or owner == ARGV[1] then
  hold()
  return {'ok'}
end
local same = owner and string.sub(owner, 1, #ARGV[2] + 5) == ARGV[2] .. '#run:'
if deadline and deadline <= now then
  if same then
    hold()
    return {'ok'}
  end
  return {'deny', 'unknown', owner or '', redis.call('PTTL', KEYS[1])}
end
local why = same and 'self' or 'in_progress'
return {'deny', why, owner or '', deadline and deadline - now or redis.call('PTTL', KEYS[1])}
