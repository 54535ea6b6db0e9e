-- Rate limit, execution start: charge every limit of the task all-or-nothing.
-- uses: ratelimit_gcra ratelimit_sliding_log ratelimit_sliding_window ratelimit_fixed_window
-- KEYS  the limits' keys, as the algorithm's script takes them
-- ARGV[1] the algorithm's script name, then that script's ARGV
-- Returns {'ok', reply} when every limit admitted (and was charged), {'deny', reply} when one
-- did not (nothing charged); reply is the algorithm script's one string of integers.
-- This step has no undo: it charges, so it runs last in its phase.
-- retry: unsafe (a hit replayed after a lost reply would charge twice)
local unpack = unpack or table.unpack
local algorithms = {
  ratelimit_gcra = ratelimit_gcra,
  ratelimit_sliding_log = ratelimit_sliding_log,
  ratelimit_sliding_window = ratelimit_sliding_window,
  ratelimit_fixed_window = ratelimit_fixed_window,
}
local reply = algorithms[ARGV[1]](KEYS, {unpack(ARGV, 2, #ARGV)})
local i = 0
for value in string.gmatch(reply, '%S+') do
  if i > 0 and (i - 1) % 4 == 0 and value == '0' then
    return {'deny', reply}
  end
  i = i + 1
end
return {'ok', reply}
