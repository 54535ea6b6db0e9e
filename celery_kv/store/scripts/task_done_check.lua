-- Celery lifecycle, execution start: has this task id already reached its final outcome?
-- A broker redelivery (visibility timeout, acks_late after a lost ack) of a finished task
-- id must not run its body again (lifecycle rule 12).
-- KEYS[1] completion mark of the task id
-- Returns {'stop', 'done'} when the mark is there, else {'ok'}.
-- retry: safe (reads only)
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'stop', 'done'}
end
return {'ok'}
