-- ARGV: P, id, worker ('' for anyone), error, retry ('1'/'0'), backoff base, cap, jitter,
-- a random number in [0, 1). Returns {'ok', hash} or {why}.
local id, worker = ARGV[2], ARGV[3]
local why = owned(id, worker)
if why ~= 'ok' then return {why} end
fail_task(id, now(), ARGV[4], ARGV[5] == '1', tonumber(ARGV[6]), tonumber(ARGV[7]),
  tonumber(ARGV[8]), tonumber(ARGV[9]))
return {'ok', task_hash(id)}
