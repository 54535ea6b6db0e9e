-- Singleton, final outcome (success, failure, revoke, reject, ignore): free the key held by
-- this run or by the queued task id. When a successor was enqueued from the run, the key
-- becomes the successor's queued claim instead, with the next fence.
-- KEYS[1] lock hash, KEYS[2] fence counter
-- ARGV[1] run token ('' when not known: revoke), ARGV[2] task id, ARGV[3] a successor's
-- queued lifetime (ms), ARGV[4] fence counter TTL (ms), ARGV[5] '1' to match any run of the
-- task id (revoke, where the run token is not known)
-- Returns {'ok', 1} when this task id held the key, else {'ok', 0}.
-- retry: safe (a second run finds the key no longer this task id's)
local rec = redis.call('HMGET', KEYS[1], 'owner', 'next')
local owner, nxt = rec[1], rec[2]
local ours = owner and (owner == ARGV[1] or owner == ARGV[2] or
  (ARGV[5] == '1' and string.sub(owner, 1, #ARGV[2] + 5) == ARGV[2] .. '#run:'))
if not ours then
  if nxt == ARGV[2] then
    redis.call('HDEL', KEYS[1], 'next')
  end
  return {'ok', 0}
end
if nxt and nxt ~= ARGV[2] then
  local fence = string.format('%d', redis.call('INCR', KEYS[2]))
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'owner', nxt, 'fence', fence, 'at',
             string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)))
  redis.call('HDEL', KEYS[1], 'next', 'nonce', 'pin')
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return {'ok', 1}
