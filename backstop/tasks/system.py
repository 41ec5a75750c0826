"""System jobs: cache invalidation, index repair and the recorded health check.

Cache invalidation and index rebuild walk key ranges with SCAN (never KEYS): they are
maintenance jobs, not hot paths. The index rebuild is a repair tool: run it with the queues
quiet (paused), since jobs changing state during the rebuild can be indexed twice.
"""

from __future__ import annotations

import json
import time

import redis

from .. import dlq_maintenance, health, keys, metrics, retention, system_log
from ..contracts import QUEUES, SystemCacheInvalidate, SystemHealthCheck, SystemIndexRebuild
from ..errors import PermanentFailure
from ..jobs import JobContext, handler
from ..registry import STATES
from ..scanning import chunks, scan_prefix

HEALTH_LOG_LIMIT = 1_000


def invalidate_all(r: redis.Redis) -> int:
    """Unlink every key under ``keys.cache_prefix()``; return how many went."""
    deleted = 0
    for batch in chunks(scan_prefix(r, keys.cache_prefix())):
        deleted += r.unlink(*batch)
    return deleted


@handler("system.cache.invalidate")
def cache_invalidate(payload: SystemCacheInvalidate, ctx: JobContext) -> dict:
    """Delete the named cache entries, or every one with ``all``."""
    if payload.all:
        return {"deleted": invalidate_all(ctx.redis), "all": True}
    if not payload.names:
        raise PermanentFailure("nothing to invalidate: give cache names or all=true",
                               code="nothing_to_do")
    names = sorted(set(payload.names))
    return {"deleted": ctx.redis.unlink(*(keys.cache(n) for n in names)), "names": names}


# ---- index rebuild ----
def _index_keys() -> list[str]:
    return [keys.state_index(queue, state) for queue in QUEUES for state in STATES]


def _read_records(r: redis.Redis, record_keys: list[str]) -> list[tuple]:
    pipe = r.pipeline(transaction=False)
    for key in record_keys:
        pipe.hmget(key, "id", "queue", "state", "updated_at")
    prefix, rows = len(keys.job_prefix()), pipe.execute()
    return [(job_id or key[prefix:], queue, state, updated_at)
            for key, (job_id, queue, state, updated_at) in zip(record_keys, rows, strict=True)]


def _score(value: str | None) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _index_batch(r: redis.Redis, records: list[tuple], counts: dict) -> int:
    pipe, skipped = r.pipeline(transaction=False), 0
    for job_id, queue, state, updated_at in records:
        score = _score(updated_at)
        if queue not in QUEUES or state not in STATES or score is None:
            skipped += 1
            continue
        pipe.zadd(keys.state_index(queue, state), {job_id: score})
        counts[state] += 1
    pipe.execute()
    return skipped


def rebuild_indexes(r: redis.Redis) -> dict:
    """Drop every state index and rebuild it from the job records, 500 records a round trip.

    Records without a known queue, state or numeric updated_at are skipped and counted.
    """
    r.unlink(*_index_keys())
    counts, skipped = {state: 0 for state in STATES}, 0
    for batch in chunks(scan_prefix(r, keys.job_prefix(), "hash")):
        skipped += _index_batch(r, _read_records(r, batch), counts)
    return {"indexed": sum(counts.values()), "by_state": counts, "skipped": skipped}


@handler("system.index.rebuild")
def index_rebuild(payload: SystemIndexRebuild, ctx: JobContext) -> dict:
    """Rebuild the job state indexes and/or the DLQ's indexes and counters from the records;
    target "retention": one retention pass instead (the scheduled maintenance job)."""
    if payload.target == "retention":
        return {"retention": retention.run(ctx.redis)}
    done = {}
    if payload.target in ("jobs", "all"):
        done["jobs"] = rebuild_indexes(ctx.redis)
    if payload.target in ("dlq", "all"):
        done["dlq"] = dlq_maintenance.rebuild()
    return done


# ---- health ----
@handler("system.health.check")
def health_check(payload: SystemHealthCheck, ctx: JobContext) -> dict:
    """Assess health (backstop.health), note each queue's waiting count in this minute's
    metrics (the charts' backlog line, the backlog-growth check), note since when a queue
    paused before pauses were timed is paused, and append the assessment to the health
    checks' log (last 1000 kept); when the overall status changed, say so in the health log
    (backstop.system_log). Returns the check's entry."""
    now = time.time()
    assessment = health.assess(now)
    entry = health.log_entry(assessment)
    pipe = ctx.redis.pipeline()
    pipe.lindex(keys.health_log(), 0)  # the previous check, read in the same step
    for queue, row in assessment["queues"].items():
        metrics.record_backlog(pipe, queue, row["counts"]["waiting"], now)
        if row["paused"] and row["paused_since"] is None:
            pipe.hsetnx(keys.paused_since(), queue, now)
    pipe.lpush(keys.health_log(), json.dumps(entry))
    pipe.ltrim(keys.health_log(), 0, HEALTH_LOG_LIMIT - 1)
    previous = pipe.execute()[0]
    log_status_change(previous_status(previous), entry)
    return entry


STATUS_LEVELS = {"healthy": "INFO", "degraded": "WARNING", "unhealthy": "ERROR"}


def previous_status(raw: str | None) -> str:
    """The status of the check before (healthy when there was none, or it is unreadable)."""
    try:
        status = json.loads(raw).get("status") if raw else None
    except (ValueError, AttributeError):
        status = None
    return status if status in STATUS_LEVELS else "healthy"


def log_status_change(previous: str, entry: dict) -> None:
    """A health-log entry when the overall status changed: WARNING for degraded, ERROR for
    unhealthy, INFO back to healthy, naming the issues."""
    status = entry["status"]
    if status == previous or status not in STATUS_LEVELS:
        return
    issues = [issue.get("message") or issue.get("code") for issue in entry["issues"]]
    reasons = f": {'; '.join(map(str, issues[:3]))}" if issues else ""
    system_log.write(STATUS_LEVELS[status],
                     f"Health changed from {previous} to {status} (score {entry['score']})"
                     f"{reasons}", previous=previous, status=status, score=entry["score"],
                     issues=[issue.get("code") for issue in entry["issues"]])
