"""The Lua scripts of the job queue (:mod:`serving.jobs.store`): every state change is one script, so a
crash between two commands cannot lose or duplicate a job. Times are the Redis server's clock."""

NOW = """
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# A failed attempt: retry after backoff, or dead-letter when permanent or out of attempts.
SETTLE = (
    NOW
    + """
local function settle(ns, id, reason, kind, permanent, backoff, backoff_max, dead_ttl)
  local job = ns .. ':job:' .. id
  redis.call('LREM', ns .. ':processing', 0, id)
  redis.call('ZREM', ns .. ':leases', id)
  if redis.call('EXISTS', job) == 0 then return 'gone' end
  redis.call('HDEL', job, 'token')
  local now = now_s()
  local attempts = tonumber(redis.call('HGET', job, 'attempts') or '0')
  local max_attempts = tonumber(redis.call('HGET', job, 'max_attempts') or '1')
  if permanent == '1' or attempts >= max_attempts then
    redis.call('HSET', job, 'status', 'failed', 'error', reason, 'error_kind', kind, 'finished', now)
    redis.call('HDEL', job, 'retry_at')
    redis.call('LPUSH', ns .. ':dead', id)
    redis.call('EXPIRE', job, dead_ttl)
    redis.call('EXPIRE', ns .. ':input:' .. id, dead_ttl)
    return 'dead'
  end
  local delay = math.min(tonumber(backoff_max), tonumber(backoff) * 2 ^ (attempts - 1))
  redis.call('HSET', job, 'status', 'queued', 'error', reason, 'error_kind', kind, 'retry_at', now + delay)
  redis.call('ZADD', ns .. ':delayed', now + delay, id)
  return 'retry'
end
"""
)

# ARGV: ns, id, idem key ('' = none), fingerprint, pending ttl, inline input ('1'/'0'), input, fields...
SUBMIT = (
    NOW
    + """
local ns, id, idem, fp, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
if idem ~= '' then
  local existing = redis.call('GET', ns .. ':idem:' .. idem)
  if existing and redis.call('EXISTS', ns .. ':job:' .. existing) == 1 then
    if redis.call('HGET', ns .. ':job:' .. existing, 'fingerprint') ~= fp then
      return {existing, 'conflict'}
    end
    return {existing, 'duplicate'}
  end
  redis.call('SET', ns .. ':idem:' .. idem, id, 'EX', ttl)
end
local job = ns .. ':job:' .. id
for i = 8, #ARGV, 2 do redis.call('HSET', job, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', job, 'id', id, 'status', 'queued', 'attempts', 0, 'created', now_s(), 'fingerprint', fp,
           'tiles_done', 0, 'completions', 0)
redis.call('EXPIRE', job, ttl)
if ARGV[6] == '1' then redis.call('SET', ns .. ':input:' .. id, ARGV[7], 'EX', ttl) end
redis.call('LPUSH', ns .. ':queue', id)
return {id, 'created'}
"""
)

# ARGV: ns, id, token, worker, visibility -> attempt number, or false for a stale entry
CLAIM = (
    NOW
    + """
local ns, id = ARGV[1], ARGV[2]
local job = ns .. ':job:' .. id
local status = redis.call('HGET', job, 'status')
if status ~= 'queued' then
  redis.call('LREM', ns .. ':processing', 0, id)
  redis.call('ZREM', ns .. ':leases', id)
  return false
end
local now = now_s()
local attempt = redis.call('HINCRBY', job, 'attempts', 1)
redis.call('HSET', job, 'status', 'running', 'token', ARGV[3], 'worker', ARGV[4], 'started', now,
           'tiles_done', 0)
redis.call('HDEL', job, 'retry_at')
redis.call('ZADD', ns .. ':leases', now + tonumber(ARGV[5]), id)
return attempt
"""
)

# ARGV: ns, id, token, visibility, tiles_done, tiles_total -> 1, or 0 when the lease is lost
HEARTBEAT = (
    NOW
    + """
local ns, id = ARGV[1], ARGV[2]
local job = ns .. ':job:' .. id
if redis.call('HGET', job, 'token') ~= ARGV[3] then return 0 end
redis.call('ZADD', ns .. ':leases', now_s() + tonumber(ARGV[4]), id)
redis.call('HSET', job, 'tiles_done', ARGV[5], 'tiles_total', ARGV[6])
return 1
"""
)

# ARGV: ns, id, token, result ttl, fields... -> 1, or 0 when the lease is lost
COMPLETE = (
    NOW
    + """
local ns, id = ARGV[1], ARGV[2]
local job = ns .. ':job:' .. id
if redis.call('HGET', job, 'token') ~= ARGV[3] or redis.call('HGET', job, 'status') ~= 'running' then
  return 0
end
for i = 5, #ARGV, 2 do redis.call('HSET', job, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', job, 'status', 'done', 'finished', now_s())
redis.call('HDEL', job, 'token', 'error', 'error_kind', 'retry_at')
redis.call('HINCRBY', job, 'completions', 1)
redis.call('LREM', ns .. ':processing', 0, id)
redis.call('ZREM', ns .. ':leases', id)
redis.call('EXPIRE', job, tonumber(ARGV[4]))
redis.call('DEL', ns .. ':input:' .. id)
redis.call('INCR', ns .. ':completed')
return 1
"""
)

# ARGV: ns, id, token, reason, kind, permanent, backoff, backoff_max, dead_ttl -> retry | dead | stale
FAIL = (
    SETTLE
    + """
local ns, id = ARGV[1], ARGV[2]
if redis.call('HGET', ns .. ':job:' .. id, 'token') ~= ARGV[3] then return 'stale' end
return settle(ns, id, ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
"""
)

# ARGV: ns, id, token -> 1 when handed back to the head of the queue (a graceful stop, not an attempt)
RELEASE = """
local ns, id = ARGV[1], ARGV[2]
local job = ns .. ':job:' .. id
if redis.call('HGET', job, 'token') ~= ARGV[3] then return 0 end
redis.call('LREM', ns .. ':processing', 0, id)
redis.call('ZREM', ns .. ':leases', id)
redis.call('HINCRBY', job, 'attempts', -1)
redis.call('HSET', job, 'status', 'queued', 'tiles_done', 0)
redis.call('HDEL', job, 'token')
redis.call('RPUSH', ns .. ':queue', id)
return 1
"""

# ARGV: ns, visibility, backoff, backoff_max, dead_ttl, limit -> {requeued, dead, promoted}
REAP = (
    SETTLE
    + """
local ns, vis, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[6])
local now = now_s()
local requeued, dead = 0, 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', ns .. ':leases', '-inf', now, 'LIMIT', 0, limit)) do
  local attempt = redis.call('HGET', ns .. ':job:' .. id, 'attempts') or '?'
  local reason = 'worker lost: no heartbeat within the visibility timeout (' .. ARGV[2] ..
                 ' s) on attempt ' .. attempt
  local outcome = settle(ns, id, reason, 'worker_lost', '0', ARGV[3], ARGV[4], ARGV[5])
  if outcome == 'dead' then dead = dead + 1 elseif outcome == 'retry' then requeued = requeued + 1 end
end
for _, id in ipairs(redis.call('LRANGE', ns .. ':processing', 0, -1)) do
  redis.call('ZADD', ns .. ':leases', 'NX', now + vis, id)
end
local due = redis.call('ZRANGEBYSCORE', ns .. ':delayed', '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(due) do
  redis.call('ZREM', ns .. ':delayed', id)
  redis.call('LPUSH', ns .. ':queue', id)
end
while true do
  local oldest = redis.call('LINDEX', ns .. ':dead', -1)
  if not oldest or redis.call('EXISTS', ns .. ':job:' .. oldest) == 1 then break end
  redis.call('RPOP', ns .. ':dead')
end
return {requeued, dead, #due}
"""
)
