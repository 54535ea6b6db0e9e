-- Singleton, execution start: take the key for this run (owner token '<id>#run:<nonce>').
-- The queued claim of this task id is taken over with its fence; a free key is taken
-- fresh with the next fence (a message that skipped apply_async is held to the rule too).
-- With on_duplicate 'replace' or 'supersede' the tombstones are read first: a task id a
-- newer call superseded is refused ('superseded': it ends revoked without its body), and a
-- message a newer one replaced is 'stale' (it ends with no outcome: the newer message of
-- the same task id carries it). A message is stale when its nonce (header 'singleton_msg')
-- is tombstoned, or differs from the nonce of a lock this task id holds; a message without
-- one (send_task, or a retry of one) is stale once a newer call replaced this task id's
-- message ('replaced:<task id>' tombstoned), else never.
-- KEYS[1] lock hash {owner, fence, nonce, next}, KEYS[2] fence counter, KEYS[3] tombstones
-- ARGV[1] run token, ARGV[2] task id, ARGV[3] running lease (ms), ARGV[4] fence counter TTL
-- (ms), ARGV[5] how long a handed-back claim lives (ms), ARGV[6] mode: 'queued' or 'running',
-- ARGV[7] on_duplicate: 'replace', 'supersede' or '', ARGV[8] the message's nonce or ''
-- Returns {'ok', fence} when this run holds the key,
--         {'deny', holder, ms left, why}: why is 'self' when an earlier delivery of this same
--         task id runs, 'successor' when this task id is the holder's successor,
--         'superseded' or 'stale' (above), else ''.
-- undo: task_singleton_hand_back
-- uses: fence_next
-- retry: safe (a second run by the same token finds the key its own)
local function at_ms()  -- when the holder took it (server ms): the lock's age for metrics
  local t = redis.call('TIME')
  return string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
local rec = redis.call('HMGET', KEYS[1], 'owner', 'fence', 'next', 'nonce')
local owner, fence = rec[1], rec[2]
local run_prefix = ARGV[2] .. '#run:'
local ours = owner and (owner == ARGV[2] or string.sub(owner, 1, #run_prefix) == run_prefix)
if (ARGV[7] or '') ~= '' then
  local why = ''
  if redis.call('SISMEMBER', KEYS[3], 'id:' .. ARGV[2]) == 1 then
    why = 'superseded'
  elseif ARGV[8] ~= '' and (redis.call('SISMEMBER', KEYS[3], 'msg:' .. ARGV[8]) == 1
      or (ours and rec[4] and rec[4] ~= ARGV[8])) then
    why = 'stale'
  elseif ARGV[8] == '' and redis.call('SISMEMBER', KEYS[3], 'replaced:' .. ARGV[2]) == 1 then
    why = 'stale'
  end
  if why ~= '' then
    return {'deny', owner or '', redis.call('PTTL', KEYS[1]), why}
  end
end
if owner == ARGV[2] or owner == ARGV[1] then
  if owner ~= ARGV[1] then  -- the queued claim becomes this run's
    redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'at', at_ms())
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  return {'ok', fence}
end
if not owner then
  fence = fence_next({KEYS[2]}, {ARGV[4]})
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'fence', fence, 'at', at_ms())
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'ok', fence}
end
local why = ''
if ours then
  why = 'self'
elseif rec[3] == ARGV[2] then
  why = 'successor'
end
return {'deny', owner, redis.call('PTTL', KEYS[1]), why}
