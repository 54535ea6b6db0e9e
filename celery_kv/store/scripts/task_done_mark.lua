-- Celery lifecycle, final outcome: mark the task id finished for the redelivery window.
-- KEYS[1] completion mark of the task id
-- ARGV[1] how long the mark is kept (ms)
-- Returns {'ok'}.
-- retry: safe (setting the mark twice is setting it once)
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return {'ok'}
