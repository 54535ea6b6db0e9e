-- Debounce, final outcome: the running burst of this run (or of the task id, on a revoke)
-- is over; a revoked task id's pending burst and leading window go too.
-- KEYS[1] burst hash
-- ARGV[1] run token ('' on a revoke), ARGV[2] task id, ARGV[3] '1' when the revoke
-- terminated a run, ARGV[4] how long a lapsed run is remembered (ms)
-- Returns {'ok', 1} when this task id's burst ended here, else {'ok', 0}.
-- uses: burst_expire
-- retry: safe (a second run finds nothing of this task id's)
local f = redis.call('HMGET', KEYS[1], 'rid', 'rtok', 'pid', 'wid')
local revoke, ended = ARGV[1] == '', 0
if f[1] == ARGV[2] and (f[2] == ARGV[1] or (revoke and (ARGV[3] == '1' or f[2] == ''))) then
  redis.call('HDEL', KEYS[1], 'rid', 'rtok', 'rdl', 'rfence', 'rargs', 'rn', 'rfirst', 'rmsg')
  ended = 1
end
if revoke and f[3] == ARGV[2] then
  redis.call('HDEL', KEYS[1], 'pid', 'pnonce', 'pmsg', 'pargs', 'pfirst', 'pdue', 'pmax', 'pn',
    'pexp', 'pprev', 'pprevn', 'pprevargs', 'pprevdue')
  ended = 1
end
if revoke and f[4] == ARGV[2] then
  redis.call('HDEL', KEYS[1], 'wid', 'wend', 'wmax', 'wn')
end
local t = redis.call('TIME')
burst_expire(KEYS, {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[4]})
return {'ok', ended}
