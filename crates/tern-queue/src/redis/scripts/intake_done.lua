-- Drops an intake record once every shard has materialised its jobs. ARGV[4] message id.
redis.call('DEL', k('intake:' .. ARGV[4]))
return redis.call('ZREM', k('intakes'), ARGV[4])
