-- Singleton, enqueue phase one: claim the key for a new task id, on a short lease.
-- A fresh claim takes the next fence (the counter starts from server time in microseconds
-- when missing, as lock_acquire.lua explains). The claim nonce (one per apply_async call)
-- tells a claim retried after a lost reply, which is this call's own, from a duplicate.
-- A claim made from inside the run that holds the key (a singleton enqueuing its
-- successor) is recorded as that run's successor: it is published, and takes the key
-- when the run ends (task_singleton_finish.lua).
-- KEYS[1] lock hash {owner, fence, nonce, next}, KEYS[2] fence counter
-- ARGV[1] task id, ARGV[2] claim nonce, ARGV[3] claim lease (ms), ARGV[4] fence counter
-- TTL (ms), ARGV[5] task id of the running task making this call, or ''
-- Returns {'ok', fence} when claimed (fence '' for a retried claim),
--         {'ok', '', 'successor'} when recorded as the running holder's successor,
--         {'deny', holder, ms left} when another task id (or this one, enqueued twice) holds it.
-- undo: task_singleton_unclaim
-- retry: safe (the nonce makes a second run of the same call answer 'ok' again)
local rec = redis.call('HMGET', KEYS[1], 'owner', 'nonce', 'next')
local owner, nxt = rec[1], rec[3]
if not owner then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    local now = redis.call('TIME')
    redis.call('SET', KEYS[2], now[1] .. string.format('%06d', tonumber(now[2])), 'PX', ARGV[4])
  end
  local fence = string.format('%d', redis.call('INCR', KEYS[2]))
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'fence', fence, 'nonce', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'ok', fence}
end
if owner == ARGV[1] and rec[2] == ARGV[2] then
  return {'ok', ''}
end
if ARGV[5] ~= '' and string.sub(owner, 1, #ARGV[5] + 5) == ARGV[5] .. '#run:' then
  if not nxt or nxt == ARGV[1] then
    redis.call('HSET', KEYS[1], 'next', ARGV[1])
    return {'ok', '', 'successor'}
  end
  owner = nxt
end
return {'deny', owner, redis.call('PTTL', KEYS[1])}
