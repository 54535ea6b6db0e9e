-- Rate limit, final outcome without a run (revoked, expired, or failed before its slot):
-- give back the reservation the message carries, once.
-- uses: ratelimit_give_back
-- KEYS    the limits' state keys, then the reservation record of this task id (last)
-- ARGV[1] the algorithm ('gcra', ...); ARGV[2] the reservation the message carries
-- Returns {'ok', given}: given is how many keys took their share back (0 when the record
-- was gone: the reservation was used, given back already, or lapsed).
-- retry: safe (the record is deleted in the same script: a replay finds none)
local record = KEYS[#KEYS]
if redis.call('GET', record) ~= ARGV[2] then
  return {'ok', 0}
end
redis.call('DEL', record)
local args = {ARGV[1]}
for value in string.gmatch(ARGV[2], '%S+') do
  args[#args + 1] = value
end
local unpack = unpack or table.unpack
return {'ok', ratelimit_give_back({unpack(KEYS, 1, #KEYS - 1)}, args)}
