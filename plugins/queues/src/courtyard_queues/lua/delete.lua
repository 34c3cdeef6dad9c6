-- ARGV: P, queue, id. Deletes a task that is not active. Returns {'ok'}, {'notfound'} or
-- {'active'}.
local queue, id = ARGV[2], ARGV[3]
local key = tkey(id)
local fields = redis.call('HMGET', key, 'state', 'queue')
local state = fields[1]
if not state or fields[2] ~= queue then return {'notfound'} end
if state == 'active' then return {'active'} end
unindex(id, queue, state)
if state == 'completed' or state == 'archived' then
  redis.call('ZREM', qkey(queue, state), id)
  redis.call('ZREM', P .. ':expiry', id)
end
release_unique(id)
redis.call('DEL', key)
return {'ok'}
