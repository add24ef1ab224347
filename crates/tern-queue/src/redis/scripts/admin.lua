-- Operator actions on jobs of this shard. ARGV[4] action: retry | delete | bounce; ARGV[5] "id" or
-- "domain"; ARGV[6] the job id or domain; ARGV[7] the most jobs to handle in this call (domain mode).
--   retry:  a waiting job becomes due now (attempts unchanged). Jobs in flight are left alone.
--   delete: the job is removed (in flight too: its owner's later complete reports it gone).
--   bounce: the job is flagged admin_bounce and moved to the reserved "#bounce" schedule, due now, which
--           is never suspended, so a worker claims it at once and sends the DSN; a job in flight is flagged
--           and goes to "#bounce" when its attempt ends without finishing it.
-- Domain mode handles the domain's waiting jobs only, up to ARGV[7] per call; call again while the number
-- examined equals ARGV[7]. Returns {jobs changed, jobs examined}.
local ACT, MODE, TARGET, LIMIT = ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])

local function act(id)
  local jkey = jk(id)
  if not promote(id) then return 0 end
  local f = redis.call('HMGET', jkey, 'state', 'sched', 'dom')
  f[2] = sched_of(f[2], f[3])
  if ACT == 'delete' then
    local rc = rcpts_in(jkey, 'p')
    event('deleted', jkey, rc, nil, nil)
    stat('deleted', #rc)
    remove_job(jkey, id)
    return 1
  elseif ACT == 'retry' then
    if f[1] == 'inflight' then return 0 end
    redis.call('ZREM', k('due:' .. f[2]), id)
    requeue(jkey, id, NOW)
    event('retried', jkey, rcpts_in(jkey, 'p'), nil, nil)
    return 1
  elseif ACT == 'bounce' then
    redis.call('HSET', jkey, 'bounce', '1')
    if f[2] ~= BOUNCE then
      redis.call('HSET', jkey, 'sched', BOUNCE)
      if redis.call('ZREM', k('due:' .. f[2]), id) == 1 then reindex(f[2], nil) end
    end
    if f[1] ~= 'inflight' then requeue(jkey, id, NOW) end
    event('bounced', jkey, rcpts_in(jkey, 'p'), nil, nil)
    return 1
  end
  return redis.error_reply('unknown admin action ' .. tostring(ACT))
end

if MODE == 'id' then return {act(TARGET), 1} end
local dk = k('due:' .. TARGET)
local ids
if ACT == 'retry' then
  ids = redis.call('ZRANGEBYSCORE', dk, '(' .. string.format('%d', NOW), '+inf', 'LIMIT', 0, LIMIT)
else
  ids = redis.call('ZRANGE', dk, 0, LIMIT - 1)
end
local n = 0
for _, id in ipairs(ids) do
  local r = act(id)
  if r == 0 then redis.call('ZREM', dk, id) else n = n + r end
end
return {n, #ids}
