-- Debounce, execution start: does this message fire its key's burst now?
-- * The running burst's own task id (an earlier delivery runs it: 'self'; handed back by a
--   retry, or its lease lapsed with a killed worker: this delivery takes it over, with a
--   new fence and the arguments the burst fired with; a message of another nonce than the
--   one that fired it is 'stale').
-- * The pending burst's task id: a message of an older nonce is 'stale' (replaced or
--   adopted), one that comes before the due time is 'early' (a later trigger moved it:
--   it is published again for the new due time), one that finds the previous run going
--   is 'busy'; otherwise the burst fires: it becomes the running burst, with the latest
--   trigger's arguments, and the next trigger starts a new burst.
-- * Whenever a run takes the burst over a run whose lease lapsed, the lapsed run's task id
--   (lid) follows the new one (lby): its triggers are covered by the newer run, and a
--   redelivery of its message must not run the older arguments. An eager apply() covers
--   nothing (no stored result): the lapsed run is kept owed (largs, ln, lfirst), and a
--   redelivery of its message runs it once the key is free.
-- * Another task id published as a duplicate follows the burst it joined ('follow' while
--   that burst is still to run or running, 'followed' once it is over or its run lapsed:
--   the result backend then has its outcome, or will have once a redelivery ran it).
-- * A message that skipped apply_async (send_task, beat) is a trigger, armed here.
-- * Run eagerly (apply()), a call runs at once unless the key's run is going.
-- KEYS[1] burst hash, KEYS[2] fence counter
-- ARGV[1] run token, ARGV[2] task id, ARGV[3] running lease (ms), ARGV[4] fence counter TTL
-- (ms), ARGV[5] the message's nonce ('' none), ARGV[6] task id of the burst it follows
-- ('' none), ARGV[7] its arguments JSON, ARGV[8] debounce (ms), ARGV[9] maximum wait (ms),
-- ARGV[10] edge, ARGV[11] queued TTL (ms), ARGV[12] how long a handed-back run is kept
-- (ms), ARGV[13] '1' when run eagerly, ARGV[14] claim lease (ms)
-- Returns {'ok', fence, arguments JSON, triggers, ms since the first trigger},
--         {'deny', why, ms to wait, holder task id, message nonce armed here or ''}.
-- undo: task_burst_hand_back
-- uses: task_burst_arm burst_expire fence_next
-- retry: safe (a second run by the same token finds the burst its own)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, token, keep = ARGV[2], ARGV[1], ARGV[11]
local fields = {'pid', 'pdue', 'pmsg', 'pexp', 'rid', 'rtok', 'rdl', 'rfence', 'rargs', 'rn',
  'rfirst', 'rmsg', 'lid', 'lby'}

local function read()
  local v = redis.call('HMGET', KEYS[1], unpack(fields))
  local f = {}
  for i, name in ipairs(fields) do f[name] = v[i] end
  return f
end

local function next_fence()
  return fence_next({KEYS[2]}, {ARGV[4]})
end

local function running(f)
  return f.rid and tonumber(f.rdl) > now
end

local function take(f, rid, args, n, first, msg)
  if f.rid and f.rid ~= rid then
    if ARGV[13] == '1' then
      -- an eager apply() over a lapsed run covers nothing (its result is not in the
      -- backend): the lapsed run is owed, and a redelivery of its message runs it later
      local r = redis.call('HMGET', KEYS[1], 'rargs', 'rn', 'rfirst')
      redis.call('HSET', KEYS[1], 'lid', f.rid, 'lby', '', 'largs', r[1], 'ln', r[2],
        'lfirst', r[3], 'lexp', now + tonumber(keep))
    else
      -- the run before lapsed (a killed worker): this run, newer, covers its triggers
      -- too, so a redelivery of that run's message follows this run instead of running
      redis.call('HSET', KEYS[1], 'lid', f.rid, 'lby', rid, 'lexp', now + tonumber(keep))
    end
  end
  local fence = next_fence()
  redis.call('HSET', KEYS[1], 'rid', rid, 'rtok', token, 'rdl', now + tonumber(ARGV[3]),
    'rfence', fence, 'rargs', args, 'rn', n, 'rfirst', first, 'rmsg', msg or '')
  burst_expire(KEYS, {now, keep})
  return {'ok', fence, args, n, now - tonumber(first)}
end

local function wait_for(f, why, holder, msg)
  return {'deny', why, math.max(tonumber(f.rdl or now) - now, 0), holder or '', msg or ''}
end

-- a message that joined the burst of task id holder: wait while it is still to run or
-- running; once it is over (or its run lapsed), its outcome is in the result backend
local function follow(f, holder)
  if holder == f.pid then
    return {'deny', 'follow', math.max(tonumber(f.pdue) - now, 0), holder, ''}
  end
  if holder == f.rid and running(f) then
    return wait_for(f, 'follow', holder)
  end
  return {'deny', 'followed', 0, holder, ''}
end

local f = read()
if f.rid == id then
  if f.rtok == token then
    return {'ok', f.rfence, f.rargs, f.rn, now - tonumber(f.rfirst)}
  end
  if ARGV[5] ~= '' and (f.rmsg or '') ~= '' and f.rmsg ~= ARGV[5] then
    return {'deny', 'stale', 0, id, ''}  -- a message the burst's adoption replaced
  end
  if f.rtok ~= '' and running(f) then
    return wait_for(f, 'self', id)
  end
  return take(f, id, f.rargs, f.rn, f.rfirst, f.rmsg)
end
if f.lid == id then
  if f.lby ~= '' then
    return follow(f, f.lby)
  end
  if running(f) then
    return wait_for(f, 'busy', f.rid)
  end
  local l = redis.call('HMGET', KEYS[1], 'largs', 'ln', 'lfirst')
  redis.call('HDEL', KEYS[1], 'lid', 'lby', 'largs', 'ln', 'lfirst', 'lexp')
  return take(f, id, l[1], l[2], l[3])
end

local armed = ''
if f.pid ~= id and ARGV[6] == '' and ARGV[5] == '' then
  if ARGV[13] == '1' then
    if running(f) then
      return wait_for(f, 'busy', f.rid)
    end
    return take(f, id, ARGV[7], 1, now)
  end
  -- its caller holds its id: it never adopts another burst's id, it follows it
  local reply = task_burst_arm({KEYS[1]}, {id, token, ARGV[8], ARGV[9], ARGV[10], ARGV[7],
    ARGV[14], 0, keep, '1'})
  if reply[1] == 'deny' then
    return {'deny', 'follow', reply[3], reply[2], ''}
  end
  armed = reply[4]
  f = read()
end

if f.pid == id then
  if ARGV[5] ~= '' and f.pmsg ~= ARGV[5] then
    return {'deny', 'stale', 0, id, ''}
  end
  local due = tonumber(f.pdue)
  if due > now then
    redis.call('HSET', KEYS[1], 'pexp', math.max(tonumber(f.pexp), due + tonumber(keep)))
    burst_expire(KEYS, {now, keep})
    return {'deny', 'early', due - now, id, armed}
  end
  if running(f) then
    redis.call('HSET', KEYS[1], 'pexp', math.max(tonumber(f.pexp), tonumber(f.rdl) + tonumber(keep)))
    burst_expire(KEYS, {now, keep})
    return wait_for(f, 'busy', f.rid, armed)
  end
  local p = redis.call('HMGET', KEYS[1], 'pargs', 'pn', 'pfirst')
  redis.call('HDEL', KEYS[1], 'pid', 'pnonce', 'pmsg', 'pargs', 'pfirst', 'pdue', 'pmax', 'pn',
    'pexp', 'pprev', 'pprevn', 'pprevargs', 'pprevdue')
  return take(f, id, p[1], p[2], p[3], f.pmsg)
end

if ARGV[6] == '' then
  -- a message of this key's bursts whose burst is gone (the record lapsed): it still runs
  if running(f) then
    return wait_for(f, 'busy', f.rid)
  end
  return take(f, id, ARGV[7], 1, now, ARGV[5])
end
return follow(f, ARGV[6])
