-- Gives a job the caller owns back unchanged, due now (as on shutdown).
-- ARGV[4] job id, [5] owner, [6] token. Returns {"ok"} | {"dup"} | {"notowner"} | {"gone"}.
local ID, OWNER, TOK = ARGV[4], ARGV[5], ARGV[6]
local jkey = jk(ID)
if not promote(ID) then return {'gone'} end
local f = redis.call('HMGET', jkey, 'state', 'owner', 'tok', 'donetok')
if f[1] ~= 'inflight' or f[2] ~= OWNER or f[3] ~= TOK then
  if f[4] == 'r:' .. TOK then return {'dup'} end
  return {'notowner'}
end
redis.call('HSET', jkey, 'donetok', 'r:' .. TOK)
unlease(jkey, ID)
requeue(jkey, ID, NOW)
event('released', jkey, rcpts_in(jkey, 'p'), nil, nil)
return {'ok'}
