-- Singleton, enqueue: undo a phase-one claim (the publish failed, or a later feature found a
-- duplicate). Only this call's own claim goes (same task id and nonce), or its place as a
-- running holder's successor. A replace gives the queued holder its previous nonce back
-- (its message is current again); a supersede gives the key back to the holder it took it
-- from (owner, fence, nonce, expiry) and lifts that holder's tombstone. The fence counter
-- stays.
-- KEYS and ARGV as task_singleton_claim.lua.
-- Returns {'ok'}.
-- retry: safe (a second run finds nothing of this call's left)
local rec = redis.call('HMGET', KEYS[1], 'owner', 'nonce', 'next', 'prev', 'prev_owner',
                       'prev_fence', 'prev_nonce', 'prev_until', 'prev_rep', 'prev_pin',
                       'prev_at')
local owner, nonce = rec[1], rec[2]
if owner and nonce == ARGV[2] and owner ~= ARGV[1] then  -- replaced a queued holder's message
  if rec[4] then
    redis.call('HSET', KEYS[1], 'nonce', rec[4])
    redis.call('SREM', KEYS[3], 'msg:' .. rec[4])
  else
    redis.call('HDEL', KEYS[1], 'nonce')
  end
  if rec[9] == '1' then
    redis.call('SREM', KEYS[3], 'replaced:' .. owner)
  end
  redis.call('HDEL', KEYS[1], 'prev', 'prev_rep')
elseif owner == ARGV[1] and nonce == ARGV[2] then
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local left = tonumber(rec[8] or '0') - now_ms
  if rec[5] then  -- superseded a holder: lift its tombstone
    local at = string.find(rec[5], '#run:', 1, true)
    redis.call('SREM', KEYS[3], 'id:' .. (at and string.sub(rec[5], 1, at - 1) or rec[5]))
  end
  if rec[5] and left > 0 then  -- and it holds the key again, for what it had left
    redis.call('HSET', KEYS[1], 'owner', rec[5], 'fence', rec[6])
    if rec[10] == '1' then
      redis.call('HSET', KEYS[1], 'pin', '1')
    else
      redis.call('HDEL', KEYS[1], 'pin')
    end
    if rec[7] ~= '' then
      redis.call('HSET', KEYS[1], 'nonce', rec[7])
    else
      redis.call('HDEL', KEYS[1], 'nonce')
    end
    if rec[11] and rec[11] ~= '' then
      redis.call('HSET', KEYS[1], 'at', rec[11])
    else
      redis.call('HDEL', KEYS[1], 'at')
    end
    redis.call('HDEL', KEYS[1], 'prev_owner', 'prev_fence', 'prev_nonce', 'prev_until',
      'prev_pin', 'prev_at')
    redis.call('PEXPIRE', KEYS[1], left)
  else
    redis.call('DEL', KEYS[1])
  end
elseif rec[3] == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'next')
end
return {'ok'}
