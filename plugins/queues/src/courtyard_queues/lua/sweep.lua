-- ARGV: P, backoff base, cap, jitter, worker ttl, the most items per kind, a random seed,
-- then the errors of an expired lease, a timeout and a pending timeout.
-- One maintenance pass (see RedisTaskStore.sweep). Returns {promoted, expired leases,
-- timed out, pending timeouts, deleted, workers removed, more, finished ids...}; `more`
-- is 1 when a kind hit the limit (call again).
local base, cap, jitter = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local worker_ttl, limit = tonumber(ARGV[5]), tonumber(ARGV[6])
math.randomseed(tonumber(ARGV[7]))
local t = now()
local more = 0
local finished = {}

local function due(zset, upto)
  local ids = redis.call('ZRANGEBYSCORE', P .. ':' .. zset, '-inf', upto, 'LIMIT', 0, limit)
  if #ids == limit then more = 1 end
  return ids
end

-- Scheduled and retry tasks whose time has come: pending, in the order they were due.
local promoted = 0
local ready = {}
for _, id in ipairs(due('due', t)) do
  redis.call('ZREM', P .. ':due', id)
  local fields = redis.call('HMGET', tkey(id), 'state', 'queue')
  if fields[1] == 'scheduled' or fields[1] == 'retry' then
    redis.call('ZREM', qkey(fields[2], fields[1]), id)
    make_pending(id, fields[2], t, false, true)
    ready[fields[2]] = true
    promoted = promoted + 1
  end
end

-- Leases that ran out: the worker is gone. Cancelled or out of retries: archived; else
-- pending again, the lost run counted as a retry.
local expired = 0
for _, id in ipairs(due('leases', '(' .. t)) do
  local key = tkey(id)
  local fields = redis.call('HMGET', key, 'state', 'queue', 'retry_count', 'max_retry', 'cancel')
  if fields[1] == 'active' then
    local queue = fields[2]
    unindex(id, queue, 'active')
    count(queue, 1, 1)
    expired = expired + 1
    if fields[5] == '1' then
      make_archived(id, queue, t, 'cancelled')
      finished[#finished + 1] = id
    elseif (num(fields[3]) or 0) >= (num(fields[4]) or 0) then
      make_archived(id, queue, t, ARGV[8])
      finished[#finished + 1] = id
    else
      clear_run(id)
      redis.call('HSET', key, 'retry_count', (num(fields[3]) or 0) + 1, 'last_error', ARGV[8],
        'last_failed_at', t)
      make_pending(id, queue, t, false, true)
      ready[queue] = true
    end
  else
    redis.call('ZREM', P .. ':leases', id)
  end
end

-- Runs past their deadline: failed (and retried while retries remain).
local timed_out = 0
for _, id in ipairs(due('deadlines', '(' .. t)) do
  if owned(id, '') == 'ok' then
    local state = fail_task(id, t, ARGV[9], true, base, cap, jitter, math.random())
    if state == 'archived' then finished[#finished + 1] = id end
    if state == 'pending' then ready[redis.call('HGET', tkey(id), 'queue')] = true end
    timed_out = timed_out + 1
  else
    redis.call('ZREM', P .. ':deadlines', id)
  end
end

-- Pending too long: archived without running.
local stale = 0
for _, id in ipairs(due('pending_deadlines', t)) do
  local fields = redis.call('HMGET', tkey(id), 'state', 'queue')
  redis.call('ZREM', P .. ':pending_deadlines', id)
  if fields[1] == 'pending' then
    unindex(id, fields[2], 'pending')
    make_archived(id, fields[2], t, ARGV[10])
    finished[#finished + 1] = id
    stale = stale + 1
  end
end

-- Finished tasks whose retention ran out.
local deleted = 0
for _, id in ipairs(due('expiry', t)) do
  redis.call('ZREM', P .. ':expiry', id)
  local fields = redis.call('HMGET', tkey(id), 'state', 'queue')
  if fields[1] == 'completed' or fields[1] == 'archived' then
    redis.call('ZREM', qkey(fields[2], fields[1]), id)
    redis.call('DEL', tkey(id))
    deleted = deleted + 1
  end
end

-- Workers not heard from for `worker_ttl` seconds.
local gone = due('workers:beat', '(' .. (t - worker_ttl))
for _, id in ipairs(gone) do
  redis.call('ZREM', P .. ':workers:beat', id)
  redis.call('HDEL', P .. ':workers', id)
  redis.call('HDEL', P .. ':workers:started', id)
end

for queue in pairs(ready) do redis.call('PUBLISH', P .. ':notify', queue) end
local out = {promoted, expired, timed_out, stale, deleted, #gone, more}
for _, id in ipairs(finished) do out[#out + 1] = id end
return out
