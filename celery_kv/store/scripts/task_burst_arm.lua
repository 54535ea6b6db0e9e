-- Debounce, enqueue phase one: a trigger joins its key's burst, or starts one.
-- The burst hash holds at most one pending burst (p*: its task id, the latest arguments
-- as JSON, first trigger, due time, maximum-wait deadline, triggers absorbed, message
-- nonce), one running burst (r*), and the leading edge's window (w*).
-- * An open leading window absorbs the trigger: the window's run is the first trigger's,
--   and the absorbed trigger's arguments are dropped (the leading edge).
-- * A pending burst absorbs it (for 'leading': one whose window closed while it waits for
--   the previous run): the arguments become the trigger's; 'trailing' moves the due time
--   to now + debounce, never past the maximum wait; the other edges keep it.
-- * A pending burst whose message is presumed lost (its claim was never confirmed, or it
--   is overdue by the queued TTL) is adopted: same task id, a new message nonce, published
--   again by this caller (a message of the old nonce that turns up is stale).
-- * Otherwise the trigger starts a burst under its own task id: due after the debounce
--   ('trailing') or at once ('leading', 'latest'; a countdown postpones it), and for
--   'leading' a window of the debounce that absorbs later triggers.
-- KEYS[1] burst hash
-- ARGV[1] task id, ARGV[2] claim nonce (the message nonce too), ARGV[3] debounce (ms),
-- ARGV[4] maximum wait (ms, 0: none), ARGV[5] 'trailing', 'leading' or 'latest',
-- ARGV[6] arguments JSON, ARGV[7] claim lease (ms), ARGV[8] the call's countdown (ms),
-- ARGV[9] how long a lapsed run is remembered (ms), ARGV[10] '1' when a caller or a canvas
-- holds this call's task id (it never adopts a burst: it is absorbed, and follows it)
-- Returns {'ok', ms until due, task id to publish, message nonce[, 'adopted']},
--         {'deny', task id of the burst that absorbed it, ms until due, triggers}.
-- undo: task_burst_unarm
-- uses: burst_expire
-- retry: safe (the nonce makes a second run of the same call answer as the first: 'ok' for
-- the burst it started, or 'deny' without counting the call twice; 'last' holds the nonce
-- of the last call absorbed)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local f = redis.call('HMGET', KEYS[1], 'pid', 'pnonce', 'pdue', 'pmax', 'pexp', 'pmsg',
  'wid', 'wend', 'wmax', 'last', 'pn', 'wn')
local pid, edge = f[1], ARGV[5]
local wait, maxw, delay = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[8])
local function capped(due, max)
  if max > 0 and due > max then return max end
  return due
end
local function done(reply)
  burst_expire(KEYS, {now, ARGV[9]})
  return reply
end
if pid == ARGV[1] and f[2] == ARGV[2] then
  return {'ok', math.max(tonumber(f[3]) - now, 0), pid, f[6]}
end
if f[10] == ARGV[2] then  -- this call was absorbed already (a retry after a lost reply)
  if edge == 'leading' and f[7] then
    return {'deny', f[7], math.max(tonumber(f[8]) - now, 0), tonumber(f[12])}
  end
  if pid then
    return {'deny', pid, math.max(tonumber(f[3]) - now, 0), tonumber(f[11])}
  end
end
if edge == 'leading' and f[7] and tonumber(f[8]) > now then
  local wend = capped(now + wait, tonumber(f[9]))
  redis.call('HSET', KEYS[1], 'wend', wend, 'last', ARGV[2])
  local n = redis.call('HINCRBY', KEYS[1], 'wn', 1)
  return done({'deny', f[7], math.max(wend - now, 0), n})
end
if pid then
  local prev_args = redis.call('HGET', KEYS[1], 'pargs')
  local due, max = tonumber(f[3]), tonumber(f[4])
  if edge == 'trailing' then
    due = capped(now + math.max(wait, delay), max)
  end
  redis.call('HSET', KEYS[1], 'pdue', due, 'pargs', ARGV[6], 'last', ARGV[2])
  local n = redis.call('HINCRBY', KEYS[1], 'pn', 1)
  if tonumber(f[5]) > now then
    return done({'deny', pid, math.max(due - now, 0), n})
  end
  if ARGV[10] == '1' then
    -- a held id cannot be handed the burst's: it follows, and the burst stays presumed
    -- lost for a claim lease more, for the next plain call to adopt and publish it
    redis.call('HSET', KEYS[1], 'pexp', now + tonumber(ARGV[7]))
    return done({'deny', pid, math.max(due - now, 0), n})
  end
  -- the undo gives the burst back what it had: its nonce (its message, if alive after all,
  -- is current again), its arguments and due time
  redis.call('HSET', KEYS[1], 'pnonce', ARGV[2], 'pmsg', ARGV[2], 'pexp', now + tonumber(ARGV[7]),
    'pprev', f[6], 'pprevn', f[2], 'pprevargs', prev_args, 'pprevdue', f[3])
  return done({'ok', math.max(due - now, 0), pid, ARGV[2], 'adopted'})
end
local max = 0
if maxw > 0 then max = now + maxw end
local due = now + delay
if edge == 'trailing' then
  due = capped(now + math.max(wait, delay), max)
end
redis.call('HSET', KEYS[1], 'pid', ARGV[1], 'pnonce', ARGV[2], 'pmsg', ARGV[2],
  'pargs', ARGV[6], 'pfirst', now, 'pdue', due, 'pmax', max, 'pn', 1,
  'pexp', now + tonumber(ARGV[7]))
if edge == 'leading' then
  redis.call('HSET', KEYS[1], 'wid', ARGV[1], 'wend', capped(now + wait, max), 'wmax', max,
    'wn', 1)
end
return done({'ok', math.max(due - now, 0), ARGV[1], ARGV[2]})
