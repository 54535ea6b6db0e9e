-- Singleton, enqueue phase two (the publish succeeded): the claim lives for the queued TTL.
-- A claim already taken over by a fast worker (owner '<id>#run:...') is left alone, and so
-- is a successor's place (it rides on the running holder's lease). The lifetime is only
-- ever lengthened: a fast worker's retry may already have handed the claim back for its
-- countdown plus the queued TTL. What the claim kept for its undo (a replaced message's
-- nonce, a superseded holder) is dropped: the publish stands.
-- KEYS[1] lock hash
-- ARGV[1] task id, ARGV[2] queued lifetime (ms)
-- Returns {'ok'}.
-- retry: safe (sets the same lifetime again)
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'prev', 'prev_rep', 'prev_owner', 'prev_fence', 'prev_nonce',
    'prev_until', 'prev_pin', 'prev_at')
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
end
return {'ok'}
