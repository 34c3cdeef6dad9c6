-- ARGV: P, worker id, worker JSON (from Python, stored as it is: cjson would turn an
-- empty list into an object), last beat. The first save's time is kept as started_at.
-- Returns {started_at, last_beat}.
local t = now()
redis.call('HSETNX', P .. ':workers:started', ARGV[2], t)
redis.call('HSET', P .. ':workers', ARGV[2], ARGV[3])
redis.call('ZADD', P .. ':workers:beat', t, ARGV[2])
return {redis.call('HGET', P .. ':workers:started', ARGV[2]), tostring(t)}
