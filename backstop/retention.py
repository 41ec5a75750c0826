"""Retention: keeping Backstop's own records within their bounds (the scheduled retention job,
``system.index.rebuild`` with target "retention", every 5 minutes: see backstop.schedules).

Most stores bound themselves as they are written: finished job records by their queue's
keep_completed / keep_failed (FINISH trims every 16th outcome), the events stream, the health
log and the inboxes by length, metrics, sessions and confirmations by TTL. What does not is
trimmed here:

- the audit log, to AUDIT_MAX_ENTRIES (audit.trim: the rest of its chain stays checkable);
- the DLQ: records past DLQ_MAX_RECORDS or DLQ_RETENTION_DAYS are archived, then dropped,
  and its capacity alerts are checked (dlq_maintenance.maintain, which every worker used to
  run every 30 s);
- the DLQ's failures-per-hour counts, to DLQ_RETENTION_DAYS;
- the health log (backstop.system_log), to SYSTEM_LOG_DAYS, in Redis and in this host's
  local SQLite file;
- finished job records (completed, dead), exactly to keep_completed / keep_failed (FINISH
  leaves up to 15 over; a lowered keep applies at the next pass);
- cancelled job records, to keep_completed. A cancelled job's message may still sit in its
  queue (workers skip it when they reach it), and a message whose record is gone would run
  as a new job; so they are trimmed only while the queue and its schedule are empty, and
  only those cancelled over an hour ago.
"""

from __future__ import annotations

import time
from functools import lru_cache

import redis

from . import audit, dlq_maintenance, keys, system_log
from .config import settings
from .connection import client
from .contracts import QUEUES, queue_config
from .dlq import hour_bucket
from .hueys import huey_for

CHUNK = 1000
CANCELLED_GRACE = 3600

# KEYS: state index, queue list, queue schedule. ARGV: keep, job prefix, timeline prefix,
# chunk, "1" to trim only while the queue and schedule are empty, newest score to trim.
# Drops the oldest records over keep (at most chunk); returns how many went.
TRIM = """
local keep, jobp, tlp, chunk = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
if ARGV[5] == '1' and (redis.call('llen', KEYS[2]) > 0 or redis.call('zcard', KEYS[3]) > 0) then
  return 0
end
local extra = math.min(redis.call('zcard', KEYS[1]) - keep, chunk)
if extra <= 0 then return 0 end
local old = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[6], 'LIMIT', 0, extra)
for _, id in ipairs(old) do
  redis.call('zrem', KEYS[1], id)
  redis.call('del', jobp .. id, tlp .. id)
end
return #old
"""


def run(r: redis.Redis | None = None, now: float | None = None) -> dict:
    """One retention pass (see the module docstring); returns what it did: audit_trimmed,
    dlq_archived and dlq_alert_level (None when another pass held the DLQ's maintenance
    lock), dlq_hours_dropped, jobs_trimmed (per queue and state, only those over).
    Raises redis.RedisError when Redis fails."""
    r = r or client()
    now = time.time() if now is None else now
    maintained = dlq_maintenance.maintain() or {}
    return {"audit_trimmed": audit.trim(r=r),
            "dlq_archived": maintained.get("archived"),
            "dlq_alert_level": maintained.get("alert_level"),
            "dlq_hours_dropped": trim_dlq_hours(r, now),
            "system_log_trimmed": system_log.trim(now, r),
            "jobs_trimmed": trim_jobs(r, now)}


def trim_dlq_hours(r: redis.Redis, now: float) -> int:
    """Drop the DLQ's per-hour failure counts older than DLQ_RETENTION_DAYS; how many went."""
    cutoff = hour_bucket(now - settings().float("dlq_retention_days") * 86400)
    old = [str(hour) for hour in r.hkeys(keys.dlq_hours()) if str(hour) < cutoff]
    return r.hdel(keys.dlq_hours(), *old) if old else 0


def trim_jobs(r: redis.Redis, now: float) -> dict[str, int]:
    """Trim finished and cancelled job records over their queue's keep (see the module
    docstring); returns {"<queue>.<state>": records dropped} for those that dropped any."""
    dropped = {}
    for queue in QUEUES:
        config = queue_config(queue)
        for state, keep, guarded in (("completed", config.keep_completed, False),
                                     ("dead", config.keep_failed, False),
                                     ("cancelled", config.keep_completed, True)):
            newest = f"({now - CANCELLED_GRACE}" if guarded else "+inf"
            if n := _trim_state(r, queue, state, keep, guarded, newest):
                dropped[f"{queue}.{state}"] = n
    return dropped


def _trim_state(r: redis.Redis, queue: str, state: str, keep: int, guarded: bool,
                newest: str) -> int:
    storage = huey_for(queue).storage
    total = 0
    while True:
        n = _trim_script(r)(keys=[keys.state_index(queue, state), storage.queue_key,
                                  storage.schedule_key],
                            args=[keep, keys.job_prefix(), keys.timeline_prefix(), CHUNK,
                                  "1" if guarded else "0", newest])
        total += n
        if n < CHUNK:
            return total


@lru_cache(maxsize=8)
def _trim_script(r: redis.Redis):
    return r.register_script(TRIM)
