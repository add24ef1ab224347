-- read: read-only views of this shard (flag no-writes: Redis runs it even when out of memory). args[5] view:
--   "message": args[6] message id -> {body size or -1, job1 fields, job2 fields, ...}
--   "body":    args[6] message id -> the stored message (headers and body) or false
--   "job":     args[6] job id -> job fields or false
--   "page":    args[6] last job id seen or "", args[7] how many to scan, args[8] domain, args[9] state,
--              args[10] sender, args[11] recipient ("" = any; sender and recipient compared lower-cased)
--              -> {last id scanned or "", done "1"/"0", job fields...}
--   "counts":  -> {queued, deferred, inflight, jobs, oldest due or -1, bounce due, suspended domains,
--              the smallest job id or "" (ids start with a ULID, so this is the oldest message), held}
--   "depths":  args[6] domain or "" for all -> {domain, waiting, due now, live jobs, earliest due or -1,
--              active claims, limit override or -1, suspension record or "", held jobs} repeated
--   "history": args[6] message id, args[7] "1" to make the `queued` records of its jobs here that are still
--              in the string form (their data stands for them, see shared.lua) -> {the message's history
--              records here or false, queued record, ...}

local function message_view(message)
  local ids = redis_call('HGET', PREFIX .. 'msg:' .. message, 'ids')
  if not ids then
    -- A message with one job in all keeps no `msg:` record: its job's data holds the body.
    local fields, body_size = job_fields(message .. '.0')
    if body_size < 0 then return false end
    return {body_size, fields}
  end
  local out = {redis_call('STRLEN', PREFIX .. 'body:' .. message)}
  for id in string.gmatch(ids, '%S+') do
    local fields = job_fields(id)
    if #fields > 0 then out[#out + 1] = fields end
  end
  return out
end

local function body_view(message)
  local body = redis_call('GET', PREFIX .. 'body:' .. message)
  if body then return body end
  -- A message's only job keeps the body after its envelope, past the first newline (JSON has none).
  local id = message .. '.0'
  local line, _, inline_body = split_data(redis_call('GET', job_data_key(id)))
  if line == '' or unkept(id, line) then return false end
  return inline_body or false
end

local function page_view(args)
  local start = '-'
  if args[6] ~= '' then start = '(' .. args[6] end
  local scan = to_number(args[7])
  local ids = redis_call('ZRANGE', PREFIX .. 'jobs', start, '+', 'BYLEX', 'LIMIT', '0', args[7])
  local domain, state, sender, recipient = args[8], args[9], args[10], args[11]
  local last = ''
  local out = {'', '0'}
  for _, id in ipairs(ids) do
    last = id
    -- The job's fields without its data: from the header of a job in the string form, else its hash.
    local job = {}
    local line = header_line(id)
    local fields
    if line == '' then fields = {}
    elseif string_sub(line, 1, 1) == 'h' then fields = redis_call('HGETALL', job_hash_key(id))
    else fields = header_fields(id, header_of(line)) end
    for x = 1, #fields, 2 do job[fields[x]] = fields[x + 1] end
    local match = job.dom ~= nil
    if match and domain ~= '' and job.dom ~= domain then match = false end
    if match and state ~= '' and job.state ~= state then match = false end
    if match and sender ~= '' and string.lower(job.sender or '') ~= sender then match = false end
    if match and recipient ~= '' then
      local hit = false
      for r = 0, to_number(job.n or '0') - 1 do
        if string.lower(job['ra:' .. r] or '') == recipient then hit = true; break end
      end
      match = hit
    end
    if match then out[#out + 1] = job_fields(id) end
  end
  out[1] = last
  if #ids < scan then out[2] = '1' end
  return out
end

local function counts_view()
  local counts = redis_call('HMGET', PREFIX .. 'cnt', 'queued', 'deferred', 'inflight', 'held')
  local oldest = -1
  local function consider(schedule)
    local first = earliest_due(schedule)
    if first then
      local due = to_number(first)
      if oldest < 0 or due < oldest then oldest = due end
    end
  end
  for _, schedule in ipairs(redis_call('ZRANGE', PREFIX .. 'domains', '0', '-1')) do consider(schedule) end
  for _, domain in ipairs(redis_call('HKEYS', PREFIX .. 'susp')) do consider(domain) end
  local first_job = redis_call('ZRANGE', PREFIX .. 'jobs', '0', '0')[1] or ''
  return {to_number(counts[1] or '0'), to_number(counts[2] or '0'), to_number(counts[3] or '0'),
          redis_call('ZCARD', PREFIX .. 'jobs'), oldest,
          redis_call('ZCARD', PREFIX .. 'due:' .. BOUNCE_SCHEDULE),
          redis_call('HLEN', PREFIX .. 'susp'), first_job, to_number(counts[4] or '0')}
end

local function depths_view(only)
  local domains = {}
  if only ~= '' then
    domains = {only}
  else
    local seen = {}
    local all = redis_call('HKEYS', PREFIX .. 'dlive')
    for _, domain in ipairs(redis_call('HKEYS', PREFIX .. 'susp')) do all[#all + 1] = domain end
    for _, domain in ipairs(all) do
      if not seen[domain] then seen[domain] = true; domains[#domains + 1] = domain end
    end
  end
  local out = {}
  for _, domain in ipairs(domains) do
    local schedule_key = PREFIX .. 'due:' .. domain
    local first = earliest_due(domain)
    out[#out + 1] = domain
    out[#out + 1] = redis_call('ZCARD', schedule_key)
    out[#out + 1] = redis_call('ZCOUNT', schedule_key, '-inf', NOW_TEXT)
    out[#out + 1] = to_number(redis_call('HGET', PREFIX .. 'dlive', domain) or '0')
    out[#out + 1] = to_number(first or '-1')
    out[#out + 1] = redis_call('ZCOUNT', PREFIX .. 'slots:' .. domain, '(' .. NOW_TEXT, '+inf')
    out[#out + 1] = to_number(redis_call('HGET', PREFIX .. 'conc', domain) or '-1')
    out[#out + 1] = redis_call('HGET', PREFIX .. 'susp', domain) or ''
    out[#out + 1] = redis_call('ZCARD', PREFIX .. 'held:' .. domain)
  end
  return out
end

local function history_view(message, make_queued)
  local out = {redis_call('GET', PREFIX .. 'hist:' .. message)}
  if make_queued ~= '1' then return out end
  local ids = redis_call('HGET', PREFIX .. 'msg:' .. message, 'ids')
  local jobs
  if ids then
    jobs = {}
    for id in string.gmatch(ids, '%S+') do jobs[#jobs + 1] = id end
  else
    -- A message with one job in all keeps no `msg:` record.
    jobs = {message .. '.0'}
  end
  for _, id in ipairs(jobs) do
    local line = header_line(id)
    local form = string_sub(line, 1, 1)
    if (form == 'q' or form == 'i') and not unkept(id, line) then
      out[#out + 1] = header_queued_record(id, header_of(line))
    end
  end
  return out
end

register('read', function(args)
  local view = args[5]
  if view == 'message' then return message_view(args[6])
  elseif view == 'body' then return body_view(args[6])
  elseif view == 'job' then
    local fields = job_fields(args[6])
    if #fields == 0 then return false end
    return fields
  elseif view == 'page' then return page_view(args)
  elseif view == 'counts' then return counts_view()
  elseif view == 'depths' then return depths_view(args[6])
  elseif view == 'history' then return history_view(args[6], args[7])
  end
  return redis.error_reply('ERR unknown view ' .. tostring(view))
end, READ_ONLY)
