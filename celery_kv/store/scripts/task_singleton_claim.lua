-- Singleton, enqueue phase one: claim the key for a new task id, on a short lease.
-- A fresh claim takes the next fence (the counter starts from server time in microseconds
-- when missing, as lock_acquire.lua explains). The claim nonce (one per apply_async call)
-- tells a claim retried after a lost reply, which is this call's own, from a duplicate.
-- A claim made from inside the run that holds the key (a singleton enqueuing its
-- successor) is recorded as that run's successor: it is published, and takes the key
-- when the run ends (task_singleton_finish.lua).
-- on_duplicate "replace": a key held by a queued (not running) task id Q stays Q's, and
-- the lock's nonce becomes this call's (the previous one kept in 'prev', and tombstoned as
-- 'msg:<nonce>'): the caller publishes a new message of Q, and Q's older message is
-- stale at the worker (task_singleton_start.lua).
-- on_duplicate "supersede": this task id takes the key from its holder (queued or running)
-- with the next fence; the holder's task id is tombstoned ('id:<task id>'), so its queued
-- message ends revoked and its run is told at its next heartbeat. The previous owner, fence,
-- nonce and expiry are kept ('prev_*') for the undo.
-- KEYS[1] lock hash {owner, fence, nonce, next, pin, prev, prev_rep, prev_owner, prev_fence,
-- prev_nonce, prev_until, prev_pin, prev_at, at}, KEYS[2] fence counter, KEYS[3] tombstones (set of 'id:<task id>' and
-- 'msg:<nonce>' this key no longer runs)
-- ARGV[1] task id, ARGV[2] claim nonce, ARGV[3] claim lease (ms), ARGV[4] fence counter
-- TTL (ms), ARGV[5] task id of the running task making this call, or '', ARGV[6]
-- on_duplicate: 'replace', 'supersede' or '' (a plain duplicate), ARGV[7] how long
-- tombstones live at least (ms: the queued TTL, this call's delay and a lease), ARGV[8] '1'
-- when a caller or a canvas holds this call's task id (its message carries callbacks or
-- its id was given): such a claim is pinned ('pin'), and a replace never makes its message
-- stale (its callbacks would be lost): a newer call is then a plain duplicate
-- Returns {'ok', fence} when claimed (fence '' for a retried claim),
--         {'ok', '', 'successor'} when recorded as the running holder's successor,
--         {'ok', '', 'replaced', Q} when queued task id Q's message is replaced,
--         {'ok', fence, 'superseded', X} when task id X was superseded (fence '' retried),
--         {'deny', holder, ms left} when another task id (or this one, enqueued twice) holds it.
-- undo: task_singleton_unclaim
-- uses: fence_next
-- retry: safe (the nonce makes a second run of the same call answer 'ok' again)
local function at_ms()  -- when the holder took it (server ms): the lock's age for metrics
  local t = redis.call('TIME')
  return string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
local rec = redis.call('HMGET', KEYS[1], 'owner', 'nonce', 'next', 'prev_owner', 'pin')
local owner, nxt = rec[1], rec[3]
local mode = ARGV[6] or ''

local function task_of(token)
  local at = string.find(token, '#run:', 1, true)
  return at and string.sub(token, 1, at - 1) or token
end

local function next_fence()
  return fence_next({KEYS[2]}, {ARGV[4]})
end

local function tombstone(member)
  redis.call('SADD', KEYS[3], member)
  local ttl = math.max(tonumber(ARGV[7]), redis.call('PTTL', KEYS[1]),
                       redis.call('PTTL', KEYS[3]))
  redis.call('PEXPIRE', KEYS[3], ttl)
end

local function pin(pinned)
  if pinned == '1' then
    redis.call('HSET', KEYS[1], 'pin', '1')
  else
    redis.call('HDEL', KEYS[1], 'pin')
  end
end

if not owner then
  local fence = next_fence()
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'fence', fence, 'nonce', ARGV[2], 'at', at_ms())
  pin(ARGV[8])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'ok', fence}
end
if rec[2] == ARGV[2] then  -- this call's own claim, retried
  if owner ~= ARGV[1] then
    return {'ok', '', 'replaced', task_of(owner)}
  end
  if rec[4] then
    return {'ok', '', 'superseded', task_of(rec[4])}
  end
  return {'ok', ''}
end
if ARGV[5] ~= '' and string.sub(owner, 1, #ARGV[5] + 5) == ARGV[5] .. '#run:' then
  if not nxt or nxt == ARGV[1] then
    redis.call('HSET', KEYS[1], 'next', ARGV[1])
    return {'ok', '', 'successor'}
  end
  owner = nxt
end
local running = string.find(owner, '#run:', 1, true) ~= nil
if mode == 'replace' and not running and owner ~= ARGV[1] and owner == rec[1]
    and rec[5] ~= '1' then
  if rec[2] then
    redis.call('HSET', KEYS[1], 'prev', rec[2])
    tombstone('msg:' .. rec[2])
  else
    redis.call('HDEL', KEYS[1], 'prev')
  end
  redis.call('HSET', KEYS[1], 'nonce', ARGV[2])
  -- a message of this id without a nonce (send_task, or a retry of one) is older: stale
  if redis.call('SISMEMBER', KEYS[3], 'replaced:' .. owner) == 0 then
    tombstone('replaced:' .. owner)
    redis.call('HSET', KEYS[1], 'prev_rep', '1')  -- for the undo
  end
  return {'ok', '', 'replaced', owner}
end
if mode == 'supersede' and task_of(owner) ~= ARGV[1] and owner == rec[1] then
  local was = redis.call('HMGET', KEYS[1], 'fence', 'nonce', 'pin', 'at')
  local pttl = redis.call('PTTL', KEYS[1])
  local now = redis.call('TIME')
  local until_ms = pttl > 0 and (tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
                                 + pttl) or 0
  tombstone('id:' .. task_of(owner))
  local fence = next_fence()
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'fence', fence, 'nonce', ARGV[2], 'at', at_ms(),
             'prev_owner', owner, 'prev_fence', was[1] or '', 'prev_nonce', was[2] or '',
             'prev_until', string.format('%d', until_ms), 'prev_pin', was[3] or '',
             'prev_at', was[4] or '')
  pin(ARGV[8])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'ok', fence, 'superseded', task_of(owner)}
end
return {'deny', owner, redis.call('PTTL', KEYS[1])}
