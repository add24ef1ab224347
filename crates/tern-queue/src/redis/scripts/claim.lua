-- Takes up to MAX due jobs of ONE schedule (domain) of this shard, in due order.
-- ARGV[4] owner, [5] max batch, [6] lease ms, [7] default domain concurrency, [8] claim id (the token),
-- [9] how many due domains to look at (0: only the held ones), [10] how long (ms) a domain at its limit is pushed back,
-- [11] the number H of slot holds the caller passes, then H pairs (domain, hold id): slots the caller
-- keeps for idle connections (hold.lua). A claim of a held domain takes its hold over (the idle
-- connection carries the new claim), so the hold does not count against the domain's limit; held domains
-- with due work are looked at first, so that an idle connection is used before it times out.
-- Domains are visited in the order of the domain index (earliest due first). After a claim the domain is
-- put back at max(its next due time, now + 1), behind every domain already due: due domains take turns.
-- A domain at its concurrency limit (live claims and holds = slots, each with a deadline) is skipped and
-- pushed back. Suspended domains are not in the index; one found there (a race) is dropped from it.
-- Returns false, or {domain, claim id, deadline, hold taken over (or ''), job1, job2, ...}:
-- each job is the list of its fields id, dom, n, att, first, next, err, tags, trace, bounce, then rs:<i>,
-- rr:<i> per recipient, as they were BEFORE this claim (the caller knows the new state, owner and lease),
-- or for a job in the string form its id alone (the caller reads the job from the header of its data).
-- The caller then reads each job's data `jd:<id>` (header, envelope, and a solo job's body) and the shared
-- `body:<msg>` of the others. The claim's owner and schedule go to `cinfo` (for the jobs in the string form).
local OWNER, MAX, LEASE, DEFLIM, CLAIM = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local SCAN, PUSHBACK = tonumber(ARGV[9]), tonumber(ARGV[10])
-- The claim id is the token in the job headers, which have room for exactly TOKW characters.
if #CLAIM ~= TOKW then return redis.error_reply('claim id must be ' .. TOKW .. ' characters') end
-- A claim id that took jobs here already: this call is a repeat (a client that resent it after losing the
-- reply). Taking more under the same id would merge two claims' counts; the first one's jobs come back to
-- the schedule when their lease runs out.
if redis.call('HEXISTS', k('claims'), CLAIM) == 1 then return false end
local held, horder = {}, {}
for x = 0, tonumber(ARGV[11] or '0') - 1 do
  local d = ARGV[12 + 2 * x]
  if not held[d] then
    held[d] = ARGV[13 + 2 * x]
    horder[#horder + 1] = d
  end
end

-- Claims due jobs of `d` if its limit allows; `scanning` (found through the index) pushes a domain at its
-- limit back and re-indexes an empty one. Returns the reply, or nil.
local function take(d, scanning)
  local hold = nil
  if d ~= BOUNCE then
    if suspended(d) then
      redis.call('ZREM', k('domains'), d)
      return nil
    end
    local sk = k('slots:' .. d)
    redis.call('ZREMRANGEBYSCORE', sk, '-inf', NOW)
    local lim = tonumber(redis.call('HGET', k('conc'), d) or DEFLIM)
    local used = redis.call('ZCARD', sk)
    if held[d] and redis.call('ZSCORE', sk, held[d]) then
      hold = held[d]
      used = used - 1
    end
    if used >= lim then
      if scanning then redis.call('ZADD', k('domains'), NOW + PUSHBACK, d) end
      return nil
    end
  end
  local dk = k('due:' .. d)
  local ids = redis.call('ZRANGEBYSCORE', dk, '-inf', NOW, 'LIMIT', 0, MAX)
  if #ids == 0 then
    if scanning then reindex(d, nil) end
    return nil
  end
  local dl = string.format('%d', NOW + LEASE)
  local out = {d, CLAIM, dl, hold or ''}
  local taken = 0
  local moved = {}
  local inflight = {}
  -- They are the schedule's first #ids members (ZRANGEBYSCORE from -inf): one sweep from the head.
  redis.call('ZREMRANGEBYRANK', dk, 0, #ids - 1)
  for _, id in ipairs(ids) do
    local dkey = jdk(id)
    -- The form only: the data itself is read by the claimer with a plain MGET (moving a long string through
    -- Lua costs more than the rest of a claim).
    local form = redis.call('GETRANGE', dkey, '0', '0')
    local job, state = nil, 'queued'
    if form == 'q' and d ~= BOUNCE then
      -- 'q', the string form (never tried): the header becomes 'i' with this claim's id as the token, and
      -- the claimer reads the job from the header; the job goes back as its id alone.
      redis.call('SETRANGE', dkey, '0', 'i' .. CLAIM)
      job = id
    elseif form ~= '' and promote(id) then
      local jkey = jk(id)
      -- Few fields are read: each one asked of a hash costs a scan of it, a missing one the whole hash.
      local v = redis.call('HMGET', jkey, 'att', 'n', 'first', 'tags', 'trace', 'next', 'dom', 'err', 'bounce',
                           'state', 'rs:0', 'rr:0')
      local n = tonumber(v[2])
      state = v[10]
      -- The claimer's fields, in a fixed order (codec.rs `claimed_job`): id, dom, n, att, first, next, err,
      -- tags, trace, bounce, then state and reply per recipient.
      job = {id, v[7], v[2], v[1], v[3], v[6], v[8], v[4], v[5], v[9], v[11], v[12]}
      append_recipients(jkey, n, 'rs', 'rr', job)
      redis.call('HSET', jkey, 'state', 'inflight', 'owner', OWNER, 'tok', CLAIM, 'lease', dl, 'cdom', d)
    end
    if job then
      moved[state] = (moved[state] or 0) + 1
      inflight[#inflight + 1] = dl
      inflight[#inflight + 1] = id
      out[#out + 1] = job
      taken = taken + 1
    end
  end
  for from, n in pairs(moved) do redis.call('HINCRBY', k('cnt'), from, -n) end
  if taken > 0 then
    redis.call('HINCRBY', k('cnt'), 'inflight', taken)
    chunked(inflight, 400, function(...) redis.call('ZADD', k('inflight'), ...) end)
  end
  reindex(d, NOW + 1)
  if taken == 0 then return nil end
  local sk = k('slots:' .. d)
  if hold then redis.call('ZREM', sk, hold) end
  redis.call('ZADD', sk, dl, CLAIM)
  redis.call('HSET', k('claims'), CLAIM, taken)
  redis.call('HSET', k('cinfo'), CLAIM, OWNER .. '\t' .. d)
  return out
end

for _, d in ipairs(horder) do
  local r = take(d, false)
  if r then return r end
end
if SCAN > 0 then
  for _, d in ipairs(redis.call('ZRANGEBYSCORE', k('domains'), '-inf', NOW, 'LIMIT', 0, SCAN)) do
    local r = take(d, true)
    if r then return r end
  end
end
return false
