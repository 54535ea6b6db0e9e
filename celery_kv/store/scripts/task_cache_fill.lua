-- Cache, final outcome (success): store the value this run computed and wake the waiters.
-- uses: cache_fill
-- KEYS and ARGV as cache_fill.lua
-- Returns {'ok', 1} when stored, {'ok', 0} when an invalidation came first.
-- retry: safe (as cache_fill.lua)
return {'ok', cache_fill(KEYS, ARGV)}
