-- Singleton, execution start: take the key for this run (owner token '<id>#run:<nonce>').
-- The queued claim of this task id is taken over with its fence; a free key is taken
-- fresh with the next fence (a message that skipped apply_async is held to the rule too).
-- KEYS[1] lock hash {owner, fence, nonce, next}, KEYS[2] fence counter
-- ARGV[1] run token, ARGV[2] task id, ARGV[3] running lease (ms), ARGV[4] fence counter TTL
-- (ms), ARGV[5] how long a handed-back claim lives (ms), ARGV[6] mode: 'queued' or 'running'
-- Returns {'ok', fence} when this run holds the key,
--         {'deny', holder, ms left, why}: why is 'self' when an earlier delivery of this same
--         task id runs, 'successor' when this task id is the holder's successor, else ''.
-- undo: task_singleton_hand_back
-- retry: safe (a second run by the same token finds the key its own)
local rec = redis.call('HMGET', KEYS[1], 'owner', 'fence', 'next')
local owner, fence = rec[1], rec[2]
if owner == ARGV[2] or owner == ARGV[1] then
  redis.call('HSET', KEYS[1], 'owner', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  return {'ok', fence}
end
if not owner then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    local now = redis.call('TIME')
    redis.call('SET', KEYS[2], now[1] .. string.format('%06d', tonumber(now[2])), 'PX', ARGV[4])
  end
  fence = string.format('%d', redis.call('INCR', KEYS[2]))
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'fence', fence)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'ok', fence}
end
local why = ''
if string.sub(owner, 1, #ARGV[2] + 5) == ARGV[2] .. '#run:' then
  why = 'self'
elseif rec[3] == ARGV[2] then
  why = 'successor'
end
return {'deny', owner, redis.call('PTTL', KEYS[1]), why}
