-- Whether a call over N limits is charged, and at which slot (not run alone: the
-- ratelimit_* scripts use it). From the latest of the keys' earliest slots, the slot is
-- moved on until every key admits it (the caller's fit); then 'hit' charges when the
-- slot is now and 'reserve' when it is within the horizon ('peek' never does).
-- ARGV[1] mode, ARGV[2] the horizon (us; reserve), ARGV[3] server time (us),
-- ARGV[4] the slot so far, ARGV[5] true when some key has no slot at all,
-- ARGV[6] the keys' state tables, ARGV[7] the caller's fit(i, k, from) (the earliest
-- time >= from at which key i has room for its cost, nil for none), or false when every
-- key's slot already holds whatever the others' (GCRA)
-- Returns charge (true or false) and the slot.
-- retry: safe (computes only)
local mode, now, slot, never, ks, fit = ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local settled = never or not fit
for _ = 1, 64 do
  if settled then
    break
  end
  settled = true
  for i = 1, #ks do
    local at = fit(i, ks[i], slot)
    if at == nil then
      never = true
      break
    end
    if at > slot then
      slot, settled = at, false
    end
  end
end
local charge = false
if settled and not never then
  if mode == 'hit' then
    charge = slot <= now
  elseif mode == 'reserve' then
    charge = slot - now <= tonumber(ARGV[2])
  end
end
return charge, slot
