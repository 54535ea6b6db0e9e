-- Sessions destroy: delete a session, if the secret matches.
-- KEYS[1] the session record hash: s (secret hash), d (JSON data), c (created, ms)
-- ARGV[1] secret hash
-- Returns 1 when deleted, else 0.
-- retry: safe (a second run finds nothing; the session is gone either way)
if redis.call('HGET', KEYS[1], 's') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
