-- ARGV: P, id, worker, result (JSON text). Returns {'ok', hash} or {why}.
local id, worker = ARGV[2], ARGV[3]
local why = owned(id, worker)
if why ~= 'ok' then return {why} end
complete_task(id, now(), ARGV[4])
return {'ok', task_hash(id)}
