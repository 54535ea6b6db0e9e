-- Sessions rotate: replace the session's secret, keeping its data and creation time, and
-- slide its TTL. The old id stops working in the same step (against session fixation).
-- The record key (the id's family part) is unchanged, so this is one key, cluster-safe.
-- KEYS[1] the session record hash: s (secret hash), d (JSON data), c (created, ms)
-- ARGV[1] old secret hash, ARGV[2] new secret hash, ARGV[3] TTL (ms),
-- ARGV[4] max lifetime (ms, 0 = none)
-- Returns 1 when rotated (or already rotated to this new secret), else 0.
-- retry: safe (a second run finds the new secret in place and reports success)
local ttl = tonumber(ARGV[3])
local lifetime = tonumber(ARGV[4])
-- Refuse before any write: a bad TTL must not leave a record without one (1e12 ms is
-- MAX_SECONDS, the bound Python checks first).
if not ttl or not (ttl >= 1 and ttl <= 1e12) or not lifetime
    or not (lifetime >= 0 and lifetime <= 1e12) then
  return redis.error_reply('ERR celery-kv sessions: TTL ' .. tostring(ARGV[3])
    .. ' ms or max lifetime ' .. tostring(ARGV[4]) .. ' ms is out of range')
end
local rec = redis.call('HMGET', KEYS[1], 's', 'c')
if rec[1] == ARGV[2] then
  return 1
end
if not rec[1] or rec[1] ~= ARGV[1] then
  return 0
end
if lifetime > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local left = tonumber(rec[2]) + lifetime - now
  if left <= 0 then
    redis.call('DEL', KEYS[1])
    return 0
  end
  if left < ttl then
    ttl = left
  end
end
redis.call('HSET', KEYS[1], 's', ARGV[2])
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', ttl))
return 1
