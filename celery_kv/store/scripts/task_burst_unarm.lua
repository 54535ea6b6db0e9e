-- Debounce, enqueue: undo a trigger's arm (its publish failed). A burst this call started
-- goes, with its leading window; a burst that absorbed triggers of other callers stays,
-- unconfirmed, so the next trigger adopts it and publishes it again; a burst this call
-- adopted gets its previous message nonce back.
-- KEYS and ARGV as task_burst_arm.lua.
-- Returns {'ok'}.
-- uses: burst_expire
-- retry: safe (a second run finds nothing of this call's left)
local f = redis.call('HMGET', KEYS[1], 'pid', 'pnonce', 'pn', 'wid', 'pprev', 'pprevn',
  'pprevargs', 'pprevdue')
if f[2] == ARGV[2] and f[1] ~= ARGV[1] and f[5] then  -- an adoption: the burst as it was
  redis.call('HSET', KEYS[1], 'pmsg', f[5], 'pnonce', f[6], 'pargs', f[7], 'pdue', f[8],
    'pn', tonumber(f[3]) - 1)
  redis.call('HDEL', KEYS[1], 'pprev', 'pprevn', 'pprevargs', 'pprevdue')
elseif f[1] == ARGV[1] and f[2] == ARGV[2] and f[3] == '1' then
  redis.call('HDEL', KEYS[1], 'pid', 'pnonce', 'pmsg', 'pargs', 'pfirst', 'pdue', 'pmax', 'pn',
    'pexp')
  if f[4] == ARGV[1] then
    redis.call('HDEL', KEYS[1], 'wid', 'wend', 'wmax', 'wn')
  end
end
local t = redis.call('TIME')
burst_expire(KEYS, {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[9]})
return {'ok'}
