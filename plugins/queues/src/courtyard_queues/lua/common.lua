-- Shared by every script of the Redis task store (redis_store.py puts it first).
-- ARGV[1] is always the key prefix P. Keys:
--   P:t:<id>                 hash: one task
--   P:q:<queue>:pending      list: ready tasks, newest on the left, next on the right
--   P:q:<queue>:<state>      zset: active (by start), scheduled and retry (by due time),
--                            completed and archived (by end)
--   P:due, P:leases, P:deadlines, P:pending_deadlines, P:expiry
--                            zsets over every queue: due times, lease ends, run
--                            deadlines, pending deadlines, retention ends
--   P:paused (set), P:queues (set), P:counters:<queue> (hash), P:unique:<key> (string)
-- Times come from the Redis server's clock, the one every instance shares.

local P = ARGV[1]

local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function tkey(id) return P .. ':t:' .. id end
local function qkey(queue, part) return P .. ':q:' .. queue .. ':' .. part end

local function num(value)
  if value == false or value == nil or value == '' then return nil end
  return tonumber(value)
end

-- The task's hash as one JSON object (of strings): a single reply for the client to read,
-- rather than two per field (its RESP parser is pure Python unless hiredis is installed).
local function task_hash(id)
  local flat = redis.call('HGETALL', tkey(id))
  local fields = {}
  for i = 1, #flat, 2 do fields[flat[i]] = flat[i + 1] end
  return cjson.encode(fields)
end

-- Take a task out of every index of a state that is not final.
local function unindex(id, queue, state)
  if state == 'pending' then
    redis.call('LREM', qkey(queue, 'pending'), 0, id)
    redis.call('ZREM', P .. ':pending_deadlines', id)
  elseif state == 'active' then
    redis.call('ZREM', qkey(queue, 'active'), id)
    redis.call('ZREM', P .. ':leases', id)
    redis.call('ZREM', P .. ':deadlines', id)
  elseif state == 'scheduled' or state == 'retry' then
    redis.call('ZREM', qkey(queue, state), id)
    redis.call('ZREM', P .. ':due', id)
  end
end

local function release_unique(id)
  local key = redis.call('HGET', tkey(id), 'unique_key')
  if key and key ~= '' and redis.call('GET', P .. ':unique:' .. key) == id then
    redis.call('DEL', P .. ':unique:' .. key)
  end
end

local function count(queue, processed, failed)
  local key = P .. ':counters:' .. queue
  if processed > 0 then redis.call('HINCRBY', key, 'processed', processed) end
  if failed > 0 then redis.call('HINCRBY', key, 'failed', failed) end
end

local function clear_run(id)
  redis.call('HDEL', tkey(id), 'lease_expires_at', 'deadline', 'started_at', 'cancel')
end

-- Pending: ready to run. At the tail of its queue, or at its head (`head`) for a task
-- handed back unrun. Waiting dequeues are told, unless `quiet` (the caller tells them once).
local function make_pending(id, queue, t, head, quiet)
  local key = tkey(id)
  redis.call('HSET', key, 'state', 'pending', 'updated_at', t)
  redis.call('HDEL', key, 'process_at')
  if head then
    redis.call('RPUSH', qkey(queue, 'pending'), id)
  else
    redis.call('LPUSH', qkey(queue, 'pending'), id)
  end
  local limit = num(redis.call('HGET', key, 'pending_timeout'))
  if limit and limit > 0 then
    redis.call('HSET', key, 'pending_deadline', t + limit)
    redis.call('ZADD', P .. ':pending_deadlines', t + limit, id)
  else
    redis.call('HDEL', key, 'pending_deadline')
  end
  if not quiet then redis.call('PUBLISH', P .. ':notify', queue) end
end

local function make_archived(id, queue, t, error)
  local key = tkey(id)
  redis.call('HSET', key, 'state', 'archived', 'last_error', error, 'last_failed_at', t,
    'updated_at', t)
  redis.call('HDEL', key, 'process_at', 'pending_deadline')
  clear_run(id)
  redis.call('ZADD', qkey(queue, 'archived'), t, id)
  local keep = num(redis.call('HGET', key, 'archived_retention'))
  if keep and keep > 0 then
    redis.call('HSET', key, 'expires_at', t + keep)
    redis.call('ZADD', P .. ':expiry', t + keep, id)
  end
  release_unique(id)
end

-- A failed run of an active task: retry (after a backoff) while retries remain and it
-- was not cancelled, else archived. Returns the new state.
local function fail_task(id, t, error, retry, base, cap, jitter, rand)
  local key = tkey(id)
  local fields = redis.call('HMGET', key, 'queue', 'retry_count', 'max_retry', 'cancel')
  local queue, retries, max_retry = fields[1], num(fields[2]) or 0, num(fields[3]) or 0
  local cancelled = fields[4] == '1'
  unindex(id, queue, 'active')
  clear_run(id)
  count(queue, 1, 1)
  if retry and not cancelled and retries < max_retry then
    local n = retries + 1
    local delay = math.min(cap, base * 2 ^ (n - 1)) * (1 + (2 * rand - 1) * jitter)
    redis.call('HSET', key, 'retry_count', n, 'last_error', error, 'last_failed_at', t)
    if delay <= 0 then
      make_pending(id, queue, t, false)
      return 'pending'
    end
    redis.call('HSET', key, 'state', 'retry', 'process_at', t + delay, 'updated_at', t)
    redis.call('ZADD', qkey(queue, 'retry'), t + delay, id)
    redis.call('ZADD', P .. ':due', t + delay, id)
    return 'retry'
  end
  make_archived(id, queue, t, cancelled and 'cancelled' or error)
  return 'archived'
end

-- Lease the oldest pending task of `queue` (not paused: the caller checked) to `worker`
-- until `t + lease`: its id, or nil when the queue has none. Ids whose task is gone or
-- no longer pending are dropped on the way.
local function lease_next(queue, worker, t, lease)
  while true do
    local id = redis.call('RPOP', qkey(queue, 'pending'))
    if not id then return nil end
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
      return id
    end
  end
end

-- Complete an active task (the caller checked its lease) with `result` (JSON text):
-- returns its queue.
local function complete_task(id, t, result)
  local key = tkey(id)
  local queue = redis.call('HGET', key, 'queue')
  unindex(id, queue, 'active')
  redis.call('HDEL', key, 'lease_expires_at', 'deadline')
  redis.call('HSET', key, 'state', 'completed', 'result', result, 'completed_at', t,
    'updated_at', t)
  redis.call('ZADD', qkey(queue, 'completed'), t, id)
  local keep = num(redis.call('HGET', key, 'retention'))
  if keep and keep > 0 then
    redis.call('HSET', key, 'expires_at', t + keep)
    redis.call('ZADD', P .. ':expiry', t + keep, id)
  end
  release_unique(id)
  count(queue, 1, 0)
  return queue
end

-- 'ok', 'notfound' or 'lost': whether `worker` ('' for anyone) holds the active task.
local function owned(id, worker)
  local fields = redis.call('HMGET', tkey(id), 'state', 'lease_owner')
  if not fields[1] then return 'notfound' end
  if fields[1] ~= 'active' or (worker ~= '' and fields[2] ~= worker) then return 'lost' end
  return 'ok'
end
