-- Delay store, for operators: the first entries by due time, read at one server time.
-- KEYS[1] due ZSET, KEYS[2] bodies HASH, KEYS[3] claims HASH
-- ARGV[1] at most this many entries
-- Returns {total, now ms, id1, due1, claimer1 or '', body1 or '', ...}.
-- retry: safe (reads only)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {redis.call('ZCARD', KEYS[1]), now}
local found = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
for i = 1, #found, 2 do
  local id = found[i]
  out[#out + 1] = id
  out[#out + 1] = found[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[3], id) or ''
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
end
return out
