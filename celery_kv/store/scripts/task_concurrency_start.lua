-- Concurrency limit, execution start: take a slot for this run, convert the grant its
-- message carries (a waiter's turn came), or park the run as a waiter.
-- uses: fair_pool
-- KEYS, ARGV: as fair_pool.lua (mode 'start'; ARGV[10] '' when the run cannot be parked:
-- it runs eagerly)
-- Returns {'ok'} with a slot; {'deny', why, n, message...} when it has none:
--   'parked' (n: the waiters of its key; then the messages of waiters granted meanwhile,
--   this one's maybe: the caller publishes them), 'busy' (n: ms until the earliest lease
--   ends; not parked), 'full' (n: max waiting), 'spent' (its ticket already ran, or its
--   waiter is queued again: another copy of its message will run it).
-- undo: task_concurrency_release
-- retry: safe (a second run finds this run's slot, or its parked message, and stops there)
local P = fair_pool(KEYS, ARGV)
local token, kid, ticket = ARGV[1], ARGV[2], ARGV[9]
P.sweep()
P.keep()
if redis.call('ZSCORE', KEYS[1], kid .. '|' .. token) then
  P.add_holder(kid, token, tonumber(ARGV[3])) -- this run's own retried call
  return {'ok'}
end
if ticket ~= '' then
  if redis.call('ZSCORE', KEYS[8], ticket) then
    return {'deny', 'spent', 0}
  end
  if redis.call('ZSCORE', KEYS[1], kid .. '|g:' .. ticket) then
    local _, _, grants = P.body(ticket)
    P.drop_holder(kid, 'g:' .. ticket)
    P.spend(ticket, grants)
    P.add_holder(kid, token, tonumber(ARGV[3]))
    return {'ok'}
  end
  if redis.call('HEXISTS', KEYS[4], ticket) == 1 then
    return {'deny', 'spent', 0}
  end
  -- unknown: its start was undone by a later feature, or it waited past the queued TTL
end
local free = P.running(kid) < P.limit and (P.total == 0 or P.held() < P.total)
if free and not P.first_waiter(kid) and (P.total == 0 or redis.call('EXISTS', KEYS[3]) == 0) then
  P.add_holder(kid, token, tonumber(ARGV[3]))
  return {'ok'}
end
if ARGV[10] == '' then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {'deny', 'busy', first[2] and tonumber(first[2]) - P.now or -1}
end
local max = tonumber(ARGV[11])
if max > 0 and P.waiting(kid) >= max then
  return {'deny', 'full', max}
end
if redis.call('HEXISTS', KEYS[4], ARGV[12]) == 1 then
  return {'deny', 'parked', P.waiting(kid)} -- this run's own retried call
end
P.park(kid, ARGV[12], ARGV[10])
local out = {'deny', 'parked', P.waiting(kid)}
return P.grant(out, 100)
