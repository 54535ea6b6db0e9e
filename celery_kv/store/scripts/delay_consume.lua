-- Delay store, at execution: the delivery of a published entry takes it, once.
-- The first delivery of an entry id consumes it: the entry (if a crash between publish
-- and ack left it claimed) and its sent marker go, and a used marker (the delivery's run
-- token, with a TTL) stays, so that a second copy (re-published after that crash) is a
-- duplicate. An id the store does not know at all (its markers expired, or the store's
-- data was lost) is 'unknown': the caller runs it rather than lose it.
-- KEYS[1] due ZSET, KEYS[2] bodies HASH, KEYS[3] claims HASH, KEYS[4] sent marker,
-- KEYS[5] used marker
-- ARGV[1] entry id, ARGV[2] run token, ARGV[3] used marker TTL (ms)
-- Returns 'ok' (run it), 'duplicate' (another delivery consumed it: do not run), 'unknown'.
-- retry: safe (the used marker holds the run token: a second run by the same token
-- answers 'ok' again)
local id = ARGV[1]
local used = redis.call('GET', KEYS[5])
if used then
  if used == ARGV[2] then
    return 'ok'
  end
  return 'duplicate'
end
local known = redis.call('HDEL', KEYS[2], id) + redis.call('DEL', KEYS[4])
redis.call('ZREM', KEYS[1], id)
redis.call('HDEL', KEYS[3], id)
redis.call('SET', KEYS[5], ARGV[2], 'PX', tonumber(ARGV[3]))
if known > 0 then
  return 'ok'
end
return 'unknown'
