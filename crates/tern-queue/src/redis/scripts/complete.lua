-- Records the outcomes of delivery attempts of jobs owned by the caller: one job, or many (typically the
-- jobs of one claim), in one atomic call.
-- ARGV[4] owner, [5] job count N, then per job: job id, the attempt details: token (the claim id), kind
-- (delivered|deferred|failed|expired), retry time ms (used when recipients stay pending), reply, remote mx,
-- remote ip, tls (or "=" alone: the previous job's details), number of per-recipient results R, then R
-- triples: recipient index, state (d|p|f), reply.
-- Recipients not listed take the kind's state (deferred leaves them pending). When none is pending the job
-- is removed (and the body with the last job of the message); otherwise it waits for the retry time.
-- Each job is checked and changed on its own, in order (a job listed twice is seen changed the second
-- time); the call's events go into one stream entry, and the in-flight index, claim slots, counters and
-- stats are updated once per call.
-- Returns one reply per job: {"finished"} | {"deferred", at} | {"dup"} (this token already completed: a
-- repeated call) | {"notowner"} (the caller no longer owns the job) | {"gone"} (no such job).
local OWNER = ARGV[4]
local res = {}
local unflight = {}
local claims, corder = {}, {}
local counts = {delivered = 0, failed = 0, expired = 0, deferred = 0}
local finished = 0
local listing = {}
local live, lorder = {}, {}
local FINISHED = {'finished'}
local extra, xmx, xip, xtls, xbounce = {}, '', '', '', false

-- A finished job goes (it is in flight, so on no schedule): its keys (`...`), its place in the listing, its
-- domain's live count, and its message's body with the message's last job.
local function finish(id, dom, solo, ...)
  redis.call('DEL', ...)
  finished = finished + 1
  listing[#listing + 1] = id
  if not live[dom] then live[dom] = 0; lorder[#lorder + 1] = dom end
  live[dom] = live[dom] + 1
  drop_body_ref(id, solo)
end

-- The job leaves flight: out of the in-flight index, and one job fewer for its claim (`cdom`: its schedule).
local function unfly(id, tok, cdom)
  unflight[#unflight + 1] = id
  if not claims[tok] then claims[tok] = {0, cdom}; corder[#corder + 1] = tok end
  claims[tok][1] = claims[tok][1] + 1
end

-- The attempt's fields of every event (one table for a run of jobs of the same attempt details).
local function attempt_fields(mx, ip, tls, bounce)
  if mx ~= xmx or ip ~= xip or tls ~= xtls or bounce or xbounce then
    extra = {mx = mx, ip = ip, tls = tls}
    xbounce = bounce
    if bounce then extra.bounce = '1' end
    xmx, xip, xtls = mx, ip, tls
  end
  return extra
end

-- A claim's owner and schedule from `cinfo` ({false, false} when it is not there), once per claim.
local cinfos = {}
local function cinfo(tok)
  local c = cinfos[tok]
  if not c then
    local v = redis.call('HGET', k('cinfo'), tok) or ''
    -- owner, a tab, the schedule (which has no tab; the owner might).
    local owner, cdom = string.match(v, '^(.*)\t([^\t]*)$')
    if owner then c = {owner, cdom} else c = {false, false} end
    cinfos[tok] = c
  end
  return c
end

-- Job x's only recipient's attempt ended it (st 'd' or 'f', with reply rep): its event and count. `f` is
-- the event's job fields (see ev_fields).
local function ended(x, st, rep, fkind, f, rcpt, extra)
  if st == 'd' then
    ev_add('delivered', f, rcpt, rep, extra)
    counts.delivered = counts.delivered + 1
  else
    ev_add(fkind, f, rcpt, rep, extra)
    counts[fkind] = counts[fkind] + 1
  end
  res[x] = FINISHED
end

-- From a header line's third field on: dom, n, tags, solo and the recipients (see common.lua).
local HDR_PATTERN = '^([^\t]*)\t([^\t]*)\t[^\t]*\t[^\t]*\t[^\t]*\t([^\t]*)\t[^\t]*\t([^\t]*)\t(.*)$'

-- Records the outcome of job x, whose arguments start at ARGV[i]; returns where the next job's start.
local TOK, KIND, RETRY, REPLY, MX, IP, TLS
local function complete_one(x, i)
  local ID = ARGV[i]
  if ARGV[i + 1] == '=' and TOK then
    i = i + 2
  else
    TOK, KIND, RETRY, REPLY = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    MX, IP, TLS = ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
    i = i + 8
  end
  local R = tonumber(ARGV[i])
  local rb = i + 1
  local nexti = rb + R * 3
  local rest = 'f'
  if KIND == 'delivered' then rest = 'd' elseif KIND == 'deferred' then rest = 'p' end
  local fkind = 'failed'
  if KIND == 'expired' then fkind = 'expired' end
  -- The first recipient's outcome, for the common case: one recipient, whose attempt ends it.
  local st1, rep1 = rest, REPLY
  local only_first = R == 0 or ARGV[rb] == '0'
  if R > 0 and ARGV[rb] == '0' then
    st1 = ARGV[rb + 1]
    if ARGV[rb + 2] ~= '' then rep1 = ARGV[rb + 2] end
  end

  -- The string form (see common.lua): in flight for this claim, it needs no hash; its only recipient's
  -- attempt ends it, or it turns into the hash form for the general path below.
  local line = header_line(ID)
  local form = string.sub(line, 1, 1)
  if line == '' then
    res[x] = {'gone'}
    return nexti
  elseif form == 'q' then
    res[x] = {'notowner'}
    return nexti
  elseif form == 'i' then
    if string.sub(line, 2, TOKW + 1) ~= TOK or cinfo(TOK)[1] ~= OWNER then
      res[x] = {'notowner'}
      return nexti
    end
    -- dom, n, tags, solo and the recipients (one pattern: the cheapest way through the header in Lua).
    local dom, n, tags, solo, rcpt = string.match(line, HDR_PATTERN, TOKW + 3)
    if n == '1' and (st1 == 'd' or st1 == 'f') and only_first then
      unfly(ID, TOK, cinfo(TOK)[2])
      ended(x, st1, rep1, fkind, {ID, false, dom, '1', tags}, rcpt, attempt_fields(MX, IP, TLS, false))
      finish(ID, dom, solo, jdk(ID))
      return nexti
    end
    promote(ID)
  end

  local jkey = jk(ID)
  -- Only the fields needed (each field asked of a hash costs a scan of it); the first recipient's state and
  -- address come with them (every job has one). f[1] and f[2] are then reused: f is the event's job fields
  -- (id, -, dom, att, tags; see ev_fields).
  local f = redis.call('HMGET', jkey, 'n', 'rs:0', 'dom', 'att', 'tags', 'state', 'owner', 'tok', 'cdom', 'solo',
                       'bounce', 'ra:0')
  if not f[6] then
    res[x] = {'gone'}
    return nexti
  elseif f[6] ~= 'inflight' or f[7] ~= OWNER or f[8] ~= TOK then
    if redis.call('HGET', jkey, 'donetok') == 'c:' .. TOK then res[x] = {'dup'} else res[x] = {'notowner'} end
    return nexti
  end
  local n, rs0, ra0 = tonumber(f[1]), f[2], f[12]
  f[1] = ID
  f[2] = false
  -- This attempt's number, for the events.
  local att = tonumber(f[4] or '0') + 1
  f[4] = tostring(att)
  unfly(ID, TOK, f[9])
  local extra = attempt_fields(MX, IP, TLS, f[11] == '1')
  if n == 1 and rs0 == 'p' and (st1 == 'd' or st1 == 'f') and only_first then
    ended(x, st1, rep1, fkind, f, ra0, extra)
    finish(ID, f[3], f[10], jkey, jdk(ID))
    return nexti
  end
  local given = {}
  for y = 0, R - 1 do
    local b = rb + y * 3
    given[tonumber(ARGV[b])] = {ARGV[b + 1], ARGV[b + 2]}
  end
  local delivered, failed, pending = {}, {}, {}
  -- Recipients grouped by (state, reply), so that each event carries the reply its recipients got.
  local groups, gorder = {}, {}
  local upd = {}
  local v = {rs0, ra0}
  append_recipients(jkey, n, 'rs', 'ra', v)
  for r = 0, n - 1 do
    if v[2 * r + 1] == 'p' then
      local addr = v[2 * r + 2]
      local st, rep = rest, REPLY
      local g = given[r]
      if g then
        st = g[1]
        if g[2] ~= '' then rep = g[2] end
      end
      if st ~= 'p' then upd[#upd + 1] = 'rs:' .. r; upd[#upd + 1] = st end
      if rep ~= '' then upd[#upd + 1] = 'rr:' .. r; upd[#upd + 1] = rep end
      if st == 'd' then delivered[#delivered + 1] = addr
      elseif st == 'f' then failed[#failed + 1] = addr
      else st = 'p'; pending[#pending + 1] = addr end
      local gk = st .. '\0' .. rep
      if not groups[gk] then groups[gk] = {st, rep, {}}; gorder[#gorder + 1] = gk end
      local ga = groups[gk][3]
      ga[#ga + 1] = addr
    end
  end
  local kinds = {d = 'delivered', f = fkind, p = 'deferred'}
  for _, st in ipairs({'d', 'f', 'p'}) do
    for _, gk in ipairs(gorder) do
      local g = groups[gk]
      if g[1] == st then ev_add(kinds[st], f, g[3], g[2], extra) end
    end
  end
  counts.delivered = counts.delivered + #delivered
  counts[fkind] = counts[fkind] + #failed
  if #pending > 0 then
    local at = tonumber(RETRY) or (NOW + 60000)
    upd[#upd + 1] = 'att'; upd[#upd + 1] = tostring(att)
    upd[#upd + 1] = 'donetok'; upd[#upd + 1] = 'c:' .. TOK
    if REPLY ~= '' then upd[#upd + 1] = 'err'; upd[#upd + 1] = REPLY end
    chunked(upd, 400, function(...) redis.call('HSET', jkey, ...) end)
    redis.call('HDEL', jkey, 'owner', 'tok', 'lease', 'cdom')
    counts.deferred = counts.deferred + #pending
    requeue(jkey, ID, at)
    res[x] = {'deferred', string.format('%d', at)}
  else
    finish(ID, f[3], f[10], jkey, jdk(ID))
    res[x] = FINISHED
  end
  return nexti
end

local i = 6
for x = 1, tonumber(ARGV[5]) do i = complete_one(x, i) end
if #unflight > 0 then
  chunked(unflight, 400, function(...) redis.call('ZREM', k('inflight'), ...) end)
  for _, c in ipairs(corder) do claim_done(c, claims[c][2], claims[c][1]) end
end
if finished > 0 then
  redis.call('HINCRBY', k('cnt'), 'inflight', -finished)
  chunked(listing, 400, function(...) redis.call('ZREM', k('jobs'), ...) end)
  for _, d in ipairs(lorder) do
    if redis.call('HINCRBY', k('dlive'), d, -live[d]) <= 0 then redis.call('HDEL', k('dlive'), d) end
  end
end
for _, name in ipairs({'delivered', 'failed', 'expired', 'deferred'}) do stat(name, counts[name]) end
ev_flush()
return res
