-- Cache delete: remove one value, and drop the key's compute lease: a get_or_set computing
-- at the same time then finds its lease gone when it fills, and stores nothing (see
-- cache_fill), so the deletion is not undone by a value computed before it.
-- KEYS[1] the namespace's version key, KEYS[2] the value hash, KEYS[3] the key's compute
-- lease (all under the namespace's {tag})
-- ARGV none
-- Returns 1 when a live value (written under the current version) was removed, else 0.
-- retry: safe (a second run finds nothing; the value is gone either way; a lease taken in
-- between is dropped too, which costs at most one fill)
local version = redis.call('GET', KEYS[1])
local written = redis.call('HGET', KEYS[2], 'w')
redis.call('DEL', KEYS[2], KEYS[3])
if version and written == version then
  return 1
end
return 0
