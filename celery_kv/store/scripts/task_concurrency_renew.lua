-- Concurrency limit heartbeat: set this run's lease again, only while it holds its slot.
-- uses: fair_pool
-- KEYS, ARGV: as fair_pool.lua (ARGV[1] run token, ARGV[2] kid, ARGV[3] lease ms)
-- Returns {'ok'} when renewed, {'deny'} when the slot is no longer this run's (lost).
-- retry: safe (setting the same lease twice is setting it once)
local P = fair_pool(KEYS, ARGV)
local member = ARGV[2] .. '|' .. ARGV[1]
local ends = redis.call('ZSCORE', KEYS[1], member)
if not ends or tonumber(ends) <= P.now then
  return {'deny'}
end
redis.call('ZADD', KEYS[1], P.ms(P.now + tonumber(ARGV[3])), member)
P.keep()
return {'ok'}
