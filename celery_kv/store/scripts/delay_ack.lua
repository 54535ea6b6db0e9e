-- Delay store, publish phase two: the broker took these entries' messages.
-- Each entry still claimed by this poller leaves the store; a sent marker (with a TTL)
-- says it was published and not yet run. An entry whose claim another poller took over
-- (this one's lease ran out) is that poller's to ack; one already consumed (its message
-- ran before the ack) is gone and stays gone.
-- KEYS[1] due ZSET, KEYS[2] bodies HASH, KEYS[3] claims HASH, KEYS[3 + i] the sent
-- marker of the i-th entry
-- ARGV[1] poller token, ARGV[2] sent marker TTL (ms), ARGV[2 + i] the i-th entry id
-- Returns the number of entries acked.
-- retry: safe (a second run finds the entries gone and changes nothing)
local acked = 0
for i = 4, #KEYS do
  local id = ARGV[i - 1]
  if redis.call('HGET', KEYS[3], id) == ARGV[1] then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('SET', KEYS[i], '1', 'PX', tonumber(ARGV[2]))
    acked = acked + 1
  end
end
return acked
