-- The GCRA emission interval "limit per period" stands for: ceil(period / limit), exactly
-- in integers (not run alone: ratelimit_gcra and ratelimit_override use it).
-- ARGV[1] limit, ARGV[2] period (us)
-- Returns the interval in us (at least 1).
-- retry: safe (computes only)
local lim, per = ARGV[1], ARGV[2]
local q = math.floor(per / lim)
while q * lim < per do q = q + 1 end
while q > 1 and (q - 1) * lim >= per do q = q - 1 end
return math.max(q, 1)
