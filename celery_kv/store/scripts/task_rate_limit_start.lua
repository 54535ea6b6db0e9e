-- Rate limit, execution start: charge every limit of the task all-or-nothing, now or at a
-- reserved slot; or admit the reservation this message carries.
-- uses: ratelimit_gcra ratelimit_sliding_log ratelimit_sliding_window ratelimit_fixed_window
-- KEYS    the algorithm script's keys, then the reservation record of this task id (last)
-- ARGV[1] the algorithm's script name; ARGV[2] the reservation the message carries ('' none);
-- ARGV[3] ms a new reservation's record outlives its slot; then the algorithm script's ARGV
--         (its mode 'reserve' takes a later slot within its horizon, 'hit' only now)
-- Returns {'ok', reply} when every limit admitted now (and was charged); {'ok', 'reserved',
-- slot_us, now_us} when the carried reservation is admitted (its record is deleted: it is
-- used once); {'deny', 'early', us_to_slot} when it came back before its slot (nothing
-- charged again); {'deny', reply, reservation} when a later slot was reserved (charged,
-- recorded under the task id); {'deny', reply} when nothing was charged. reply is the
-- algorithm script's string of integers; a reservation is "slot mark1 amount1 ...".
-- This step has no undo: it charges, so it runs last in its phase.
-- retry: unsafe (a hit replayed after a lost reply would charge twice)
local unpack = unpack or table.unpack
local algorithms = {
  ratelimit_gcra = ratelimit_gcra,
  ratelimit_sliding_log = ratelimit_sliding_log,
  ratelimit_sliding_window = ratelimit_sliding_window,
  ratelimit_fixed_window = ratelimit_fixed_window,
}
local record = KEYS[#KEYS]
local held = ARGV[2]
if held ~= '' and redis.call('GET', record) == held then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local slot = tonumber(string.match(held, '^(%d+)'))
  if now < slot then
    return {'deny', 'early', string.format('%.0f', slot - now)}
  end
  redis.call('DEL', record)
  return {'ok', 'reserved', string.format('%.0f', slot), string.format('%.0f', now)}
end
local reply = algorithms[ARGV[1]]({unpack(KEYS, 1, #KEYS - 1)}, {unpack(ARGV, 4, #ARGV)})
local fields = {}
for value in string.gmatch(reply, '%S+') do
  fields[#fields + 1] = value
end
local now, slot = tonumber(fields[1]), tonumber(fields[2])
if slot == 0 then
  return {'deny', reply}
end
if slot <= now then
  return {'ok', reply}
end
local parts = {fields[2]}
for i = 3, #fields, 6 do
  parts[#parts + 1] = fields[i + 4]
  parts[#parts + 1] = fields[i + 5]
end
local reservation = table.concat(parts, ' ')
redis.call('SET', record, reservation, 'PXAT',
  string.format('%.0f', math.ceil(slot / 1000) + tonumber(ARGV[3])))
return {'deny', reply, reservation}
