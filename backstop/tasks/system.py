"""System jobs: cache invalidation, index repair and the recorded health check.

Cache invalidation and index rebuild walk key ranges with SCAN (never KEYS): they are
maintenance jobs, not hot paths. The index rebuild is a repair tool: run it with the queues
quiet (paused), since jobs changing state during the rebuild can be indexed twice.
"""

from __future__ import annotations

import json
import time

import redis

from .. import dlq_maintenance, keys, retention
from ..config import settings
from ..contracts import QUEUES, SystemCacheInvalidate, SystemHealthCheck, SystemIndexRebuild
from ..errors import PermanentFailure
from ..jobs import JobContext, handler
from ..registry import STATES
from ..scanning import chunks, scan_prefix

HEALTH_LOG_LIMIT = 1_000
SLOW_PING_MS = 100.0
MEMORY_HIGH = 0.9
SEVERITY = {"healthy": 0, "warning": 1, "critical": 2}


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
def _ping_ms(r: redis.Redis) -> float:
    started = time.perf_counter()
    r.ping()
    return round((time.perf_counter() - started) * 1000, 2)


def _read_health(r: redis.Redis) -> tuple[dict, int, dict]:
    pipe = r.pipeline(transaction=False)
    for section in ("memory", "clients", "server"):
        pipe.info(section)
    since = time.time() - settings().float("worker_heartbeat_ttl")
    pipe.zcount(keys.workers(), since, "+inf")
    for queue in QUEUES:
        pipe.zcard(keys.state_index(queue, "waiting"))
    memory, clients, server, alive, *backlog = pipe.execute()
    return {**memory, **clients, **server}, alive, dict(zip(QUEUES, backlog, strict=True))


def _redis_summary(info: dict, ping_ms: float) -> dict:
    return {"ping_ms": ping_ms, "version": info.get("redis_version"),
            "used_memory": info.get("used_memory"),
            "used_memory_human": info.get("used_memory_human"),
            "maxmemory": info.get("maxmemory", 0),
            "maxmemory_policy": info.get("maxmemory_policy"),
            "connected_clients": info.get("connected_clients"),
            "uptime_seconds": info.get("uptime_in_seconds")}


def _issue(severity: str, code: str, message: str, recommendation: str) -> dict:
    return {"severity": severity, "code": code, "message": message,
            "recommendation": recommendation}


def find_issues(redis_info: dict, workers_alive: int) -> list[dict]:
    """The problems in a health reading, each with a severity and a recommendation."""
    issues = []
    if workers_alive == 0:
        ttl = settings().worker_heartbeat_ttl
        issues.append(_issue(
            "critical", "no_workers", f"0 workers alive: none has beaten in the last {ttl} s",
            "Start workers (python worker.py) and check their logs and their REDIS_URL."))
    if redis_info["ping_ms"] > SLOW_PING_MS:
        issues.append(_issue(
            "warning", "slow_redis", f"Redis answered PING in {redis_info['ping_ms']} ms",
            "Check the Redis host's load and the network; keep Redis close to the workers."))
    issues += _memory_issues(redis_info)
    return issues


def _memory_issues(redis_info: dict) -> list[dict]:
    issues = []
    policy = redis_info["maxmemory_policy"]
    if policy != "noeviction":
        issues.append(_issue(
            "warning", "eviction_policy", f"Redis maxmemory-policy is {policy}",
            "Set maxmemory-policy noeviction: eviction can silently delete jobs and records."))
    used, limit = redis_info["used_memory"] or 0, redis_info["maxmemory"] or 0
    if limit and used / limit >= MEMORY_HIGH:
        issues.append(_issue(
            "warning", "memory_high", f"Redis uses {used / limit:.0%} of maxmemory",
            "Raise maxmemory, or lower the retention of completed/failed jobs and the DLQ."))
    return issues


def assess(r: redis.Redis) -> dict:
    """Read Redis, workers and backlog and judge them: healthy, warning or critical."""
    ping_ms = _ping_ms(r)
    info, alive, backlog = _read_health(r)
    redis_info = _redis_summary(info, ping_ms)
    issues = find_issues(redis_info, alive)
    status = max((i["severity"] for i in issues), key=SEVERITY.get, default="healthy")
    return {"status": status, "checked_at": time.time(), "redis": redis_info,
            "workers": {"alive": alive}, "backlog": backlog, "issues": issues}


@handler("system.health.check")
def health_check(payload: SystemHealthCheck, ctx: JobContext) -> dict:
    """Assess health, append it to the health log (last 1000 kept) and return it."""
    assessment = assess(ctx.redis)
    pipe = ctx.redis.pipeline()
    pipe.lpush(keys.health_log(), json.dumps(assessment))
    pipe.ltrim(keys.health_log(), 0, HEALTH_LOG_LIMIT - 1)
    pipe.execute()
    return assessment
