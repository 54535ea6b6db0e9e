-- Idempotency state: the record and its remaining time, read in one step.
-- An in-progress record whose lease lapsed reads as 'u': ran, result unknown.
-- KEYS[1] the record hash
-- ARGV none
-- Returns {status ('' when absent, 'p', 'u' or 'c'), owner, fingerprint, result, ms left
-- (of the lease while in progress, else of the record)}.
-- retry: safe (read only)
local rec = redis.call('HMGET', KEYS[1], 's', 'o', 'f', 'r', 'l')
if not rec[1] then
  return {'', '', '', '', 0}
end
local status, left = rec[1], redis.call('PTTL', KEYS[1])
local deadline = tonumber(rec[5])
if status == 'p' and deadline then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if deadline <= now then
    status = 'u'
  else
    left = deadline - now
  end
end
return {status, rec[2] or '', rec[3] or '', rec[4] or '', left}
