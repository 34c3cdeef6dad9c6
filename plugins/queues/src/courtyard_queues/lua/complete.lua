-- ARGV: P, id, worker, result (JSON text). Returns {'ok', hash...} or {why}.
local id, worker = ARGV[2], ARGV[3]
local why = owned(id, worker)
if why ~= 'ok' then return {why} end
local t = now()
local key = tkey(id)
local queue = redis.call('HGET', key, 'queue')
unindex(id, queue, 'active')
redis.call('HDEL', key, 'lease_expires_at', 'deadline')
redis.call('HSET', key, 'state', 'completed', 'result', ARGV[4], 'completed_at', t,
  'updated_at', t)
redis.call('ZADD', qkey(queue, 'completed'), t, id)
local keep = num(redis.call('HGET', key, 'retention'))
if keep and keep > 0 then
  redis.call('HSET', key, 'expires_at', t + keep)
  redis.call('ZADD', P .. ':expiry', t + keep, id)
end
release_unique(id)
count(queue, 1, 0)
return {'ok', task_hash(id)}
