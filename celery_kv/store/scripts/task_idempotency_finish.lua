-- Idempotency, final outcome: store the outcome of the run that holds the claim, or release
-- the claim after a failure so a later call can run. An outcome with an error text (the
-- body ran but its result is not JSON) is stored too: its side effects happened, so a
-- duplicate must not run it again; replays raise that error.
-- A body that ran stores its outcome even when its lease lapsed before this call (an outage
-- as the body ended) and nobody took the key since: the record would otherwise say "free"
-- about a body that ran.
-- KEYS[1] record hash
-- ARGV[1] run token ('' when not known), ARGV[2] task id, ARGV[3] 'done' or 'failed',
-- ARGV[4] JSON result, ARGV[5] error text or '', ARGV[6] record TTL (ms), ARGV[7] '1' to
-- match any run of the task id (revoke), ARGV[8] fingerprint of the arguments
-- Returns {'ok', 1} when this task id held the claim (or had already stored this outcome),
-- {'ok', 2} when the outcome was stored on a lapsed, free key, {'ok', 0} when another call
-- holds or completed the key, or when a failed run finds nothing to release.
-- retry: safe (a second run finds the outcome stored by this run, and changes nothing)
local rec = redis.call('HMGET', KEYS[1], 's', 'o')
local state, owner = rec[1], rec[2]
local function complete()
  redis.call('HSET', KEYS[1], 's', 'c', 'r', ARGV[4])
  if ARGV[5] ~= '' then
    redis.call('HSET', KEYS[1], 'e', ARGV[5])
  end
  redis.call('HDEL', KEYS[1], 'n', 'l')
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
if not state then
  if ARGV[3] == 'done' and ARGV[1] ~= '' then
    redis.call('HSET', KEYS[1], 'o', ARGV[1], 'f', ARGV[8])
    complete()
    return {'ok', 2}
  end
  return {'ok', 0}
end
if state == 'c' then
  return {'ok', (ARGV[1] ~= '' and owner == ARGV[1]) and 1 or 0}
end
if state ~= 'p' or not owner then
  return {'ok', 0}
end
local ours = owner == ARGV[1] or owner == ARGV[2] or
  (ARGV[7] == '1' and string.sub(owner, 1, #ARGV[2] + 5) == ARGV[2] .. '#run:')
if not ours then
  return {'ok', 0}
end
if ARGV[3] == 'done' then
  complete()
else
  redis.call('DEL', KEYS[1])
end
return {'ok', 1}
