-- Records the outcome of one delivery attempt of a job owned by the caller.
-- ARGV[4] job id, [5] owner, [6] token (the claim id), [7] kind: delivered|deferred|failed|expired,
-- [8] retry time ms (used when recipients stay pending), [9] reply, [10] remote mx, [11] remote ip,
-- [12] tls, [13] number of per-recipient results R, then R triples: recipient index, state (d|p|f), reply.
-- Recipients not listed take the kind's state (deferred leaves them pending). When none is pending the job
-- is removed (and the body with the last job of the message); otherwise it waits for the retry time.
-- Returns {"finished"} | {"deferred", at} | {"dup"} (this token already completed: a repeated call) |
-- {"notowner"} (the caller no longer owns the job) | {"gone"} (no such job).
local ID, OWNER, TOK, KIND, RETRY, REPLY = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local jkey = jk(ID)
local f = redis.call('HMGET', jkey, 'id', 'msg', 'dom', 'att', 'tags', 'state', 'owner', 'tok', 'donetok', 'n',
                     'bounce', 'claim', 'cdom')
if not f[6] then return {'gone'} end
if f[6] ~= 'inflight' or f[7] ~= OWNER or f[8] ~= TOK then
  if f[9] == 'c:' .. TOK then return {'dup'} end
  return {'notowner'}
end
local rest = 'f'
if KIND == 'delivered' then rest = 'd' elseif KIND == 'deferred' then rest = 'p' end
local given = {}
local R = tonumber(ARGV[13])
for x = 0, R - 1 do
  local b = 14 + x * 3
  given[tonumber(ARGV[b])] = {ARGV[b + 1], ARGV[b + 2]}
end
local delivered, failed, pending = {}, {}, {}
local upd = {}
local att = tonumber(f[4] or '0') + 1
f[4] = tostring(att)
for r = 0, tonumber(f[10]) - 1 do
  local v = redis.call('HMGET', jkey, 'rs:' .. r, 'ra:' .. r)
  if v[1] == 'p' then
    local st, rep = rest, REPLY
    local g = given[r]
    if g then
      st = g[1]
      if g[2] ~= '' then rep = g[2] end
    end
    if st ~= 'p' then upd[#upd + 1] = 'rs:' .. r; upd[#upd + 1] = st end
    if rep ~= '' then upd[#upd + 1] = 'rr:' .. r; upd[#upd + 1] = rep end
    if st == 'd' then delivered[#delivered + 1] = v[2]
    elseif st == 'f' then failed[#failed + 1] = v[2]
    else pending[#pending + 1] = v[2] end
  end
end
redis.call('ZREM', k('inflight'), ID)
claim_done(f[12], f[13])
local extra = {}
if ARGV[10] ~= '' then extra[#extra + 1] = 'mx'; extra[#extra + 1] = ARGV[10] end
if ARGV[11] ~= '' then extra[#extra + 1] = 'ip'; extra[#extra + 1] = ARGV[11] end
if ARGV[12] ~= '' then extra[#extra + 1] = 'tls'; extra[#extra + 1] = ARGV[12] end
if f[11] == '1' then extra[#extra + 1] = 'bounce'; extra[#extra + 1] = '1' end
if #delivered > 0 then
  event_of('delivered', f, delivered, REPLY, extra)
  stat('delivered', #delivered)
end
if #failed > 0 then
  local kind = 'failed'
  if KIND == 'expired' then kind = 'expired' end
  event_of(kind, f, failed, REPLY, extra)
  stat(kind, #failed)
end
if #pending > 0 then
  local at = tonumber(RETRY) or (NOW + 60000)
  upd[#upd + 1] = 'att'; upd[#upd + 1] = att
  upd[#upd + 1] = 'donetok'; upd[#upd + 1] = 'c:' .. TOK
  if REPLY ~= '' then upd[#upd + 1] = 'err'; upd[#upd + 1] = REPLY end
  redis.call('HSET', jkey, unpack(upd))
  redis.call('HDEL', jkey, 'owner', 'tok', 'lease', 'claim', 'cdom')
  event_of('deferred', f, pending, REPLY, extra)
  stat('deferred', #pending)
  requeue(jkey, ID, at)
  return {'deferred', string.format('%d', at)}
end
-- Finished: the job goes (it is in flight, so on no schedule).
redis.call('HINCRBY', k('cnt'), 'inflight', -1)
redis.call('ZREM', k('jobs'), ID)
redis.call('DEL', jkey)
if redis.call('HINCRBY', k('dlive'), f[3], -1) <= 0 then redis.call('HDEL', k('dlive'), f[3]) end
local mk = k('msg:' .. f[2])
if redis.call('HINCRBY', mk, 'live', -1) <= 0 then redis.call('DEL', mk, k('body:' .. f[2])) end
return {'finished'}
