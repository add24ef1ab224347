-- Durably records a whole message in ONE shard before it is acknowledged (the intake record), and checks
-- its idempotency key, which lives in this same shard. The jobs are then materialised shard by shard; the
-- reaper re-drives intake records that are still here after a few seconds.
-- ARGV[4] message id, [5] payload (the message without its body), [6] body, [7] idempotency key or "",
-- [8] idempotency TTL in seconds.
-- Returns {"dup", first message id} when the key was seen within its TTL, else {"ok", message id}.
local MSG = ARGV[4]
if ARGV[7] ~= '' then
  local ik = k('idem:' .. ARGV[7])
  local prev = redis.call('GET', ik)
  if prev then return {'dup', prev} end
  redis.call('SET', ik, MSG, 'EX', tonumber(ARGV[8]))
end
redis.call('HSET', k('intake:' .. MSG), 'p', ARGV[5], 'b', ARGV[6], 'at', string.format('%d', NOW))
redis.call('ZADD', k('intakes'), NOW, MSG)
return {'ok', MSG}
