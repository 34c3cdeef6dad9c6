-- ARGV: P, worker, lease seconds, queue names in the order to try.
-- Leases the next pending task of the first queue that has one and is not paused, and
-- returns {id, its hash} (or nil).
local t = now()
local worker, lease = ARGV[2], tonumber(ARGV[3])
for i = 4, #ARGV do
  local queue = ARGV[i]
  if redis.call('SISMEMBER', P .. ':paused', queue) == 0 then
    local id = lease_next(queue, worker, t, lease)
    if id then return {id, task_hash(id)} end
  end
end
return nil
