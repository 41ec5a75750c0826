"""Read-only numbers for the panel and the API: queue overview, workers, Redis health.

Plain dicts; each function is a bounded number of commands in one or two round trips.
"""

from __future__ import annotations

import json
import time

from . import keys
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
