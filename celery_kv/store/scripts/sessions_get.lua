-- Sessions get: read the data and slide the TTL in one step (the seed's GET + EXPIRE race,
-- fixed). A session past its absolute lifetime (server time) is deleted instead.
-- A wrong secret reads as absent and touches nothing.
-- KEYS[1] the session record hash: s (secret hash), d (JSON data), c (created, ms)
-- ARGV[1] secret hash, ARGV[2] TTL (ms), ARGV[3] max lifetime (ms, 0 = none)
-- Returns the JSON data, or false.
-- retry: safe (a second run reads the same data and sets the same TTL)
local ttl = tonumber(ARGV[2])
local lifetime = tonumber(ARGV[3])
-- Refuse before any write: a bad TTL must not leave a record without one (1e12 ms is
-- MAX_SECONDS, the bound Python checks first).
if not ttl or not (ttl >= 1 and ttl <= 1e12) or not lifetime
    or not (lifetime >= 0 and lifetime <= 1e12) then
  return redis.error_reply('ERR celery-kv sessions: TTL ' .. tostring(ARGV[2])
    .. ' ms or max lifetime ' .. tostring(ARGV[3]) .. ' ms is out of range')
end
local rec = redis.call('HMGET', KEYS[1], 's', 'd', 'c')
if not rec[1] or rec[1] ~= ARGV[1] then
  return false
end
if lifetime > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local left = tonumber(rec[3]) + lifetime - now
  if left <= 0 then
    redis.call('DEL', KEYS[1])
    return false
  end
  if left < ttl then
    ttl = left
  end
end
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', ttl))
return rec[2]
