-- Server time in seconds as a string with microseconds, for callers that must
-- compare with what the scripts decided (tests, the CLI); never used to decide.
-- retry: safe (read only)
local t = redis.call('TIME')
return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
