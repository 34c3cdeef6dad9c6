-- ARGV: P, id, worker, lease seconds. Returns {'ok', lease end, cancel flag} or {why}.
local id, worker = ARGV[2], ARGV[3]
local why = owned(id, worker)
if why ~= 'ok' then return {why} end
local until_ = now() + tonumber(ARGV[4])
redis.call('HSET', tkey(id), 'lease_expires_at', until_)
redis.call('ZADD', P .. ':leases', until_, id)
return {'ok', tostring(until_), redis.call('HGET', tkey(id), 'cancel') or ''}
