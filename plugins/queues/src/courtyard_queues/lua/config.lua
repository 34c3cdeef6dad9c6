-- ARGV: P, name, config JSON ({source, document}, stored as it is) or '' to delete.
-- Keeps the first save's time, stamps the last one, bumps the version. Returns 1, or 0
-- for a delete of nothing.
local key = P .. ':configs'
local t = now()
if ARGV[3] == '' then
  if redis.call('HDEL', key, ARGV[2]) == 0 then return 0 end
  redis.call('HDEL', key .. ':created', ARGV[2])
  redis.call('HDEL', key .. ':updated', ARGV[2])
else
  redis.call('HSET', key, ARGV[2], ARGV[3])
  redis.call('HSETNX', key .. ':created', ARGV[2], t)
  redis.call('HSET', key .. ':updated', ARGV[2], t)
end
redis.call('INCR', key .. ':version')
return 1
