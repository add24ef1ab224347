-- Returns jobs whose lease expired to their schedule (due now), with a lease-expired event each, and ends
-- suspensions whose time is up. Safe to run on many nodes at once: each job is handled by one call.
-- ARGV[4] the most jobs to handle in this call. Returns {jobs returned, suspensions ended}.
local LIMIT = tonumber(ARGV[4])
local ids = redis.call('ZRANGEBYSCORE', k('inflight'), '-inf', NOW, 'LIMIT', 0, LIMIT)
local n = 0
for _, id in ipairs(ids) do
  local jkey = jk(id)
  local f = {false}
  if promote(id) then f = redis.call('HMGET', jkey, 'state', 'lease', 'owner') end
  if f[1] ~= 'inflight' then
    redis.call('ZREM', k('inflight'), id)
  elseif tonumber(f[2] or '0') > NOW then
    redis.call('ZADD', k('inflight'), tonumber(f[2]), id)
  else
    unlease(jkey, id)
    requeue(jkey, id, NOW)
    event('lease-expired', jkey, rcpts_in(jkey, 'p'), nil, {owner = f[3] or ''})
    stat('lease_expired', 1)
    n = n + 1
  end
end
local ended = 0
for _, d in ipairs(redis.call('ZRANGEBYSCORE', k('suspu'), '-inf', NOW, 'LIMIT', 0, 100)) do
  redis.call('ZREM', k('suspu'), d)
  redis.call('HDEL', k('susp'), d)
  reindex(d, nil)
  domain_event('resumed', d, 'suspension expired')
  ended = ended + 1
end
return {n, ended}
