"""Lua scripts: every multi-step write that must hold together is one script (DESIGN rule 10).

Index keys are built in Lua from ``keys.state_index_prefix()`` + queue + ":" + state, the same
shape as ``keys.state_index``; job record keys from ``keys.job_prefix()`` + id.
"""

from __future__ import annotations

from functools import lru_cache

import redis

PRELUDE = r"""
local IDX, JOBP, STREAM, CHANNEL, MAXLEN = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local function idx(queue, state) return IDX .. queue .. ':' .. state end
local function append_timeline(rec, entry)
  local tl = redis.call('hget', rec, 'timeline')
  local item = cjson.encode(entry)
  if (not tl) or tl == '' or tl == '[]' then tl = '[' .. item .. ']'
  else tl = string.sub(tl, 1, -2) .. ',' .. item .. ']' end
  redis.call('hset', rec, 'timeline', tl)
end
local function move_state(id, queue, old, new, score)
  if old and old ~= new then redis.call('zrem', idx(queue, old), id) end
  redis.call('zadd', idx(queue, new), score, id)
end
local function emit(event)
  local body = cjson.encode(event)
  local xid = redis.call('xadd', STREAM, 'MAXLEN', '~', MAXLEN, '*', 'e', body)
  redis.call('publish', CHANNEL, xid .. ' ' .. body)
end
local function trim(queue, state, keep)
  local key = idx(queue, state)
  local extra = redis.call('zcard', key) - keep
  if extra <= 0 then return end
  local old = redis.call('zrange', key, 0, extra - 1)
  redis.call('zremrangebyrank', key, 0, extra - 1)
  for _, id in ipairs(old) do redis.call('del', JOBP .. id) end
end
"""

# KEYS: record, target (queue list or schedule zset), stats
# ARGV[6..]: id, queue, job, state, message, now, target_score, front, fields...
ENQUEUE = PRELUDE + r"""
local id, queue, job, state, msg = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local now = tonumber(ARGV[11])
if redis.call('exists', KEYS[1]) == 1 then return 0 end
redis.call('hset', KEYS[1], unpack(ARGV, 14))
local entry = {t = now, event = 'enqueued'}
if state == 'delayed' then
  entry.run_at = tonumber(ARGV[12])
  redis.call('zadd', KEYS[2], ARGV[12], msg)
elseif ARGV[13] == '1' then redis.call('rpush', KEYS[2], msg)
else redis.call('lpush', KEYS[2], msg) end
append_timeline(KEYS[1], entry)
move_state(id, queue, nil, state, now)
redis.call('hincrby', KEYS[3], 'enqueued', 1)
emit({type = 'queued', job_id = id, queue = queue, job = job, state = state, t = now})
return 1
"""

# KEYS: record, processing list, queue list, paused set, rate key prefix
# ARGV[6..]: id, queue, job, message, now, rate_limit, worker, default_max_attempts
START = PRELUDE + r"""
local id, queue, job, msg = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local now, limit = tonumber(ARGV[10]), tonumber(ARGV[11])
local function put_back()
  redis.call('lrem', KEYS[2], 1, msg)
  redis.call('rpush', KEYS[3], msg)
end
if redis.call('sismember', KEYS[4], queue) == 1 then put_back() return {'paused', '0'} end
if limit > 0 then
  local window = math.floor(now * limit)
  local rkey = KEYS[5] .. ':' .. window
  local n = redis.call('incr', rkey)
  if n == 1 then redis.call('pexpire', rkey, math.ceil(1000 / limit) + 1000) end
  if n > 1 then
    put_back()
    return {'throttled', tostring(math.ceil(((window + 1) / limit - now) * 1000))}
  end
end
local state = redis.call('hget', KEYS[1], 'state')
if state == 'cancelled' or state == 'completed' or state == 'dead' then
  redis.call('lrem', KEYS[2], 1, msg)
  return {'skip', state}
end
if not state then
  redis.call('hset', KEYS[1], 'id', id, 'queue', queue, 'job', job, 'created_at', now,
    'max_attempts', ARGV[13], 'payload', '{}')
end
local attempts = redis.call('hincrby', KEYS[1], 'attempts', 1)
local max_attempts = tonumber(redis.call('hget', KEYS[1], 'max_attempts') or ARGV[13])
if attempts > max_attempts then return {'exhausted', tostring(attempts - 1)} end
redis.call('hset', KEYS[1], 'state', 'active', 'started_at', now, 'updated_at', now,
  'worker', ARGV[12], 'progress', 0, 'progress_message', '')
move_state(id, queue, state, 'active', now)
append_timeline(KEYS[1], {t = now, event = 'started', attempt = attempts, worker = ARGV[12]})
emit({type = 'started', job_id = id, queue = queue, job = job, state = 'active',
  attempt = attempts, t = now})
return {'run', tostring(attempts)}
"""

# KEYS: record, processing list, stats, target (schedule zset / queue list), dlq record,
#       dlq index, dlq queue index, dlq counts
# ARGV[6..]: id, queue, job, message, now, outcome, body, new message, run_at, keep, attempt,
#            dlq field pairs...
FINISH = PRELUDE + r"""
local id, queue, job, msg = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local now, outcome, body = tonumber(ARGV[10]), ARGV[11], ARGV[12]
local keep, attempt = tonumber(ARGV[15]), tonumber(ARGV[16])
local rec = KEYS[1]
redis.call('lrem', KEYS[2], 1, msg)
local old = redis.call('hget', rec, 'state')
local entry = {t = now, attempt = attempt}
local event = {job_id = id, queue = queue, job = job, attempt = attempt, t = now}
local state
if outcome == 'completed' then
  state = 'completed'
  redis.call('hset', rec, 'result', body, 'progress', 100, 'finished_at', now)
  entry.event = 'completed'
elseif outcome == 'retry' then
  state = 'failed'
  local run_at = tonumber(ARGV[14])
  redis.call('zadd', KEYS[4], run_at, ARGV[13])
  redis.call('hset', rec, 'error', body, 'run_at', run_at)
  entry.event, entry.retry_at, entry.error = 'failed', run_at, cjson.decode(body).message
  event.retry_at = run_at
elseif outcome == 'requeue' then
  state = 'waiting'
  redis.call('rpush', KEYS[4], msg)
  redis.call('hincrby', rec, 'attempts', -1)
  entry.event, entry.detail = 'requeued', body
else
  state = 'dead'
  redis.call('hset', rec, 'error', body, 'finished_at', now)
  entry.event, entry.error = 'dead', cjson.decode(body).message
  if #ARGV > 16 then
    redis.call('hset', KEYS[5], unpack(ARGV, 17))
    redis.call('hsetnx', KEYS[5], 'first_failed_at', now)
    redis.call('zadd', KEYS[6], now, id)
    redis.call('zadd', KEYS[7], now, id)
    redis.call('hincrby', KEYS[8], 'total', 1)
    entry.detail = 'moved to the dead-letter queue'
  else
    entry.detail = 'dropped: this job opts out of the dead-letter queue'
  end
end
redis.call('hset', rec, 'state', state, 'updated_at', now)
move_state(id, queue, old, state, now)
append_timeline(rec, entry)
local counter = {completed = 'completed', failed = 'failed', dead = 'dead', waiting = 'requeued'}
redis.call('hincrby', KEYS[3], counter[state], 1)
local types = {completed = 'completed', failed = 'retrying', dead = 'dead', waiting = 'stalled'}
event.type, event.state = types[state], state
emit(event)
if state == 'completed' then trim(queue, 'completed', keep) end
if state == 'dead' then trim(queue, 'dead', keep) end
return state
"""

# KEYS: processing list, queue list, record
# ARGV[6..]: id, queue, job, message, now, detail
REAP = PRELUDE + r"""
local id, queue, job, msg, now = ARGV[6], ARGV[7], ARGV[8], ARGV[9], tonumber(ARGV[10])
if redis.call('lrem', KEYS[1], 1, msg) == 0 then return 0 end
redis.call('rpush', KEYS[2], msg)
local old = redis.call('hget', KEYS[3], 'state')
if old == 'active' then
  redis.call('hset', KEYS[3], 'state', 'waiting', 'updated_at', now)
  move_state(id, queue, old, 'waiting', now)
end
append_timeline(KEYS[3], {t = now, event = 'stalled', detail = ARGV[11]})
emit({type = 'stalled', job_id = id, queue = queue, job = job, state = 'waiting', t = now,
  detail = ARGV[11]})
return 1
"""

# KEYS: record.  ARGV[6..]: id, queue, job, percent, message, now
PROGRESS = PRELUDE + r"""
redis.call('hset', KEYS[1], 'progress', ARGV[9], 'progress_message', ARGV[10],
  'updated_at', ARGV[11])
emit({type = 'progress', job_id = ARGV[6], queue = ARGV[7], job = ARGV[8],
  progress = tonumber(ARGV[9]), message = ARGV[10], t = tonumber(ARGV[11])})
return 1
"""

# KEYS: due schedule zset, queue list.  ARGV[1]: now, ARGV[2]: batch size
PROMOTE = r"""
local due = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, msg in ipairs(due) do
  if redis.call('zrem', KEYS[1], msg) == 1 then redis.call('lpush', KEYS[2], msg) end
end
return #due
"""

# KEYS: record. ARGV[6..]: id, queue, job, now, event type, detail, new state
# Moves a waiting/delayed/failed job to a new state (used by cancel).
SET_STATE = PRELUDE + r"""
local id, queue, job, now = ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
local old = redis.call('hget', KEYS[1], 'state')
if old ~= 'waiting' and old ~= 'delayed' and old ~= 'failed' then return old or '' end
redis.call('hset', KEYS[1], 'state', ARGV[12], 'updated_at', now)
move_state(id, queue, old, ARGV[12], now)
append_timeline(KEYS[1], {t = now, event = ARGV[10], detail = ARGV[11]})
emit({type = ARGV[10], job_id = id, queue = queue, job = job, state = ARGV[12], t = now})
return 'ok'
"""

SOURCES = {
    "enqueue": ENQUEUE, "start": START, "finish": FINISH, "reap": REAP,
    "progress": PROGRESS, "promote": PROMOTE, "set_state": SET_STATE,
}


class Scripts:
    """The scripts registered on one client; call ``scripts.finish(keys=..., args=...)``."""

    def __init__(self, client: redis.Redis):
        for name, source in SOURCES.items():
            setattr(self, name, client.register_script(source))


@lru_cache(maxsize=8)
def scripts_for(client: redis.Redis) -> Scripts:
    return Scripts(client)
