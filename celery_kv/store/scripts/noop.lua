-- A script that does nothing: the floor the benchmarks compare every operation with.
-- retry: safe (it changes nothing)
return 1
