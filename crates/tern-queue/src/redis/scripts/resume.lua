-- Ends a domain's suspension: its earliest due job puts it back in the domain index.
-- ARGV[4] domain. Returns 1 if it was suspended.
local D = ARGV[4]
local was = redis.call('HDEL', k('susp'), D)
redis.call('ZREM', k('suspu'), D)
reindex(D, nil)
if was == 1 then domain_event('resumed', D, nil) end
return was
