-- Cache, execution start: a hit ends the run with the cached value; a miss makes this run the
-- one that computes (single flight), unless another run computes the value right now.
-- uses: cache_fetch
-- KEYS and ARGV as cache_fetch.lua (run token as the caller token)
-- Returns {'stop', 'h' .. value} on a hit,
--         {'ok', reply} when this run computes ('c' on a miss, 'r' for XFetch's early
--         recompute: the lease is this run's),
--         {'deny', reply} while another run computes ('w': wait for it, then look again).
-- undo: task_cache_release
-- retry: safe (a second run by the same token re-enters its own lease)
local reply = cache_fetch(KEYS, ARGV)
local status = string.sub(reply, 1, 1)
if status == 'h' then
  return {'stop', reply}
end
if status == 'w' then
  return {'deny', reply}
end
return {'ok', reply}
