-- Concurrency limit: give this run's slot back, and hand free slots to waiters.
-- uses: fair_pool
-- KEYS, ARGV: as fair_pool.lua. ARGV[8] mode: 'grant' (a final outcome: free slots go to
-- waiters now), 'revoke' (ARGV[1] is the grant token "g:<ticket>" of a waiter's message
-- that ends without taking its slot: revoked, replayed, already finished; its grant and
-- parked message go), 'hold' (a retry hands back: the pump hands
-- the slot on), 'start' (the undo of a start that a later step denied: its ticket may come
-- back, so it is no longer spent).
-- Returns {'ok', message...}: the messages of the waiters granted, for the caller to publish.
-- retry: safe (a second run finds no slot; grants it makes are published like the first's)
local P = fair_pool(KEYS, ARGV)
local token, kid, mode, ticket = ARGV[1], ARGV[2], ARGV[8], ARGV[9]
P.drop_holder(kid, token)
if mode == 'start' and ticket ~= '' then
  redis.call('ZREM', KEYS[8], ticket)
elseif mode == 'revoke' then
  redis.call('HDEL', KEYS[4], string.sub(token, 3))
end
P.sweep()
P.keep()
local out = {'ok'}
if mode == 'grant' or mode == 'revoke' then
  P.grant(out, 100)
end
return out
