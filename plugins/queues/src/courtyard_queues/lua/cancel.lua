-- ARGV: P, id. A waiting task is archived as cancelled; an active one is flagged, and its
-- worker's next renewal answers cancel. Returns {'ok', hash}, {'notfound'} or
-- {'finished', state}.
local id = ARGV[2]
local key = tkey(id)
local fields = redis.call('HMGET', key, 'state', 'queue')
local state, queue = fields[1], fields[2]
if not state then return {'notfound'} end
if state == 'pending' or state == 'scheduled' or state == 'retry' then
  unindex(id, queue, state)
  make_archived(id, queue, now(), 'cancelled')
elseif state == 'active' then
  redis.call('HSET', key, 'cancel', '1', 'updated_at', now())
else
  return {'finished', state}
end
return {'ok', task_hash(id)}
