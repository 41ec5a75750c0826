"""Lua scripts: every multi-step write that must hold together is one script (DESIGN rule 10).

Index keys are built in Lua from ``keys.state_index_prefix()`` + queue + ":" + state, the same
shape as ``keys.state_index``; job record keys from ``keys.job_prefix()`` + id.
"""

from __future__ import annotations

from functools import lru_cache

import redis

PRELUDE = r"""
local IDX, JOBP, TLP, STREAM, CHANNEL, MAXLEN = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local function idx(queue, state) return IDX .. queue .. ':' .. state end
local function move_state(id, queue, old, new, score)
  if old and old ~= new then redis.call('zrem', idx(queue, old), id) end
  redis.call('zadd', idx(queue, new), score, id)
end
local function emit(body)
  local xid = redis.call('xadd', STREAM, 'MAXLEN', '~', MAXLEN, '*', 'e', body)
  redis.call('publish', CHANNEL, xid .. ' ' .. body)
end
local function trim(queue, state, keep)
  local key = idx(queue, state)
  local extra = redis.call('zcard', key) - keep
  if extra <= 0 then return end
  local old = redis.call('zrange', key, 0, extra - 1)
  redis.call('zremrangebyrank', key, 0, extra - 1)
  for _, id in ipairs(old) do redis.call('del', JOBP .. id, TLP .. id) end
end
"""
# Timeline entries and events arrive as JSON built in Python (registry.entry / registry.event);
# where only Lua knows a value (the attempt number) Python sends the JSON up to that value.
# A job's timeline is a list (RPUSH) beside its record hash.

# KEYS: record, target (queue list or schedule zset), stats, timeline
# ARGV[7..]: id, queue, state, message, now, target_score, front, event, entry, record fields
ENQUEUE = PRELUDE + r"""
local id, queue, state, msg = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
if redis.call('exists', KEYS[1]) == 1 then return 0 end
redis.call('hset', KEYS[1], unpack(ARGV, 16))
if state == 'delayed' then redis.call('zadd', KEYS[2], ARGV[12], msg)
elseif ARGV[13] == '1' then redis.call('rpush', KEYS[2], msg)
else redis.call('lpush', KEYS[2], msg) end
redis.call('zadd', idx(queue, state), ARGV[11], id)
redis.call('hincrby', KEYS[3], 'enqueued', 1)
redis.call('rpush', KEYS[4], ARGV[15])
emit(ARGV[14])
return 1
"""

# KEYS: record, processing list, queue list, paused set, rate key prefix, timeline
# ARGV[7..]: id, queue, job, message, now, rate_limit, worker, default_max_attempts,
#            timeline entry up to the attempt, event up to the attempt
START = PRELUDE + r"""
local id, queue, job, msg = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local now, limit = tonumber(ARGV[11]), tonumber(ARGV[12])
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
local rec = redis.call('hmget', KEYS[1], 'state', 'attempts', 'max_attempts')
local state = rec[1]
if state == 'cancelled' or state == 'completed' or state == 'dead' then
  redis.call('lrem', KEYS[2], 1, msg)
  return {'skip', state}
end
local attempts = tonumber(rec[2] or '0') + 1
if attempts > tonumber(rec[3] or ARGV[14]) then
  redis.call('hset', KEYS[1], 'attempts', attempts)
  return {'exhausted', tostring(attempts - 1)}
end
redis.call('hset', KEYS[1], 'state', 'active', 'attempts', attempts, 'started_at', now,
  'updated_at', now, 'worker', ARGV[13], 'progress', 0, 'progress_message', '')
if not state then
  redis.call('hset', KEYS[1], 'id', id, 'queue', queue, 'job', job, 'created_at', now,
    'max_attempts', ARGV[14], 'payload', '{}')
end
move_state(id, queue, state, 'active', now)
redis.call('rpush', KEYS[6], ARGV[15] .. attempts .. '}')
emit(ARGV[16] .. attempts .. '}')
return {'run', tostring(attempts)}
"""

# KEYS: record, processing list, stats, target (schedule zset / queue list), dlq record,
#       dlq index, dlq queue index, dlq counts, timeline
# ARGV[7..]: id, queue, message, now, outcome, body, run_at, keep, timeline entry, event,
#            dlq field pairs...
FINISH = PRELUDE + r"""
local id, queue, msg = ARGV[7], ARGV[8], ARGV[9]
local now, outcome, body, keep = tonumber(ARGV[10]), ARGV[11], ARGV[12], tonumber(ARGV[14])
local rec = KEYS[1]
redis.call('lrem', KEYS[2], 1, msg)
local old = redis.call('hget', rec, 'state')
local state
if outcome == 'completed' then
  state = 'completed'
  redis.call('hset', rec, 'state', state, 'updated_at', now, 'result', body, 'progress', 100,
    'finished_at', now)
elseif outcome == 'retry' then
  state = 'failed'
  redis.call('zadd', KEYS[4], ARGV[13], msg)
  redis.call('hset', rec, 'state', state, 'updated_at', now, 'error', body, 'run_at', ARGV[13])
elseif outcome == 'requeue' then
  state = 'waiting'
  redis.call('rpush', KEYS[4], msg)
  redis.call('hincrby', rec, 'attempts', -1)
  redis.call('hset', rec, 'state', state, 'updated_at', now)
else
  state = 'dead'
  redis.call('hset', rec, 'state', state, 'updated_at', now, 'error', body, 'finished_at', now)
  if #ARGV > 16 then
    redis.call('hset', KEYS[5], unpack(ARGV, 17))
    redis.call('hsetnx', KEYS[5], 'first_failed_at', now)
    redis.call('zadd', KEYS[6], now, id)
    redis.call('zadd', KEYS[7], now, id)
    redis.call('hincrby', KEYS[8], 'total', 1)
  end
end
move_state(id, queue, old, state, now)
redis.call('rpush', KEYS[9], ARGV[15])
local counter = {completed = 'completed', failed = 'failed', dead = 'dead', waiting = 'requeued'}
local total = redis.call('hincrby', KEYS[3], counter[state], 1)
emit(ARGV[16])
-- Retention is enforced in batches: every 16th completion (or death) trims the index.
if total % 16 == 0 and (state == 'completed' or state == 'dead') then trim(queue, state, keep) end
return state
"""

# KEYS: processing list, queue list, record, timeline
# ARGV[7..]: id, queue, message, now, timeline entry, event
REAP = PRELUDE + r"""
local id, queue, msg, now = ARGV[7], ARGV[8], ARGV[9], tonumber(ARGV[10])
if redis.call('lrem', KEYS[1], 1, msg) == 0 then return 0 end
redis.call('rpush', KEYS[2], msg)
local old = redis.call('hget', KEYS[3], 'state')
if old == 'active' then
  redis.call('hset', KEYS[3], 'state', 'waiting', 'updated_at', now)
  move_state(id, queue, old, 'waiting', now)
end
redis.call('rpush', KEYS[4], ARGV[11])
emit(ARGV[12])
return 1
"""

# KEYS: record.  ARGV[7..]: percent, message, now, event
PROGRESS = PRELUDE + r"""
redis.call('hset', KEYS[1], 'progress', ARGV[7], 'progress_message', ARGV[8],
  'updated_at', ARGV[9])
emit(ARGV[10])
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

# KEYS: record, timeline. ARGV[7..]: id, queue, now, new state, timeline entry, event
# Moves a job that has not started (waiting, delayed, failed) to a new state (cancel).
SET_STATE = PRELUDE + r"""
local id, queue, now = ARGV[7], ARGV[8], tonumber(ARGV[9])
local old = redis.call('hget', KEYS[1], 'state')
if old ~= 'waiting' and old ~= 'delayed' and old ~= 'failed' then return old or '' end
redis.call('hset', KEYS[1], 'state', ARGV[10], 'updated_at', now)
move_state(id, queue, old, ARGV[10], now)
redis.call('rpush', KEYS[2], ARGV[11])
emit(ARGV[12])
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
