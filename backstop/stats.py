"""Read-only numbers for the panel and the API: queue overview, workers, Redis health.

Plain dicts; each function is a bounded number of commands in one or two round trips.
"""

from __future__ import annotations

import json
import threading
import time

from . import keys, metrics
from .config import settings
from .connection import client
from .contracts import QUEUES, queue_configs
from .registry import STATES, counts

# Outcomes of attempts that ran to an end (a requeued attempt was given back unfinished).
PROCESSED = ("completed", "failed", "dead")


def queue_overview() -> list[dict]:
    """One row per queue: counts by state, all-time totals, paused flag, config, and its
    dead letters (records in the DLQ whose last attempt ran on the queue).

    totals: enqueued, completed, failed (attempts retried), dead, requeued, and processed:
    every attempt that ended, in success or failure (Sidekiq's Processed).
    """
    by_queue = counts()
    pipe = client().pipeline(transaction=False)
    pipe.smembers(keys.paused())
    pipe.hmget(keys.dlq_counts(), [f"queue:{q}" for q in QUEUES])
    for queue in QUEUES:
        pipe.hgetall(keys.queue_stats(queue))
    paused, dead_letters, *totals = pipe.execute()
    configs = queue_configs()
    return [{"queue": q, "counts": by_queue[q], "paused": q in paused,
             "totals": _totals(stats), "dead_letters": int(letters or 0),
             "config": configs[q].model_dump()}
            for q, letters, stats in zip(QUEUES, dead_letters, totals, strict=True)]


def _totals(stats: dict) -> dict[str, int]:
    totals = {k: int(v) for k, v in stats.items()}
    totals["processed"] = sum(totals.get(k, 0) for k in PROCESSED)
    return totals


def summary(rows: list[dict]) -> dict[str, int]:
    """Counts by state over every queue."""
    return {state: sum(row["counts"][state] for row in rows) for state in STATES}


def workers() -> list[dict]:
    """Every worker process that beat recently or is listed: alive ones first.

    Alive means its heartbeat key has not expired: at maxmemory a worker can only renew the
    key's TTL (not rewrite its details or its score), and it is alive all the same.
    """
    listed = client().zrevrange(keys.workers(), 0, 199, withscores=True)
    beats = client().mget([keys.worker(w) for w, _ in listed]) if listed else []
    rows = []
    for (worker_id, last), beat in zip(listed, beats, strict=True):
        info = json.loads(beat) if beat else {"id": worker_id}
        rows.append({**info, "id": worker_id, "last_beat": max(last, info.get("last_beat", 0)),
                     "alive": beat is not None})
    return sorted(rows, key=lambda w: (not w["alive"], -w["last_beat"]))


def redis_health() -> dict:
    """Ping latency, memory, clients, uptime and eviction policy of Redis."""
    started = time.perf_counter()
    client().ping()
    ping_ms = (time.perf_counter() - started) * 1000
    info = client().info()
    return {"ok": True, "ping_ms": round(ping_ms, 2), "version": info.get("redis_version"),
            "used_memory": info.get("used_memory_human"),
            "max_memory": info.get("maxmemory_human"),
            "clients": info.get("connected_clients"),
            "uptime_seconds": info.get("uptime_in_seconds"),
            "eviction_policy": info.get("maxmemory_policy"),
            "aof": bool(info.get("aof_enabled"))}


# ---- monitoring: everything a queue's health is judged from, in one round trip ----
def monitor(now: float | None = None) -> dict:
    """Per queue: counts by state, paused flag, oldest waiting job's age, live workers
    consuming it, DLQ records, and the last 5 minutes of metrics (processed per minute,
    error rate, runtime and wait percentiles, per job name too); and every worker process.

    One pipelined round trip (plus the worker details' MGET). Cached for STATS_CACHE_SECONDS
    in this process, since several parts of a page (and /metrics, /health) read it.
    """
    if now is not None:
        return _monitor(now)
    return cached("monitor", _monitor)


def _monitor(now: float | None = None) -> dict:
    now = time.time() if now is None else now
    r = client()
    reads = [lambda p: _queue_reads(p), lambda p: metrics.recent(p, QUEUES, 5, now)]
    (counts_by_queue, paused, letters, oldest), recent = metrics.read(r, *reads)
    alive = [w for w in workers() if w["alive"]]
    queues = {}
    for queue in QUEUES:
        figures = recent[queue]
        consumers = [w for w in alive if queue in w.get("queues", ())]
        queues[queue] = {
            "queue": queue, "counts": counts_by_queue[queue], "paused": queue in paused,
            "oldest_waiting_age": round(now - oldest[queue], 3) if oldest[queue] else None,
            "workers": len(consumers),
            "threads": sum(_threads(w, queue) for w in consumers),
            "dead_letters": letters[queue], "per_minute": figures["per_minute"],
            **figures["all"].summary(),
            "jobs": {job: f.summary() for job, f in sorted(figures["jobs"].items())}}
    return {"taken_at": now, "queues": queues, "workers": alive}


def _threads(worker: dict, queue: str) -> int:
    return int(worker.get("threads", {}).get(queue, 1))


def _queue_reads(pipe):
    for queue in QUEUES:
        for state in STATES:
            pipe.zcard(keys.state_index(queue, state))
    pipe.smembers(keys.paused())
    pipe.hmget(keys.dlq_counts(), [f"queue:{q}" for q in QUEUES])
    for queue in QUEUES:
        pipe.zrange(keys.state_index(queue, "waiting"), 0, 0, withscores=True)

    def finish(results: list) -> tuple:
        n = len(QUEUES) * len(STATES)
        values = iter(results[:n])
        counts_by_queue = {q: {s: next(values) for s in STATES} for q in QUEUES}
        paused, letters, *firsts = results[n:]
        oldest = {q: (first[0][1] if first else None)
                  for q, first in zip(QUEUES, firsts, strict=True)}
        dead = {q: int(v or 0) for q, v in zip(QUEUES, letters, strict=True)}
        return counts_by_queue, set(paused), dead, oldest

    return finish


_CACHE: dict[str, tuple[float, object]] = {}
_CACHE_LOCK = threading.Lock()


def cached(name: str, compute):
    """compute(), reused for STATS_CACHE_SECONDS by every thread of this process.

    name: the cache entry ("monitor", "health" ...); forget() drops them all.
    """
    ttl = settings().float("stats_cache_seconds")
    with _CACHE_LOCK:
        hit = _CACHE.get(name)
        if hit and time.monotonic() - hit[0] < ttl:
            return hit[1]
    value = compute()
    with _CACHE_LOCK:
        _CACHE[name] = (time.monotonic(), value)
    return value


def forget() -> None:
    """Drop this process's cached stats (after a write this process made: pause, purge ...)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# ---- the health log, as the System page shows it ----
def health_log(limit: int = 20) -> list[dict]:
    """The newest entries the health check job wrote (health.log_entry), newest first, each
    as {t, status, score (None when not given), issues: [{severity, message,
    recommendation}]}; an entry that is not JSON is left out."""
    rows = []
    for raw in client().lrange(keys.health_log(), 0, max(1, limit) - 1):
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict):
            rows.append(_health_entry(entry))
    return rows


def _health_entry(entry: dict) -> dict:
    issues = entry["issues"] if isinstance(entry.get("issues"), list) else []
    return {"t": entry.get("checked_at") or entry.get("t"),
            "status": str(entry.get("status") or "unknown"), "score": entry.get("score"),
            "issues": [{"severity": str(i.get("severity") or ""),
                        "message": str(i.get("message") or i.get("code") or ""),
                        "recommendation": str(i.get("recommendation") or "")}
                       for i in issues if isinstance(i, dict)]}
