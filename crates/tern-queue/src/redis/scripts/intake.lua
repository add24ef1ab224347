-- Durably records a whole message in ONE shard before it is acknowledged (the intake record), and checks
-- its idempotency key, which lives in this same shard. The jobs are then materialised shard by shard; the
-- reaper re-drives intake records that are still here after a few seconds.
-- ARGV[4] message id, [5] payload (the message without its body), [6] body, [7] idempotency key or "",
-- [8] idempotency TTL in seconds.
-- Returns {"dup", first message id} when the key was seen within its TTL for another message, else
-- {"ok", message id}. The same message again (a call resent after its reply was lost) is "ok": it writes
-- the same record.
local MSG = ARGV[4]
if ARGV[7] ~= '' then
  local ik = k('idem:' .. ARGV[7])
  local prev = redis.call('GET', ik)
  if prev and prev ~= MSG then return {'dup', prev} end
  if not prev then redis.call('SET', ik, MSG, 'EX', ARGV[8]) end
end
redis.call('HSET', k('intake:' .. MSG), 'p', ARGV[5], 'b', ARGV[6], 'at', string.format('%d', NOW))
redis.call('ZADD', k('intakes'), NOW, MSG)
return {'ok', MSG}
