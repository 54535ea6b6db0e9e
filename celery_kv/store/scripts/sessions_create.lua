-- Sessions create: a new record with its data, the hash of its secret and its creation time
-- (server ms), expiring after the sliding TTL (or the absolute lifetime, if sooner).
-- KEYS[1] the session record hash: s (secret hash), d (JSON data), c (created, ms)
-- ARGV[1] secret hash, ARGV[2] JSON data, ARGV[3] TTL (ms), ARGV[4] max lifetime (ms, 0 = none)
-- Returns 1 when created (or already created by this very call), 0 if the id is taken.
-- retry: safe (a second run finds its own secret hash and reports success)
local ttl = tonumber(ARGV[3])
local lifetime = tonumber(ARGV[4])
-- Refuse before any write: a bad TTL must not leave a record without one (1e12 ms is
-- MAX_SECONDS, the bound Python checks first).
if not ttl or not (ttl >= 1 and ttl <= 1e12) or not lifetime
    or not (lifetime >= 0 and lifetime <= 1e12) then
  return redis.error_reply('ERR celery-kv sessions: TTL ' .. tostring(ARGV[3])
    .. ' ms or max lifetime ' .. tostring(ARGV[4]) .. ' ms is out of range')
end
local found = redis.call('HGET', KEYS[1], 's')
if found then
  if found == ARGV[1] then
    return 1
  end
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if lifetime > 0 and lifetime < ttl then
  ttl = lifetime
end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'd', ARGV[2], 'c', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', ttl))
return 1
