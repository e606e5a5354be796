"""The Lua scripts of the lease protocol (see :mod:`redis_cache.lease`).

Each touches the keys of one entry only, which share one Cluster hash tag, so it
runs on the node that owns the entry. Every header says what ``KEYS`` and ``ARGV``
are and what each reply means.
"""

ACQUIRE_LUA = """
-- ACQUIRE: read the value, or take the lease if nobody holds it.
-- KEYS[1] value  KEYS[2] lock  KEYS[3] fence  KEYS[4] signal  KEYS[5] staged
-- ARGV[1] token  ARGV[2] lease (ms)  ARGV[3] fence counter TTL (ms)
-- {2, value}: the value exists; nothing is taken.
-- {1, fence, clean, staged}: taken. The lock holds "<token>:<fence>"; clean = 1 when a
--   wake-up token was waiting (the previous holder released or committed); staged is a
--   result an earlier holder staged but never published (false if none): publish it.
--   A lock already holding ARGV[1] is ours (an earlier reply was lost): renewed, taken.
-- {0, pttl, holder_fence}: held by somebody else (pttl -1: no expiry, set by hand).
local value = redis.call('GET', KEYS[1])
if value then
  return {2, value}
end
local holder = redis.call('GET', KEYS[2])
if holder then
  local holder_fence = tonumber(string.match(holder, ':(%d+)$')) or 0
  if string.sub(holder, 1, #ARGV[1] + 1) == ARGV[1] .. ':' then
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
    return {1, holder_fence, 0, redis.call('GET', KEYS[5])}
  end
  return {0, redis.call('PTTL', KEYS[2]), holder_fence}
end
local fence = redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
redis.call('SET', KEYS[2], ARGV[1] .. ':' .. fence, 'PX', ARGV[2])
local clean = redis.call('DEL', KEYS[4])
return {1, fence, clean, redis.call('GET', KEYS[5])}
"""

EXTEND_LUA = """
-- EXTEND: renew our lease.  KEYS[1] lock.  ARGV[1] owner "<token>:<fence>"  ARGV[2] lease ms
-- 1 if the lock is still ours (its TTL reset), else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE_LUA = """
-- RELEASE: give the lease back and wake the waiters.
-- KEYS[1] lock  KEYS[2] signal.  ARGV[1] owner  ARGV[2] signal TTL (ms)
-- 1 if released, 0 if the lock was not ours (nothing is touched then).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

COMMIT_LUA = """
-- COMMIT: write the value, release the lock and wake the waiters, atomically.
-- KEYS[1] value  KEYS[2] lock  KEYS[3] signal  KEYS[4] staged
-- ARGV[1] owner ("" when never acquired)  ARGV[2] value  ARGV[3] value TTL (ms, 0: none)
-- ARGV[4] signal TTL (ms)
-- {-1, holder_fence}: fenced, somebody else holds the lock; nothing is touched.
-- {1}: the value holds ARGV[2]: written now, or by our earlier COMMIT whose reply was lost.
-- {0}: another value was there first; ours is dropped.
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then
  return {-1, tonumber(string.match(holder, ':(%d+)$')) or 0}
end
local existing = redis.call('GET', KEYS[1])
local written = 0
if not existing then
  if tonumber(ARGV[3]) > 0 then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  else
    redis.call('SET', KEYS[1], ARGV[2])
  end
  written = 1
elseif existing == ARGV[2] then
  written = 1
end
if holder then
  redis.call('DEL', KEYS[2])
end
redis.call('DEL', KEYS[4])
redis.call('DEL', KEYS[3])
redis.call('RPUSH', KEYS[3], '1')
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return {written}
"""

STAGE_LUA = """
-- STAGE: keep our result beside the entry until the replicas have it (a WAIT follows).
-- KEYS[1] value  KEYS[2] lock  KEYS[3] staged.  ARGV[1] owner  ARGV[2] value
-- {-1, holder_fence}: the lock is not ours; nothing is touched.
-- {0}: a value is already published; nothing is staged.  {1}: staged.
local holder = redis.call('GET', KEYS[2])
if holder ~= ARGV[1] then
  return {-1, holder and (tonumber(string.match(holder, ':(%d+)$')) or 0) or 0}
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0}
end
redis.call('SET', KEYS[3], ARGV[2])
return {1}
"""

PUBLISH_LUA = """
-- PUBLISH: move the staged result to the value key, release and wake (a WAIT follows).
-- KEYS[1] value  KEYS[2] lock  KEYS[3] signal  KEYS[4] staged
-- ARGV[1] owner  ARGV[2] signal TTL (ms)
-- {-1, holder_fence}: somebody else holds the lock (they will publish what is staged).
-- {-2}: nothing is staged (a failover lost it): stage again.
-- {1}: published, or the value already held the staged bytes.  {0}: another value won.
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then
  return {-1, tonumber(string.match(holder, ':(%d+)$')) or 0}
end
local staged = redis.call('GET', KEYS[4])
local existing = redis.call('GET', KEYS[1])
if not staged then
  if existing then
    return {0}
  end
  return {-2}
end
local written = 0
if not existing then
  redis.call('SET', KEYS[1], staged)
  written = 1
elseif existing == staged then
  written = 1
end
redis.call('DEL', KEYS[4])
if holder then
  redis.call('DEL', KEYS[2])
end
redis.call('DEL', KEYS[3])
redis.call('RPUSH', KEYS[3], '1')
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return {written}
"""
