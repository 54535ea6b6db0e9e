-- Cache: this run gives up computing (it failed, is retried or deferred, or a later feature
-- of the same start phase denied): drop its compute lease and wake the waiters.
-- uses: cache_abandon
-- KEYS and ARGV as cache_fetch.lua: ARGV[1] run token, ARGV[2] lease (ms, the notify-list TTL)
-- Returns {'ok'}.
-- retry: safe (a second run finds the lease gone and nobody left to wake)
cache_abandon({KEYS[3], KEYS[4], KEYS[5]}, {ARGV[1], ARGV[2]})
return {'ok'}
