-- ARGV: P, id, worker. Hands an active task back unrun, to the head of its queue, or
-- archives it when it was cancelled. Returns {'ok', hash} or {why}.
local id, worker = ARGV[2], ARGV[3]
local why = owned(id, worker)
if why ~= 'ok' then return {why} end
local t = now()
local key = tkey(id)
local fields = redis.call('HMGET', key, 'queue', 'cancel')
unindex(id, fields[1], 'active')
if fields[2] == '1' then
  make_archived(id, fields[1], t, 'cancelled')
else
  clear_run(id)
  make_pending(id, fields[1], t, true)
end
return {'ok', task_hash(id)}
