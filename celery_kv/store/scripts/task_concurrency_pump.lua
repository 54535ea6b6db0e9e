-- Concurrency limit, the periodic pump (a worker's maintenance tick): slots whose lease
-- ended (a SIGKILLed run, a grant whose message never came) go to the next waiters.
-- uses: fair_pool
-- KEYS, ARGV: as fair_pool.lua (ARGV[1], ARGV[2] '', mode 'pump')
-- Returns {'ok', message...}: the messages of the waiters granted, for the caller to
-- publish. Cheap when nothing waits and no lease ended: two reads.
-- retry: safe (grants it makes are published like the first run's)
local P = fair_pool(KEYS, ARGV)
if redis.call('EXISTS', KEYS[3]) == 0
    and redis.call('ZCOUNT', KEYS[1], '-inf', P.ms(P.now)) == 0 then
  return {'ok'}
end
P.sweep()
P.keep()
return P.grant({'ok'}, 200)
