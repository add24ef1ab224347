-- The TLS-RPT counters (`tls_report.rs`): a policy domain's counters of a UTC day `tlsrpt:<day>:<domain>` (a
-- hash: field = a session key's JSON, value = its count) live in that domain's shard, beside its mail and
-- its MTA-STS policy; `tlsrptdom:<day>` lists the shard's domains with counters that day (a set). Both
-- expire at the time the caller passes (a week after the day ends). The mark of a report sent
-- (`tlsrptsent:<day>:<domain>`) is a plain `SET NX` and the counters a plain `HGETALL`, from the Rust side.
-- The day's report lock `tlsrptlock:<day>` lives in the shard the day's text hashes to.

-- tls_rpt_add: adds args[8] (a whole number) to counter args[7] of domain args[6] on day args[5]; the day's
-- keys go at args[9] (ms, PEXPIREAT). Returns the counter's new value.
register('tls_rpt_add', function(args)
  local day, domain, keep = args[5], args[6], args[9]
  local key = PREFIX .. 'tlsrpt:' .. day .. ':' .. domain
  local index = PREFIX .. 'tlsrptdom:' .. day
  local total = redis_call('HINCRBY', key, args[7], args[8])
  redis_call('PEXPIREAT', key, keep)
  redis_call('SADD', index, domain)
  redis_call('PEXPIREAT', index, keep)
  return total
end)

-- tls_rpt_lock: takes the report lock of day args[5] for owner args[6] for args[7] ms, unless another owner
-- holds it; the owner taking it again starts its time anew. Returns {'ok'} or {'held', owner}.
register('tls_rpt_lock', function(args)
  local key, owner, ttl = PREFIX .. 'tlsrptlock:' .. args[5], args[6], args[7]
  if redis_call('SET', key, owner, 'NX', 'PX', ttl) then return {'ok'} end
  local holder = redis_call('GET', key)
  if holder ~= owner then return {'held', holder} end
  redis_call('SET', key, owner, 'PX', ttl)
  return {'ok'}
end, RUNS_WHEN_FULL)
