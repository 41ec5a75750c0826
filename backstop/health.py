"""Health: a score 0-100 and a status per queue, for Redis and overall, with the issues
found and one recommendation for each.

``assess()`` judges what ``stats.monitor()`` reads (counts, oldest waiting job, live
consumers, the last 5 minutes' figures) plus one more pipelined read for what monitor lacks:
Redis INFO (memory, clients, server, stats), the PING time (its own round trip, so it times
Redis and not a pipeline), stuck jobs (active for longer than their queue's timeout plus a
grace: a ZCOUNT on the active index, which is scored by start time), the backlog the minute
health check recorded 5 minutes ago, when a worker consuming each queue last beat, since
when each paused queue is paused, the newest finished job, and the DLQ's size.

The checks and their thresholds (the HEALTH_* settings):

====================  ======================================================================
code                  warning / critical
====================  ======================================================================
error_rate            failed share of the last 5 minutes' attempts (once there are at least
                      HEALTH_ERROR_RATE_MIN_ATTEMPTS) >= HEALTH_ERROR_RATE_DEGRADED /
                      >= HEALTH_ERROR_RATE_UNHEALTHY
oldest_waiting        oldest waiting job >= HEALTH_OLDEST_WAITING_DEGRADED_SECONDS /
                      >= HEALTH_OLDEST_WAITING_UNHEALTHY_SECONDS
backlog_growth        waiting jobs grew by >= HEALTH_BACKLOG_GROWTH since the backlog
                      recorded ~5 minutes ago, faster than the queue processed jobs / -
stuck_jobs            jobs active past timeout + stuck_grace() / as many as the live
                      consumers' threads (no thread left to work)
no_workers            waiting jobs and no live consumer / for HEALTH_NO_WORKER_SECONDS
                      (counted from the later of: a consumer last beat, the oldest job
                      started waiting)
paused                paused for HEALTH_PAUSED_SECONDS / -
dlq_capacity          DLQ holds >= HEALTH_DLQ_FULL_RATIO of DLQ_MAX_RECORDS / -
redis_memory          used >= HEALTH_REDIS_MEMORY_RATIO of maxmemory / >= maxmemory
eviction_policy       maxmemory-policy is not noeviction / -
redis_latency         PING >= HEALTH_REDIS_SLOW_MS / >= 10 x HEALTH_REDIS_SLOW_MS
redis_unreachable     - / Redis did not answer (assess never raises for Redis errors)
====================  ======================================================================

A paused queue is judged only on its pause, its error rate and its stuck jobs: its jobs wait
and no worker takes them because someone chose so.

Scores: each part (a queue, Redis, the system: the DLQ) starts at 100 and loses WEIGHTS per
issue (a warning 20, a critical issue 50), never below 0. The overall score is the mean of
the weakest part's score and the average part's score: one sick queue pulls it down hard,
several pull it further. Status is the worst issue's: none -> healthy, a warning ->
degraded, a critical issue -> unhealthy (overall too: any unhealthy queue or Redis makes the
whole unhealthy). ``http_status`` answers 200 for healthy and degraded, 503 for unhealthy.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import redis

from . import keys, metrics, stats
from .config import settings
from .connection import client
from .contracts import QUEUES, queue_configs

WEIGHTS = {"warning": 20, "critical": 50}
STATUS_OF = {None: "healthy", "warning": "degraded", "critical": "unhealthy"}
RANK = {None: 0, "warning": 1, "critical": 2}
GROWTH_MINUTES = 5
FINISHED = ("completed", "failed", "dead")


# ---- the assessment ----
def assess(now: float | None = None) -> dict:
    """Judge every queue, Redis and the DLQ; never raises for a Redis error (Redis that does
    not answer is itself the finding: status unhealthy, a redis_unreachable issue).

    now: judge as of this unix time (uncached; tests travel in time with it). Without it the
    assessment is cached for STATS_CACHE_SECONDS in this process (stats.cached).

    Returns {
      "status": "healthy" | "degraded" | "unhealthy", "score": 0-100, "checked_at": unix s,
      "redis": {"status", "score", "reachable", "ping_ms", "version", "used_memory" (bytes),
                "used_memory_human", "peak_memory", "peak_memory_human", "maxmemory" (0: no
                limit), "maxmemory_human", "maxmemory_policy", "clients", "blocked_clients",
                "uptime_seconds", "evicted_keys", "error" (when unreachable), "issues"},
      "queues": {queue: {"queue", "status", "score", "counts" {state: n}, "paused",
                "paused_since", "oldest_waiting_age", "workers", "threads",
                "last_consumer_seen", "stuck", "backlog_before" ({"waiting", "minutes"} or
                None), "dead_letters", "per_minute", "processed", "succeeded", "failed",
                "retried", "dead", "error_rate", "runtime_ms", "wait_ms" ({p50, p95, p99,
                mean, count}), "last_processed_at", "issues"}} (empty when unreachable),
      "workers": the live worker processes (stats.monitor's), "dlq": {"count", "cap",
      "ratio"} or None, "summary": {"queues", "healthy", "degraded", "unhealthy",
      "jobs" {state: n over every queue}},
      "issues": every issue, critical first: {"code", "severity" ("warning" | "critical"),
                "queue" (or None), "message", "recommendation"},
    }
    """
    if now is not None:
        return _assess(now)
    return stats.cached("health", _assess)


def _assess(now: float | None = None) -> dict:
    now = time.time() if now is None else now
    try:
        ping_ms = _ping_ms()
        snapshot = stats.monitor(now)
        extra = metrics.read(client(), lambda pipe: _extra_reads(pipe, now))[0]
    except redis.RedisError as exc:
        return unreachable(now, exc)
    return judge(snapshot, extra, ping_ms, now)


def _ping_ms() -> float:
    started = time.perf_counter()
    client().ping()
    return round((time.perf_counter() - started) * 1000, 2)


def _extra_reads(pipe, now: float):
    configs, grace = queue_configs(), stuck_grace()
    minute = metrics.minute_of(now)
    for section in ("memory", "clients", "server", "stats"):
        pipe.info(section)
    pipe.hgetall(keys.queue_consumers())
    pipe.hgetall(keys.paused_since())
    pipe.zcard(keys.dlq_index())
    for queue in QUEUES:
        pipe.zcount(keys.state_index(queue, "active"), "-inf", now - configs[queue].timeout - grace)
        for back in (GROWTH_MINUTES, GROWTH_MINUTES + 1):
            pipe.hget(keys.metrics_minute(queue, minute - back), "backlog")
        for state in FINISHED:
            pipe.zrevrange(keys.state_index(queue, state), 0, 0, withscores=True)

    def finish(results: list) -> dict:
        memory, clients, server, counters, seen, paused, letters = results[:7]
        per_queue = iter(results[7:])
        queues = {q: _queue_extra(q, [next(per_queue) for _ in range(6)], seen, paused)
                  for q in QUEUES}
        return {"info": {**memory, **clients, **server, **counters}, "dlq_count": letters,
                "queues": queues}

    return finish


def _queue_extra(queue: str, values: list, seen: dict, paused: dict) -> dict:
    stuck, five, six, *finished = values
    backlog = (None if five is None and six is None else
               {"waiting": int(five if five is not None else six),
                "minutes": GROWTH_MINUTES if five is not None else GROWTH_MINUTES + 1})
    last = max((top[0][1] for top in finished if top), default=None)
    return {"stuck": stuck, "backlog_before": backlog, "last_processed_at": last,
            "last_consumer_seen": _number(seen.get(queue)),
            "paused_since": _number(paused.get(queue))}


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def stuck_grace() -> float:
    """Seconds past its queue's timeout after which an active job counts as stuck.

    A live worker interrupts a job at its timeout within 0.1 s; a dead worker's jobs go back
    to their queue once its heartbeat has expired and another worker confirmed it two beats
    later and its reaper ran. Past all of that (and 5 s more), nothing will move the job.
    """
    s = settings()
    return (s.float("worker_heartbeat_ttl") + 2 * s.float("worker_heartbeat_seconds")
            + s.float("worker_reaper_seconds") + 5)


# ---- judging ----
def judge(snapshot: dict, extra: dict, ping_ms: float, now: float) -> dict:
    """The assessment (assess's shape) from a monitor snapshot and the extra reads."""
    queues = {q: _judge_queue(row, extra["queues"][q], now)
              for q, row in snapshot["queues"].items()}
    redis_part = _judge_redis(extra["info"], ping_ms)
    letters = _dlq(extra["dlq_count"])
    system_issues = dlq_issues(letters)
    parts = [*(q["score"] for q in queues.values()), redis_part["score"],
             part_score(system_issues)]
    issues = [*(i for q in queues.values() for i in q["issues"]), *redis_part["issues"],
              *system_issues]
    return {"status": status_of(issues), "score": overall_score(parts), "checked_at": now,
            "redis": redis_part, "queues": queues, "workers": snapshot["workers"],
            "dlq": letters, "summary": _summary(queues), "issues": ordered(issues)}


def _judge_queue(row: dict, extra: dict, now: float) -> dict:
    entry = {key: row[key] for key in (
        "queue", "counts", "paused", "oldest_waiting_age", "workers", "threads",
        "dead_letters", "per_minute", "processed", "succeeded", "failed", "retried", "dead",
        "error_rate", "runtime_ms", "wait_ms")}
    entry.update(extra)
    issues = [i for i in (check(entry, now) for check in QUEUE_CHECKS) if i]
    return {**entry, "status": status_of(issues), "score": part_score(issues),
            "issues": ordered(issues)}


def _judge_redis(info: dict, ping_ms: float) -> dict:
    part = {"reachable": True, "ping_ms": ping_ms, "version": info.get("redis_version"),
            "used_memory": info.get("used_memory", 0),
            "used_memory_human": info.get("used_memory_human"),
            "peak_memory": info.get("used_memory_peak", 0),
            "peak_memory_human": info.get("used_memory_peak_human"),
            "maxmemory": info.get("maxmemory", 0),
            "maxmemory_human": info.get("maxmemory_human"),
            "maxmemory_policy": info.get("maxmemory_policy"),
            "clients": info.get("connected_clients"),
            "blocked_clients": info.get("blocked_clients"),
            "uptime_seconds": info.get("uptime_in_seconds"),
            "evicted_keys": info.get("evicted_keys", 0)}
    issues = redis_issues(part)
    return {**part, "status": status_of(issues), "score": part_score(issues),
            "issues": ordered(issues)}


def _dlq(count: int) -> dict:
    cap = settings().int("dlq_max_records")
    return {"count": count, "cap": cap, "ratio": round(count / cap, 4) if cap else 0.0}


def _summary(queues: dict) -> dict:
    statuses = [q["status"] for q in queues.values()]
    jobs: dict[str, int] = {}
    for q in queues.values():
        for state, n in q["counts"].items():
            jobs[state] = jobs.get(state, 0) + n
    return {"queues": len(queues), **{s: statuses.count(s) for s in STATUS_OF.values()},
            "jobs": jobs}


def unreachable(now: float, exc: Exception) -> dict:
    """The assessment when Redis did not answer (or refused a read): unhealthy, one issue."""
    issue = make_issue("critical", "redis_unreachable", None,
                       f"Redis did not answer: {str(exc)[:200]}",
                       "Check that Redis runs and that REDIS_URL points at it (host, port, "
                       "password, TLS); nothing can be queued or run until it answers.")
    part = {"reachable": False, "error": str(exc)[:200], "status": "unhealthy", "score": 0,
            "issues": [issue]}
    return {"status": "unhealthy", "score": 0, "checked_at": now, "redis": part, "queues": {},
            "workers": [], "dlq": None, "summary": _summary({}), "issues": [issue]}


def make_issue(severity: str, code: str, queue: str | None, message: str,
               recommendation: str) -> dict:
    """One finding: severity "warning" or "critical", queue None for Redis and the system."""
    return {"code": code, "severity": severity, "queue": queue, "message": message,
            "recommendation": recommendation}


def worst(issues: list[dict]) -> str | None:
    """The highest severity among issues (None without any)."""
    return max((i["severity"] for i in issues), key=RANK.__getitem__, default=None)


def status_of(issues: list[dict]) -> str:
    """healthy, degraded or unhealthy: the worst issue's."""
    return STATUS_OF[worst(issues)]


def part_score(issues: list[dict]) -> int:
    """100 less WEIGHTS per issue, never below 0."""
    return max(0, 100 - sum(WEIGHTS[i["severity"]] for i in issues))


def overall_score(parts: list[int]) -> int:
    """The mean of the weakest part's score and the average part's score."""
    return round((min(parts) + sum(parts) / len(parts)) / 2) if parts else 100


def ordered(issues: list[dict]) -> list[dict]:
    """Critical issues first; otherwise in the order they were found."""
    return sorted(issues, key=lambda i: -RANK[i["severity"]])


# ---- the checks: each gives one issue or None ----
def _setting(name: str) -> float:
    return settings().float(name)


def span(seconds: float) -> str:
    """A duration for a message: 45 s, 12 min, 3 h 5 min, 2 d 4 h."""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    minutes, hours = seconds // 60, seconds // 3600
    if hours < 2:
        return f"{minutes} min"
    if hours < 48:
        return f"{hours} h {minutes % 60} min"
    return f"{hours // 24} d {hours % 24} h"


def past(value: float, degraded: str, unhealthy: str) -> str | None:
    """"critical" at or past the unhealthy setting, "warning" past the degraded one."""
    if value >= _setting(unhealthy):
        return "critical"
    return "warning" if value >= _setting(degraded) else None


def error_rate_issue(q: dict, now: float) -> dict | None:
    rate, processed = q["error_rate"], q["processed"]
    if rate is None or processed < _setting("health_error_rate_min_attempts"):
        return None
    severity = past(rate, "health_error_rate_degraded", "health_error_rate_unhealthy")
    if severity is None:
        return None
    name = q["queue"]
    return make_issue(
        severity, "error_rate", name,
        f"{rate:.0%} of {name}'s attempts failed in the last 5 minutes "
        f"({q['failed']} of {processed})",
        f"Look at the newest {name} records in the DLQ and at the failing jobs' errors; fix "
        "the cause (a bad deploy, an upstream that is down), then replay them.")


def oldest_waiting_issue(q: dict, now: float) -> dict | None:
    age = q["oldest_waiting_age"]
    if q["paused"] or age is None:
        return None
    severity = past(age, "health_oldest_waiting_degraded_seconds",
                    "health_oldest_waiting_unhealthy_seconds")
    if severity is None:
        return None
    name = q["queue"]
    return make_issue(
        severity, "oldest_waiting", name,
        f"The oldest of {name}'s {q['counts']['waiting']} waiting jobs has waited {span(age)}",
        f"Add workers or concurrency for {name} (it has {q['threads']} threads), or find out "
        f"why its jobs run slowly (runtime p95 {q['runtime_ms']['p95']} ms) or are throttled "
        "by its rate limit.")


def backlog_growth_issue(q: dict, now: float) -> dict | None:
    before, waiting = q["backlog_before"], q["counts"]["waiting"]
    if q["paused"] or before is None:
        return None
    growth = waiting - before["waiting"]
    per_minute = growth / before["minutes"]
    if growth < _setting("health_backlog_growth") or per_minute <= q["per_minute"]:
        return None
    name = q["queue"]
    return make_issue(
        "warning", "backlog_growth", name,
        f"{name}'s backlog grew from {before['waiting']} to {waiting} waiting jobs in "
        f"{before['minutes']} minutes (+{per_minute:.1f}/min) while it processed "
        f"{q['per_minute']:.1f}/min",
        f"Add workers or concurrency for {name}, or look for a producer enqueuing more than "
        "usual (a loop, a retry storm).")


def stuck_jobs_issue(q: dict, now: float) -> dict | None:
    stuck = q["stuck"]
    if not stuck:
        return None
    name = q["queue"]
    timeout = queue_configs()[name].timeout
    severity = "critical" if q["threads"] and stuck >= q["threads"] else "warning"
    return make_issue(
        severity, "stuck_jobs", name,
        f"{stuck} {name} jobs have been active for more than {span(timeout + stuck_grace())} "
        f"(the queue's timeout is {span(timeout)})",
        "Find them on the Workers page (current jobs): restart the worker holding them (its "
        "jobs go back to the queue); if a job blocks in code that ignores the timeout, run "
        "it isolated; if such jobs are just slow, raise the queue's timeout.")


def no_workers_issue(q: dict, now: float) -> dict | None:
    waiting = q["counts"]["waiting"]
    if q["paused"] or q["workers"] or not waiting:
        return None
    seen, name = q["last_consumer_seen"], q["queue"]
    since = max(seen or 0.0, now - (q["oldest_waiting_age"] or 0.0))
    limit = _setting("health_no_worker_seconds")
    last = f"the last one beat {span(now - seen)} ago" if seen else "none has ever run"
    return make_issue(
        "critical" if now - since >= limit else "warning", "no_workers", name,
        f"{waiting} jobs wait on {name} and no live worker consumes it ({last})",
        f"Start a worker for {name} (python worker.py, or python worker.py --queues {name}) "
        "and read the logs of the workers that stopped (crash, out of memory, lost Redis).")


def paused_issue(q: dict, now: float) -> dict | None:
    since = q["paused_since"]
    if not q["paused"] or since is None or now - since < _setting("health_paused_seconds"):
        return None
    name = q["queue"]
    return make_issue(
        "warning", "paused", name,
        f"{name} has been paused for {span(now - since)}; its {q['counts']['waiting']} "
        "waiting jobs do not run",
        f"Resume {name} on the Queues page once the reason it was paused is gone.")


QUEUE_CHECKS = (no_workers_issue, stuck_jobs_issue, error_rate_issue, oldest_waiting_issue,
                backlog_growth_issue, paused_issue)


def dlq_issues(letters: dict) -> list[dict]:
    """The DLQ near its cap (DLQ_MAX_RECORDS), where the oldest records start to be archived."""
    if not letters["cap"] or letters["ratio"] < _setting("health_dlq_full_ratio"):
        return []
    return [make_issue(
        "warning", "dlq_capacity", None,
        f"The DLQ holds {letters['count']} records, {letters['ratio']:.0%} of its cap "
        f"({letters['cap']}); past the cap the oldest are archived to DLQ_ARCHIVE_DIR",
        "Replay or delete the records you have dealt with (by fingerprint), fix what keeps "
        "failing, or raise DLQ_MAX_RECORDS.")]


def redis_issues(part: dict) -> list[dict]:
    """Latency, memory against maxmemory and the eviction policy of a reachable Redis."""
    found = [_latency_issue(part["ping_ms"]), _memory_issue(part)]
    policy = part["maxmemory_policy"]
    if policy and policy != "noeviction":
        found.append(make_issue(
            "warning", "eviction_policy", None,
            f"Redis maxmemory-policy is {policy} ({part['evicted_keys']} keys evicted so far)",
            "Set maxmemory-policy noeviction (CONFIG SET and redis.conf): any other policy "
            "lets Redis silently delete queued jobs, job records and DLQ records when full."))
    return [i for i in found if i]


def _latency_issue(ping_ms: float) -> dict | None:
    slow = _setting("health_redis_slow_ms")
    if ping_ms < slow:
        return None
    return make_issue(
        "critical" if ping_ms >= 10 * slow else "warning", "redis_latency", None,
        f"Redis answered PING in {ping_ms:.0f} ms",
        "Check the Redis host's CPU, swap and network, and look for slow commands "
        "(SLOWLOG GET); keep Redis close to the workers and the web app.")


def _memory_issue(part: dict) -> dict | None:
    used, limit = part["used_memory"] or 0, part["maxmemory"] or 0
    if not limit or used / limit < _setting("health_redis_memory_ratio"):
        return None
    return make_issue(
        "critical" if used >= limit else "warning", "redis_memory", None,
        f"Redis uses {used / limit:.0%} of its maxmemory ({part['used_memory_human']} of "
        f"{part['maxmemory_human']})",
        "Raise maxmemory, or keep less: fewer finished jobs per queue (keep_completed, "
        "keep_failed), a shorter DLQ_RETENTION_DAYS or METRICS_MINUTE_HOURS.")


# ---- the HTTP answer (GET /health/queues), in the seeds' camelCase shape ----
def http_status(assessment: dict) -> int:
    """200 when healthy or degraded, 503 when unhealthy (for load balancers, uptime checks)."""
    return 503 if assessment["status"] == "unhealthy" else 200


def iso(moment: float | None) -> str | None:
    """A unix time as ISO 8601 UTC with milliseconds (2024-01-15T10:30:00.000Z)."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def brief(assessment: dict) -> dict:
    """What anyone may see: {"status", "timestamp"}."""
    return {"status": assessment["status"], "timestamp": iso(assessment["checked_at"])}


def as_json(assessment: dict) -> dict:
    """The whole assessment in the seeds' JSON shape (status, timestamp, redis, queues[],
    summary, issues) plus score, per queue score and percentiles, and workers."""
    a = assessment
    return {**brief(a), "score": a["score"], "redis": _redis_json(a["redis"]),
            "queues": [_queue_json(q) for q in a["queues"].values()],
            "summary": _summary_json(a["summary"]), "issues": a["issues"],
            "workers": [_worker_json(w) for w in a["workers"]], "dlq": a["dlq"]}


def _redis_json(part: dict) -> dict:
    out = {"status": part["status"], "score": part["score"],
           "connectionStatus": "connected" if part["reachable"] else "disconnected",
           "issues": part["issues"]}
    if not part["reachable"]:
        return {**out, "error": part["error"]}
    return {**out, "responseTime": part["ping_ms"], "version": part["version"],
            "memory": {"used": part["used_memory_human"], "peak": part["peak_memory_human"],
                       "usedBytes": part["used_memory"], "peakBytes": part["peak_memory"],
                       "max": part["maxmemory"], "policy": part["maxmemory_policy"]},
            "clients": part["clients"], "uptime": part["uptime_seconds"],
            "evictedKeys": part["evicted_keys"]}


def _queue_json(q: dict) -> dict:
    counts = q["counts"]
    stats_ = {state: counts[state] for state in ("waiting", "active", "completed", "failed",
                                                 "delayed", "dead")}
    stats_["paused"] = counts["waiting"] if q["paused"] else 0
    return {"queueName": q["queue"], "status": q["status"], "score": q["score"],
            "stats": stats_,
            "details": {"isRunning": bool(q["workers"]) and not q["paused"],
                        "isPaused": q["paused"], "processingCapacity": q["threads"],
                        "workers": q["workers"],
                        "avgProcessingTime": q["runtime_ms"]["mean"],
                        "errorRate": q["error_rate"], "throughput": q["per_minute"],
                        "oldestWaitingAge": q["oldest_waiting_age"], "stuck": q["stuck"],
                        "deadLetters": q["dead_letters"],
                        "pausedSince": iso(q["paused_since"]),
                        "lastJobProcessed": iso(q["last_processed_at"])},
            "percentiles": {"runtime": q["runtime_ms"], "wait": q["wait_ms"]},
            "issues": q["issues"]}


def _summary_json(summary: dict) -> dict:
    return {"totalQueues": summary["queues"], "healthyQueues": summary["healthy"],
            "degradedQueues": summary["degraded"], "unhealthyQueues": summary["unhealthy"],
            "totalJobs": summary["jobs"]}


def _worker_json(w: dict) -> dict:
    current = [{"jobId": c.get("job_id"), "queue": c.get("queue"), "job": c.get("job"),
                "since": iso(c.get("since")), "thread": c.get("thread")}
               for c in w.get("current", ())]
    return {"id": w["id"], "host": w.get("host"), "pid": w.get("pid"),
            "queues": w.get("queues", []), "threads": w.get("threads", {}),
            "current": current, "processed": w.get("processed", 0),
            "failed": w.get("failed", 0), "lastBeat": iso(w.get("last_beat")),
            "startedAt": iso(w.get("started_at"))}


# ---- the minute health check's log entry ----
def log_entry(assessment: dict) -> dict:
    """A compact record of an assessment for the health log (kept 1,000 entries)."""
    a = assessment
    queues = {name: {"status": q["status"], "score": q["score"], "waiting": q["counts"]["waiting"],
                     "active": q["counts"]["active"], "workers": q["workers"],
                     "oldest_waiting_age": q["oldest_waiting_age"],
                     "per_minute": q["per_minute"], "error_rate": q["error_rate"]}
              for name, q in a["queues"].items()}
    part = a["redis"]
    redis_ = {k: part.get(k) for k in ("status", "reachable", "ping_ms", "used_memory",
                                       "maxmemory", "maxmemory_policy", "clients",
                                       "uptime_seconds")}
    return {"status": a["status"], "score": a["score"], "checked_at": a["checked_at"],
            "redis": redis_, "queues": queues, "workers": len(a["workers"]),
            "dlq": a["dlq"], "issues": a["issues"]}
