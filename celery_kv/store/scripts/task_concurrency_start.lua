-- Concurrency limit, execution start: take one of the key's slots for this run.
-- uses: semaphore_acquire
-- KEYS[1] the semaphore's sorted set
-- ARGV as semaphore_acquire.lua: run token, lease (ms), limit, takeover token ('')
-- Returns {'ok'} with a slot, {'deny', '', ms until the earliest lease ends} when all are taken.
-- undo: task_concurrency_release
-- retry: safe (a second run by the same token only refreshes its own lease)
local reply = semaphore_acquire(KEYS, ARGV)
if reply[1] == 1 then
  return {'ok'}
end
return {'deny', '', reply[3]}
