-- ARGV: P, tasks (a JSON array of {id, queue, type, payload, timeout, max_retry,
-- process_at?, unique_key?, unique_ttl, retention, archived_retention, pending_timeout}).
-- Returns one {outcome, detail, created_at} per task: {'ok', state}, or {'dup', holder}.
-- A task whose id exists already is left alone and reported 'ok' (a retried call).
local t = now()
local out = {}
local ready = {}
for i, task in ipairs(cjson.decode(ARGV[2])) do
  local key = tkey(task.id)
  local existing = redis.call('HGET', key, 'state')
  if existing then
    out[i] = {'ok', existing, tostring(t)}
  else
    local holder = nil
    local unique = task.unique_key
    if unique and task.unique_ttl > 0 then
      local taken = redis.call('SET', P .. ':unique:' .. unique, task.id, 'NX', 'PX',
        math.max(1, math.ceil(task.unique_ttl * 1000)))
      if not taken then holder = redis.call('GET', P .. ':unique:' .. unique) or '' end
    else
      unique = nil
    end
    if holder then
      out[i] = {'dup', holder, tostring(t)}
    else
      redis.call('HSET', key, 'queue', task.queue, 'type', task.type, 'payload', task.payload,
        'timeout', task.timeout, 'max_retry', task.max_retry, 'retry_count', 0,
        'created_at', t, 'updated_at', t, 'retention', task.retention,
        'archived_retention', task.archived_retention, 'pending_timeout', task.pending_timeout)
      if unique then redis.call('HSET', key, 'unique_key', unique) end
      redis.call('SADD', P .. ':queues', task.queue)
      local at = task.process_at
      if at and at > t then
        redis.call('HSET', key, 'state', 'scheduled', 'process_at', at)
        redis.call('ZADD', qkey(task.queue, 'scheduled'), at, task.id)
        redis.call('ZADD', P .. ':due', at, task.id)
        out[i] = {'ok', 'scheduled', tostring(t)}
      else
        make_pending(task.id, task.queue, t, false, true)
        ready[task.queue] = true
        out[i] = {'ok', 'pending', tostring(t)}
      end
    end
  end
end
for queue in pairs(ready) do redis.call('PUBLISH', P .. ':notify', queue) end
return out
