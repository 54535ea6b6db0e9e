-- Delay store: take one entry out before it is published (an operator's remove).
-- KEYS[1] due ZSET, KEYS[2] bodies HASH, KEYS[3] claims HASH
-- ARGV[1] entry id
-- Returns 1 when the entry was waiting (or claimed), 0 when it was not there.
-- retry: safe (a second run finds it gone; it then answers 0 for a removal that did happen)
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
