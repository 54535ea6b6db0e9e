-- Describe a lock for operators (the CLI): holder, fence and remaining lease.
-- KEYS[1]  lock hash
-- Returns nil when nobody holds it, else {owner, fence or '', pttl_ms, taken at (server
-- ms) or ''}
-- (pttl_ms is -1 if the key somehow has no TTL).
-- retry: safe (read only)
local v = redis.call('HMGET', KEYS[1], 'owner', 'fence', 'at')
if not v[1] then
  return false
end
return {v[1], v[2] or '', redis.call('PTTL', KEYS[1]), v[3] or ''}
