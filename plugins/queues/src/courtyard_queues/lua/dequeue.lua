-- ARGV: P, worker, lease seconds, queue names in the order to try.
-- Leases the next pending task of the first queue that has one and is not paused, and
-- returns {id, its hash} (or nil). Ids whose task is gone or no longer pending are dropped.
local t = now()
local worker, lease = ARGV[2], tonumber(ARGV[3])
for i = 4, #ARGV do
  local queue = ARGV[i]
  if redis.call('SISMEMBER', P .. ':paused', queue) == 0 then
    while true do
      local id = redis.call('RPOP', qkey(queue, 'pending'))
      if not id then break end
      local key = tkey(id)
      if redis.call('HGET', key, 'state') == 'pending' then
        redis.call('ZREM', P .. ':pending_deadlines', id)
        redis.call('HDEL', key, 'pending_deadline', 'cancel')
        redis.call('HSET', key, 'state', 'active', 'lease_owner', worker,
          'lease_expires_at', t + lease, 'started_at', t, 'updated_at', t)
        redis.call('ZADD', qkey(queue, 'active'), t, id)
        redis.call('ZADD', P .. ':leases', t + lease, id)
        local timeout = num(redis.call('HGET', key, 'timeout'))
        if timeout and timeout > 0 then
          redis.call('HSET', key, 'deadline', t + timeout)
          redis.call('ZADD', P .. ':deadlines', t + timeout, id)
        end
        return {id, task_hash(id)}
      end
    end
  end
end
return nil
