-- Give back a reservation that will not be used (its task was revoked, expired or failed
-- before its slot), where the algorithm allows it without breaking its bound.
-- GCRA: only when the key's TAT is still exactly what the reservation set (then TAT -=
-- cost * interval). A later charge computed its slot over ours and keeps it; taking ours
-- off the end would let the TAT fall below what that later admission needs, since the
-- TAT without a middle charge can be higher than TAT - cost * interval (that charge may
-- have skipped a gap the later one would have filled). Counted windows and logs: always,
-- since fewer units can only lower every estimate.
-- KEYS[i]          state key of limit i, as the reservation charged them
-- ARGV[1]          algorithm: 'gcra', 'fixed_window', 'sliding_window' or 'sliding_log'
-- ARGV[2]          the slot, server us
-- ARGV[2i+1..2i+2] limit i: the mark and amount the charging script returned
-- Returns how many keys gave their share back.
-- retry: unsafe (a replay after another hit could take back units that are not ours)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local algorithm = ARGV[1]
local given = 0
for i, key in ipairs(KEYS) do
  local mark, amount = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
  if mark and amount and mark > 0 then
    if algorithm == 'gcra' then
      if redis.call('GET', key) == string.format('%.0f', mark) then
        local tat = mark - amount
        if tat <= now then
          redis.call('DEL', key)
        else
          redis.call('SET', key, string.format('%.0f', tat), 'PXAT',
            string.format('%.0f', math.ceil(tat / 1000)))
        end
        given = given + 1
      end
    elseif algorithm == 'sliding_log' then
      local stamp = ARGV[2]
      for u = mark, mark + amount - 1 do
        redis.call('ZREM', key, stamp .. ':' .. string.format('%d', u))
      end
      given = given + 1
    else
      local field = string.format('%.0f', mark)
      local c = tonumber(redis.call('HGET', key, field)) or 0
      if c > amount then
        redis.call('HINCRBY', key, field, -amount)
      elseif c > 0 then
        redis.call('HDEL', key, field)
      end
      given = given + 1
    end
  end
end
return given
