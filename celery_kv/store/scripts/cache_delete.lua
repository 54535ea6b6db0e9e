-- Cache delete: remove one value.
-- KEYS[1] the namespace's version key, KEYS[2] the value hash (same {namespace} tag)
-- ARGV none
-- Returns 1 when a live value (written under the current version) was removed, else 0.
-- retry: safe (a second run finds nothing; the value is gone either way)
local version = redis.call('GET', KEYS[1])
local written = redis.call('HGET', KEYS[2], 'w')
redis.call('DEL', KEYS[2])
if version and written == version then
  return 1
end
return 0
