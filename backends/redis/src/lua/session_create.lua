-- session_create: a new session, held at generation 1.
-- KEYS: the session.
-- ARGV: owner, node, ttl ms.
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'gen', 1, 'node', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
