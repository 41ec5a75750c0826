"""Lua scripts: every multi-step write that must hold together is one script (DESIGN rule 10).

Index keys are built in Lua from ``keys.state_index_prefix()`` + queue + ":" + state, the same
shape as ``keys.state_index``; job record keys from ``keys.job_prefix()`` + id.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import redis

from .metrics import BOUNDS

if TYPE_CHECKING:
    from redis.commands.core import Script

PRELUDE = r"""
local IDX, JOBP, TLP, STREAM, CHANNEL = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local MAXLEN, DLQ = ARGV[6], ARGV[7]
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

# An enqueue: the hot path, so it takes every key and value ready-made (no prelude) and
# touches each key once. KEYS: record, target (queue list, schedule zset, or a direct run's
# processing list), state index, stats, timeline, events stream. ARGV: events channel, stream
# length, id, message, index score, target score, how ('delay' | 'front' | 'back'), event,
# timeline entry, then the record's fields and values. Only a delayed job's "enqueued" entry
# is stored (it keeps the first run_at); another's is the record's created_at
# (registry.decode_record), so most jobs get a timeline list only once they start.
ENQUEUE = r"""
if redis.call('exists', KEYS[1]) == 1 then return 0 end
redis.call('hset', KEYS[1], unpack(ARGV, 10))
local how = ARGV[7]
if how == 'delay' then
  redis.call('zadd', KEYS[2], ARGV[6], ARGV[4])
  redis.call('rpush', KEYS[5], ARGV[9])
elseif how == 'front' then redis.call('rpush', KEYS[2], ARGV[4])
else redis.call('lpush', KEYS[2], ARGV[4]) end
redis.call('zadd', KEYS[3], ARGV[5], ARGV[3])
redis.call('hincrby', KEYS[4], 'enqueued', 1)
local xid = redis.call('xadd', KEYS[6], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[8])
redis.call('publish', ARGV[1], xid .. ' ' .. ARGV[8])
return 1
"""

# Many enqueues in one script (producers.enqueue_many): per job what ENQUEUE does, but the
# pushes, index entries and counters of the batch are gathered into one command per key.
# KEYS: events stream. ARGV: events channel, stream length, job prefix, index prefix, timeline
# prefix, now, then per job 14 values: id, queue, job, payload, state, max_attempts,
# created_at, run_at ('' = now), priority ('' = 0), message, target list or zset, how,
# event, stats key. Returns how many jobs were new. The batch's events are announced in one
# message on the channel, a line each (live.Hub reads every line).
ENQUEUE_MANY = r"""
local CHANNEL, MAXLEN, JOBP, IDX, TLP, NOW = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local pushes, targets, indexes, counts, announced, added = {}, {}, {}, {}, {}, 0
local function gather(tbl, key)
  local items = tbl[key]
  if not items then items = {} tbl[key] = items end
  return items
end
for i = 7, #ARGV, 14 do
  local id, queue, state, run_at = ARGV[i], ARGV[i + 1], ARGV[i + 4], ARGV[i + 7]
  local rec = JOBP .. id
  if redis.call('exists', rec) == 0 then
    redis.call('hset', rec, 'id', id, 'queue', queue, 'job', ARGV[i + 2], 'payload', ARGV[i + 3],
      'state', state, 'max_attempts', ARGV[i + 5], 'created_at', ARGV[i + 6], 'updated_at', NOW)
    if run_at ~= '' then
      redis.call('hset', rec, 'run_at', run_at)
      redis.call('rpush', TLP .. id,
        '{"t":' .. NOW .. ',"event":"enqueued","run_at":' .. run_at .. '}')
    end
    if ARGV[i + 8] ~= '' then redis.call('hset', rec, 'priority', ARGV[i + 8]) end
    local target, how = ARGV[i + 10], ARGV[i + 11]
    local slot = how .. ' ' .. target
    if not pushes[slot] then targets[#targets + 1] = {how, target, slot} end
    local items = gather(pushes, slot)
    if how == 'delay' then items[#items + 1] = run_at end
    items[#items + 1] = ARGV[i + 9]
    local index = gather(indexes, IDX .. queue .. ':' .. state)
    index[#index + 1] = NOW
    index[#index + 1] = id
    counts[ARGV[i + 13]] = (counts[ARGV[i + 13]] or 0) + 1
    local xid = redis.call('xadd', KEYS[1], 'MAXLEN', '~', MAXLEN, '*', 'e', ARGV[i + 12])
    announced[#announced + 1] = xid .. ' ' .. ARGV[i + 12]
    added = added + 1
  end
end
for _, t in ipairs(targets) do
  local command = t[1] == 'delay' and 'zadd' or t[1] == 'front' and 'rpush' or 'lpush'
  redis.call(command, t[2], unpack(pushes[t[3]]))
end
for key, items in pairs(indexes) do redis.call('zadd', key, unpack(items)) end
for key, n in pairs(counts) do redis.call('hincrby', key, 'enqueued', n) end
if added > 0 then redis.call('publish', CHANNEL, table.concat(announced, '\n')) end
return added
"""

# Messages in queue lists are framed "<job id>\n<job name>\n<signature>\n<payload JSON>"
# (hueys.frame), so this script can start a job without Python decoding the message first. A
# message whose frame is malformed (an id or name outside [A-Za-z0-9_.:@-], no signature line)
# touches no record: it goes to the bad-message list, which the worker drains into the DLQ.
# The signature itself is checked by the worker (the key never reaches Redis).
# KEYS: queue list, processing list, paused set, rate key prefix, bad-message list
# ARGV[8..]: queue, now, rate_limit, worker, default_max_attempts, message ('' = take one),
#            start token, lost limit
# Returns {kind, value, message, lost}: run/exhausted (attempt), skip, paused, throttled (ms),
# empty (nothing queued), bad (a malformed frame, moved aside). lost: how many worker
# processes died while running the job.
# The start token (new per call) is kept in the record while the job runs: FINISH and the
# worker's reconciliation act only for the holder of the token, so a late or repeated delivery
# of START or FINISH changes nothing.
START = PRELUDE + r"""
local queue, now_text = ARGV[8], ARGV[9]
local limit, worker, msg, token = tonumber(ARGV[10]), ARGV[11], ARGV[13], ARGV[14]
local now = tonumber(now_text)
if redis.call('sismember', KEYS[3], queue) == 1 then
  if msg ~= '' then redis.call('lrem', KEYS[2], 1, msg) redis.call('rpush', KEYS[1], msg) end
  return {'paused', '0', '', '0'}
end
if msg == '' then
  msg = redis.call('lmove', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not msg then return {'empty', '0', '', '0'} end
end
local function put_back()
  redis.call('lrem', KEYS[2], 1, msg)
  redis.call('rpush', KEYS[1], msg)
end
local first = string.find(msg, '\n', 1, true)
local second = first and string.find(msg, '\n', first + 1, true)
local third = second and string.find(msg, '\n', second + 1, true)
local id = first and string.sub(msg, 1, first - 1) or ''
local job = second and string.sub(msg, first + 1, second - 1) or ''
if not third or third - second ~= 65 or #id > 200 or #job > 200
    or not string.find(id, '^[%w_.:@%-]+$') or not string.find(job, '^[%w_.:@%-]+$') then
  redis.call('lrem', KEYS[2], 1, msg)
  redis.call('lpush', KEYS[5], msg)
  return {'bad', '0', '', '0'}
end
if limit > 0 then
  local window = math.floor(now * limit)
  local rkey = KEYS[4] .. ':' .. window
  local n = redis.call('incr', rkey)
  if n == 1 then redis.call('pexpire', rkey, math.ceil(1000 / limit) + 1000) end
  if n > 1 then
    put_back()
    return {'throttled', tostring(math.ceil(((window + 1) / limit - now) * 1000)), '', '0'}
  end
end
local rec = JOBP .. id
local cur = redis.call('hmget', rec, 'state', 'attempts', 'max_attempts', 'lost')
local state, lost = cur[1], cur[4] or '0'
if state == 'cancelled' or state == 'completed' or state == 'dead' then
  redis.call('lrem', KEYS[2], 1, msg)
  return {'skip', state, '', '0'}
end
local attempts = tonumber(cur[2] or '0') + 1
if attempts > tonumber(cur[3] or ARGV[12]) or tonumber(lost) >= tonumber(ARGV[15]) then
  redis.call('hset', rec, 'attempts', attempts, 'token', token, 'worker', worker)
  return {'exhausted', tostring(attempts - 1), msg, lost}
end
redis.call('hset', rec, 'state', 'active', 'attempts', attempts, 'started_at', now,
  'updated_at', now, 'worker', worker, 'progress', 0, 'progress_message', '', 'token', token)
if not state then
  redis.call('hset', rec, 'id', id, 'queue', queue, 'job', job, 'created_at', now,
    'max_attempts', ARGV[12], 'payload', '{}')
end
move_state(id, queue, state, 'active', now)
-- ids, job names, queues and worker ids are restricted to [A-Za-z0-9_.:@-]: no escaping needed
redis.call('rpush', TLP .. id, '{"t":' .. now_text .. ',"event":"started","worker":"' ..
  worker .. '","attempt":' .. attempts .. '}')
emit('{"type":"started","job_id":"' .. id .. '","queue":"' .. queue .. '","job":"' .. job ..
  '","state":"active","t":' .. now_text .. ',"attempt":' .. attempts .. '}')
return {'run', tostring(attempts), msg, lost}
"""

# Dead-letter bookkeeping shared by the scripts that write, replay, resolve or delete records.
# Key shapes match keys.dlq_*: rec:<id>, idx, by:<dim>:<value>, counts, hours, fp:<fp>,
# fp:<fp>:hours, fps, lineage:<id>. Counters are kept at write time so analytics stay O(1).
DLQ_FUNCS = r"""
local FIELDS = {'queue', 'job', 'error_type', 'fingerprint', 'code', 'reason', 'status',
  'replay_count', 'first_failed_at', 'last_failed_at', 'current_attempt'}
local DIMS = {{'queue', 'queue'}, {'job', 'job'}, {'type', 'error_type'}, {'fp', 'fingerprint'}}
local function count(field, by) redis.call('hincrby', DLQ .. 'counts', field, by) end
local function bucket(n)
  n = tonumber(n) or 0
  if n == 0 then return 'never' elseif n == 1 then return 'once'
  elseif n < MAX_REPLAYS then return 'several' end
  return 'limit'
end
local function load(id)
  local v = redis.call('hmget', DLQ .. 'rec:' .. id, unpack(FIELDS))
  if not v[1] then return nil end
  local r = {}
  for i, f in ipairs(FIELDS) do r[f] = v[i] or '' end
  return r
end
local function index_record(id, r, score, sign)
  for _, dim in ipairs(DIMS) do
    local key = DLQ .. 'by:' .. dim[1] .. ':' .. r[dim[2]]
    if sign > 0 then redis.call('zadd', key, score, id) else redis.call('zrem', key, id) end
    count(dim[1] .. ':' .. r[dim[2]], sign)
  end
  if sign > 0 then redis.call('zadd', DLQ .. 'idx', score, id)
  else redis.call('zrem', DLQ .. 'idx', id) end
  count('code:' .. r.code, sign)
  count('reason:' .. r.reason, sign)
  count('status:' .. r.status, sign)
  count('replays:' .. bucket(r.replay_count), sign)
  count('total', sign)
  redis.call('hincrbyfloat', DLQ .. 'counts', 'first_failed_sum',
    sign * tonumber(r.first_failed_at))
  local n = redis.call('hincrby', DLQ .. 'fp:' .. r.fingerprint, 'count', sign)
  redis.call('zadd', DLQ .. 'fps', n, r.fingerprint)
end
local function cleanup_fingerprint(fp)
  local n = tonumber(redis.call('hget', DLQ .. 'fp:' .. fp, 'count') or '0')
  if n <= 0 then
    redis.call('del', DLQ .. 'fp:' .. fp, DLQ .. 'fp:' .. fp .. ':hours')
    redis.call('zrem', DLQ .. 'fps', fp)
  end
end
local function set_status(id, r, status)
  count('status:' .. r.status, -1)
  count('status:' .. status, 1)
  redis.call('hset', DLQ .. 'rec:' .. id, 'status', status)
end
local function lineage_outcome(dlq_id, attempt_id, outcome, now)
  local key = DLQ .. 'lineage:' .. dlq_id
  local raw = redis.call('hget', key, attempt_id)
  if raw then
    local item = cjson.decode(raw)
    item.outcome, item.finished_at = outcome, now
    redis.call('hset', key, attempt_id, cjson.encode(item))
  end
end
-- Write (or, for a replay that failed again, update) a record from ARGV pairs at `from`.
-- first_failed: when the job's first attempt failed (a new record's first_failed_at).
local function dlq_upsert(id, hour, from, now, first_failed)
  local old = load(id)
  local first = tonumber(first_failed) or now
  if old then
    index_record(id, old, 0, -1)
    first = tonumber(old.first_failed_at) or first
  end
  local key = DLQ .. 'rec:' .. id
  redis.call('hset', key, unpack(ARGV, from))
  redis.call('hset', key, 'first_failed_at', first, 'last_failed_at', now, 'status', 'open')
  local r = load(id)
  index_record(id, r, now, 1)
  if old and old.fingerprint ~= r.fingerprint then cleanup_fingerprint(old.fingerprint) end
  redis.call('hincrby', DLQ .. 'hours', hour, 1)
  local fp = DLQ .. 'fp:' .. r.fingerprint
  redis.call('hsetnx', fp, 'first_seen', now)
  redis.call('hset', fp, 'last_seen', now, 'error_type', r.error_type, 'reason', r.reason,
    'queue', r.queue, 'job', r.job)
  redis.call('hsetnx', fp, 'sample_id', id)
  redis.call('hincrby', fp .. ':hours', hour, 1)
  redis.call('expire', fp .. ':hours', 49 * 3600)
end
local function dlq_delete(id)
  local r = load(id)
  if not r then return 0 end
  index_record(id, r, 0, -1)
  cleanup_fingerprint(r.fingerprint)
  redis.call('del', DLQ .. 'rec:' .. id, DLQ .. 'lineage:' .. id)
  return 1
end
""".replace("MAX_REPLAYS", "5")

# Metrics of every attempt that ran to an end, written by FINISH beside the outcome (no extra
# round trip). Per queue and minute, a hash with fields
#   <job>|<outcome>|<r>|<w>: attempts with that outcome (ok, retry, dead) whose runtime fell in
#     bucket r and whose wait fell in bucket w of metrics.BOUNDS (from 1; #BOUNDS+1 = above
#     all): one HINCRBY counts the outcome and both histograms (metrics.parse splits them);
#   <job>|rs, <job>|ws: the runtime and wait sums in microseconds.
# And the same under <queue>|<job>|... in one never-trimmed total hash (the Prometheus
# counters). Wait: from when the job became due (enqueued, or its delay or retry ran out) to
# its start; runtime: from its start to this outcome. Hourly roll-ups are made from the minute
# hashes by the hourly analytics job (metrics.roll_up_hours), off the hot path. Six calls per
# attempt: per call, not per byte, is what a script pays for.
METRICS = r"""
local BOUNDS = {BOUNDS_LIST}
local function bucket_of(seconds)
  for i, bound in ipairs(BOUNDS) do if seconds <= bound then return i end end
  return #BOUNDS + 1
end
local function count_into(key, f, combo, rus, wus)
  local first = redis.call('hincrby', key, f .. combo, 1) == 1
  redis.call('hincrby', key, f .. 'rs', rus)
  redis.call('hincrby', key, f .. 'ws', wus)
  return first
end
local function record_metrics(prefix, queue, job, outcome, runtime, wait, now, ttl)
  runtime, wait = math.max(runtime, 0), math.max(wait, 0)
  local combo = outcome .. '|' .. bucket_of(runtime) .. '|' .. bucket_of(wait)
  local rus, wus = math.floor(runtime * 1e6 + 0.5), math.floor(wait * 1e6 + 0.5)
  local key = prefix .. 'm:' .. queue .. ':' .. math.floor(now / 60)
  -- a combination new in this minute (re)sets the TTL: the first write of the hash among them
  if count_into(key, job .. '|', combo, rus, wus) then redis.call('expire', key, ttl) end
  count_into(prefix .. 'total', queue .. '|' .. job .. '|', combo, rus, wus)
end
""".replace("BOUNDS_LIST", ", ".join(f"{b:g}" for b in BOUNDS))

# KEYS: record, processing list, stats, target (schedule zset / queue list), timeline
# ARGV[8..]: id, queue, message, now, outcome, body, run_at, keep, timeline entry, event,
#            start token, metrics prefix, minute TTL, then, for a dead job routed to the
#            DLQ: dlq record id, hour, field pairs...
# Returns the new state, or 'stale' when the record no longer holds this start's token (the
# outcome was recorded already, or the job was taken back): then only the message is acked.
FINISH = PRELUDE + DLQ_FUNCS + METRICS + r"""
local id, queue, msg = ARGV[8], ARGV[9], ARGV[10]
local now, outcome, body, keep = tonumber(ARGV[11]), ARGV[12], ARGV[13], tonumber(ARGV[15])
local rec = KEYS[1]
redis.call('lrem', KEYS[2], 1, msg)
local current = redis.call('hmget', rec, 'state', 'dlq_id', 'token', 'job', 'started_at',
  'created_at', 'run_at')
local old, dlq_id = current[1], current[2]
if current[3] ~= ARGV[18] then return 'stale' end
local started = tonumber(current[5]) or now
local due = math.max(tonumber(current[6]) or started, tonumber(current[7]) or 0)
redis.call('hdel', rec, 'token')
local state
if outcome == 'completed' then
  state = 'completed'
  redis.call('hset', rec, 'state', state, 'updated_at', now, 'result', body, 'progress', 100,
    'finished_at', now)
  if dlq_id then
    local r = load(dlq_id)
    if r and r.current_attempt == id then
      set_status(dlq_id, r, 'resolved')
      redis.call('hset', DLQ .. 'rec:' .. dlq_id, 'resolved_at', now, 'resolved_by', id)
    end
    lineage_outcome(dlq_id, id, 'completed', now)
  end
elseif outcome == 'retry' then
  state = 'failed'
  redis.call('hsetnx', rec, 'first_failed_at', now)
  redis.call('zadd', KEYS[4], ARGV[14], msg)
  redis.call('hset', rec, 'state', state, 'updated_at', now, 'error', body, 'run_at', ARGV[14])
elseif outcome == 'requeue' then
  state = 'waiting'
  redis.call('rpush', KEYS[4], msg)
  redis.call('hincrby', rec, 'attempts', -1)
  redis.call('hset', rec, 'state', state, 'updated_at', now)
else
  state = 'dead'
  redis.call('hsetnx', rec, 'first_failed_at', now)
  redis.call('hset', rec, 'state', state, 'updated_at', now, 'error', body, 'finished_at', now)
  if #ARGV > 20 then
    dlq_upsert(ARGV[21], ARGV[22], 23, now, redis.call('hget', rec, 'first_failed_at'))
  end
  if dlq_id then lineage_outcome(dlq_id, id, 'dead', now) end
end
move_state(id, queue, old, state, now)
redis.call('rpush', KEYS[5], ARGV[16])
local counter = {completed = 'completed', failed = 'failed', dead = 'dead', waiting = 'requeued'}
local total = redis.call('hincrby', KEYS[3], counter[state], 1)
if outcome ~= 'requeue' then
  local kind = ({completed = 'ok', retry = 'retry', dead = 'dead'})[outcome]
  record_metrics(ARGV[19], queue, current[4] or 'unknown', kind, now - started, started - due,
    now, ARGV[20])
end
emit(ARGV[17])
-- Retention is enforced in batches: every 16th completion (or death) trims the index.
if total % 16 == 0 and (state == 'completed' or state == 'dead') then trim(queue, state, keep) end
return state
"""

# KEYS: new job record, target queue list, target queue stats, new timeline
# ARGV[8..]: dlq id, attempt id, queue, message, now, event, timeline entry, lineage entry,
#            job record field pairs...
DLQ_REPLAY = PRELUDE + DLQ_FUNCS + r"""
local dlq_id, attempt, queue, msg = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local now = tonumber(ARGV[12])
local r = load(dlq_id)
if not r then return {'missing', ''} end
if r.status == 'resolved' then return {'resolved', r.current_attempt} end
if r.status == 'replaying' and r.current_attempt ~= '' then
  local st = redis.call('hget', JOBP .. r.current_attempt, 'state')
  if st and st ~= 'cancelled' and st ~= 'dead' then return {'busy', r.current_attempt} end
end
local n = tonumber(r.replay_count) or 0
if n >= MAX_REPLAYS then return {'limit', tostring(n)} end
if redis.call('exists', KEYS[1]) == 1 then return {'busy', attempt} end
count('replays:' .. bucket(n), -1)
count('replays:' .. bucket(n + 1), 1)
set_status(dlq_id, r, 'replaying')
redis.call('hset', DLQ .. 'rec:' .. dlq_id, 'replay_count', n + 1, 'last_replayed_at', now,
  'current_attempt', attempt)
redis.call('hset', DLQ .. 'lineage:' .. dlq_id, attempt, ARGV[15])
redis.call('hset', KEYS[1], unpack(ARGV, 16))
redis.call('lpush', KEYS[2], msg)
redis.call('zadd', idx(queue, 'waiting'), now, attempt)
redis.call('hincrby', KEYS[3], 'enqueued', 1)
redis.call('rpush', KEYS[4], ARGV[14])
emit(ARGV[13])
return {'ok', tostring(n + 1)}
""".replace("MAX_REPLAYS", "5")

# ARGV[8..]: record id, failed-at time, hour, field pairs... (imports and restores)
DLQ_WRITE = PRELUDE + DLQ_FUNCS + r"""
dlq_upsert(ARGV[8], ARGV[10], 11, tonumber(ARGV[9]))
return 1
"""

# ARGV[8..]: ids whose records are indexed again (repair). Returns how many exist.
DLQ_REINDEX = PRELUDE + DLQ_FUNCS + r"""
local n = 0
for i = 8, #ARGV do
  local r = load(ARGV[i])
  if r then
    local last = tonumber(r.last_failed_at) or 0
    index_record(ARGV[i], r, last, 1)
    local fp = DLQ .. 'fp:' .. r.fingerprint
    local first = tonumber(redis.call('hget', fp, 'first_seen') or last)
    local seen = tonumber(redis.call('hget', fp, 'last_seen') or 0)
    redis.call('hset', fp, 'first_seen', math.min(first, tonumber(r.first_failed_at) or last),
      'last_seen', math.max(seen, last), 'error_type', r.error_type, 'reason', r.reason,
      'queue', r.queue, 'job', r.job)
    redis.call('hsetnx', fp, 'sample_id', ARGV[i])
    n = n + 1
  end
end
return n
"""

# ARGV[8..]: ids to delete. Returns how many existed.
DLQ_DELETE = PRELUDE + DLQ_FUNCS + r"""
local deleted = 0
for i = 8, #ARGV do deleted = deleted + dlq_delete(ARGV[i]) end
return deleted
"""

# Returns a message from a processing list to the front of its queue: a dead worker's (the
# reaper) or one that no thread of a live worker holds (reconciliation).
# KEYS: processing list, queue list, record, timeline
# ARGV[8..]: id, queue, message, now, worker, ran token, died ('1': the worker died),
#            timeline entry, event
# A job the worker was running goes back to waiting. Its attempt is given back unless the
# handler ran under the ran token; a death also counts towards the job's 'lost' (suspects run
# isolated next time: backstop.isolation).
STRAY = PRELUDE + r"""
local id, queue, msg, now = ARGV[8], ARGV[9], ARGV[10], tonumber(ARGV[11])
if redis.call('lrem', KEYS[1], 1, msg) == 0 then return 0 end
redis.call('rpush', KEYS[2], msg)
local cur = redis.call('hmget', KEYS[3], 'state', 'worker', 'token')
if cur[1] == 'active' and cur[2] == ARGV[12] then
  if cur[3] ~= ARGV[13] then redis.call('hincrby', KEYS[3], 'attempts', -1) end
  if ARGV[14] == '1' then redis.call('hincrby', KEYS[3], 'lost', 1) end
  redis.call('hset', KEYS[3], 'state', 'waiting', 'updated_at', now)
  redis.call('hdel', KEYS[3], 'token')
  move_state(id, queue, 'active', 'waiting', now)
end
redis.call('rpush', KEYS[4], ARGV[15])
emit(ARGV[16])
return 1
"""

# KEYS: record.  ARGV[8..]: percent, message, now, event
PROGRESS = PRELUDE + r"""
redis.call('hset', KEYS[1], 'progress', ARGV[8], 'progress_message', ARGV[9],
  'updated_at', ARGV[10])
emit(ARGV[11])
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

# KEYS: record, timeline. ARGV[8..]: id, queue, now, new state, timeline entry, event
# Moves a job that has not started (waiting, delayed, failed) to a new state (cancel).
SET_STATE = PRELUDE + r"""
local id, queue, now = ARGV[8], ARGV[9], tonumber(ARGV[10])
local old = redis.call('hget', KEYS[1], 'state')
if old ~= 'waiting' and old ~= 'delayed' and old ~= 'failed' then return old or '' end
redis.call('hset', KEYS[1], 'state', ARGV[11], 'updated_at', now)
move_state(id, queue, old, ARGV[11], now)
redis.call('rpush', KEYS[2], ARGV[12])
emit(ARGV[13])
return 'ok'
"""

# KEYS: record, timeline, queue list, queue schedule. ARGV[8..]: id, queue
# Deletes a finished job's record, timeline and index entry: completed or dead, or cancelled
# while its queue and schedule hold no message (a cancelled job's message may still wait
# there, and one whose record is gone would run as a new job). Returns 'deleted', 'missing',
# 'queued' (cancelled, messages still queued) or the state that forbids it.
DELETE_JOB = PRELUDE + r"""
local id, queue = ARGV[8], ARGV[9]
local state = redis.call('hget', KEYS[1], 'state')
if not state then return 'missing' end
if state ~= 'completed' and state ~= 'dead' and state ~= 'cancelled' then return state end
if state == 'cancelled' and (redis.call('llen', KEYS[3]) > 0
    or redis.call('zcard', KEYS[4]) > 0) then
  return 'queued'
end
redis.call('zrem', idx(queue, state), id)
redis.call('del', KEYS[1], KEYS[2])
return 'deleted'
"""

SOURCES = {
    "enqueue": ENQUEUE, "enqueue_many": ENQUEUE_MANY, "start": START, "finish": FINISH,
    "stray": STRAY, "progress": PROGRESS, "promote": PROMOTE, "set_state": SET_STATE,
    "dlq_replay": DLQ_REPLAY, "dlq_delete": DLQ_DELETE, "dlq_reindex": DLQ_REINDEX,
    "dlq_write": DLQ_WRITE, "delete_job": DELETE_JOB,
}


class Scripts:
    """The scripts registered on one client; call ``scripts.finish(keys=..., args=...)``."""

    def __init__(self, client: redis.Redis):
        for name, source in SOURCES.items():
            setattr(self, name, client.register_script(source))

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Script: ...  # one per SOURCES entry


@lru_cache(maxsize=8)
def scripts_for(client: redis.Redis) -> Scripts:
    return Scripts(client)
