-- Concurrency limit: give this run's slot back (a final outcome, a retry, a deferral, or a
-- later feature of the same start phase denied).
-- uses: semaphore_release
-- KEYS[1] the semaphore's sorted set
-- ARGV[1] run token (further arguments are ignored)
-- Returns {'ok'}.
-- retry: safe (a second run finds no slot and changes nothing)
semaphore_release(KEYS, ARGV)
return {'ok'}
