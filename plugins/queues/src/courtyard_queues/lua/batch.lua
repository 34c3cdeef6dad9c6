-- ARGV: P, worker, lease seconds, count, reports, backoff base, cap, jitter, orders.
-- reports: a JSON array of [id, 'c', result (JSON text)] (a completion) or
-- [id, 'f', error, retry (true/false), a random number in [0, 1)] (a failure).
-- orders: a JSON array of arrays of queue names; the k-th task leased tries the queues of
-- the k-th order (of the last one when there are fewer), in that order.
-- Settles every report (each as complete.lua or fail.lua would, on its own), then leases
-- up to `count` tasks as that many runs of dequeue.lua would. Returns one JSON text:
-- {"reports": [[id, state, queue] or [id, why]], "tasks": [[id, hash], ...]}.
local t = now()
local worker, lease, wanted = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local base, cap, jitter = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local settled = {}
for i, report in ipairs(cjson.decode(ARGV[5])) do
  local id = report[1]
  local why = owned(id, worker)
  if why ~= 'ok' then
    settled[i] = cjson.encode({id, why})
  elseif report[2] == 'c' then
    settled[i] = cjson.encode({id, 'completed', complete_task(id, t, report[3])})
  else
    local state = fail_task(id, t, report[3], report[4], base, cap, jitter, report[5])
    settled[i] = cjson.encode({id, state, redis.call('HGET', tkey(id), 'queue')})
  end
end
local leased = {}
if wanted > 0 then
  local orders = cjson.decode(ARGV[9])
  local open = {}  -- queue -> true while it may still give a task
  for _, queue in ipairs(orders[1]) do
    open[queue] = redis.call('SISMEMBER', P .. ':paused', queue) == 0
  end
  for k = 1, wanted do
    local id = nil
    for _, queue in ipairs(orders[math.min(k, #orders)]) do
      if open[queue] then
        id = lease_next(queue, worker, t, lease)
        if id then break end
        open[queue] = false
      end
    end
    if not id then break end  -- every queue is empty or paused
    leased[#leased + 1] = '[' .. cjson.encode(id) .. ',' .. task_hash(id) .. ']'
  end
end
return '{"reports":[' .. table.concat(settled, ',') .. '],"tasks":[' ..
  table.concat(leased, ',') .. ']}'
