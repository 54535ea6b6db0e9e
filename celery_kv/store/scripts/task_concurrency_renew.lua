-- Concurrency limit heartbeat: set this run's lease again, only while it holds its slot.
-- uses: semaphore_extend
-- KEYS[1] the semaphore's sorted set
-- ARGV[1] run token, ARGV[2] lease (ms)
-- Returns {'ok'} when renewed, {'deny'} when the slot is no longer this run's (lost).
-- retry: safe (setting the same lease twice is setting it once)
if semaphore_extend(KEYS, ARGV) == 1 then
  return {'ok'}
end
return {'deny'}
