-- Cache get: the value of one key, if it was written under the namespace's current version.
-- A cleared namespace has a newer version, so older values read as misses.
-- KEYS[1] the namespace's version key, KEYS[2] the value hash (same {namespace} tag)
-- ARGV none
-- Returns the stored JSON text, or false on a miss (an empty reply, never a JSON "null").
-- retry: safe (read only)
local version = redis.call('GET', KEYS[1])
if not version then
  return false
end
local rec = redis.call('HMGET', KEYS[2], 'w', 'v')
if rec[1] ~= version or not rec[2] then
  return false
end
return rec[2]
