"""GET /health/queues against 48 h of per-minute metrics: the median answer time.

A Redis started here on a free port is filled with 6 queues x their job names (the 19 the
app registers; --all-jobs: all 19 in every queue) x 48 h of minute hashes (and the hourly
roll-ups), shaped as scripts.METRICS writes them, plus waiting jobs, DLQ records and a live
worker heartbeat. Then GET /health/queues with a viewer token, through the Flask test
client, --calls times with the stats cache off (STATS_CACHE_SECONDS=0) and on (3 s). Target:
a median under 50 ms.

    .venv/bin/python bench/health.py [--calls 50] [--hours 48] [--all-jobs]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.throughput import start_redis  # noqa: E402


def job_names(all_jobs: bool) -> dict[str, list[str]]:
    from backstop.contracts import JOBS, QUEUES

    names = sorted(JOBS)
    return {q: names if all_jobs else [n for n in names if JOBS[n].queue == q] for q in QUEUES}


def minute_fields(jobs: list[str], rng: random.Random) -> dict[str, int]:
    """One minute of one queue, as the FINISH script leaves it: per job the outcome counts,
    one runtime and one wait bucket, and the sums in microseconds."""
    from backstop.metrics import fields_for

    fields: dict[str, int] = {}
    for job in jobs:
        ok, retry = rng.randint(1, 40), rng.choice((0, 0, 0, 1, 2))
        runtime, wait = rng.uniform(0.01, 0.4), rng.uniform(0.001, 0.04)
        for outcome, count in (("ok", ok), ("retry", retry)):
            if count:
                for name, value in fields_for(job, outcome, runtime, wait, count).items():
                    fields[name] = fields.get(name, 0) + value
    return fields


def fill(hours: int, all_jobs: bool) -> int:
    """Write the metrics hashes, some waiting jobs and DLQ records; return the hash count."""
    from backstop import keys, metrics, producers
    from backstop.connection import client

    rng, r = random.Random(7), client()
    minute_ttl, hour_ttl = metrics.minute_ttl(), metrics.hour_ttl()
    last, written = metrics.minute_of(time.time()), 0
    for queue, jobs in job_names(all_jobs).items():
        pipe = r.pipeline(transaction=False)
        for minute in range(last - hours * 60 + 1, last + 1):
            pipe.hset(keys.metrics_minute(queue, minute),
                      mapping={**minute_fields(jobs, rng), "backlog": rng.randint(0, 50)})
            pipe.expire(keys.metrics_minute(queue, minute), minute_ttl)
            if minute % 60 == 0:
                hour_key = keys.metrics_hour(queue, minute // 60)
                pipe.hset(hour_key, mapping=minute_fields(jobs, rng))
                pipe.expire(hour_key, hour_ttl)
            written += 1
            if len(pipe) >= 2_000:
                pipe.execute()
        pipe.execute()
    producers.enqueue_many([{"job": "system.health.check", "payload": {}}] * 200)
    return written


def live_worker() -> None:
    from backstop.runner import WorkerProcess

    WorkerProcess().beat()


def median_ms(get, calls: int) -> tuple[float, float]:
    get()  # warm up: the first call compiles scripts, opens connections
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        response = get()
        times.append((time.perf_counter() - began) * 1000)
        assert response.status_code in (200, 503), response.status_code
    return statistics.median(times), max(times)


def measure(app, headers: dict, cache_seconds: str, calls: int) -> tuple[float, float]:
    from backstop import stats
    from backstop.config import settings

    os.environ["STATS_CACHE_SECONDS"] = cache_seconds
    settings.cache_clear()
    stats.forget()
    client = app.test_client()
    return median_ms(lambda: client.get("/health/queues", headers=headers), calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--hours", type=int, default=48)
    parser.add_argument("--all-jobs", action="store_true",
                        help="every job name in every queue's hashes (the worst case)")
    args = parser.parse_args()
    proc, url = start_redis()
    os.environ.update(REDIS_URL=url, COOKIE_SECURE="0", SCHEDULES_ENABLED="0")
    try:
        from app import create_app
        from backstop import tokens
        from backstop.connection import client

        app = create_app()
        began = time.monotonic()
        hashes = fill(args.hours, args.all_jobs)
        live_worker()
        memory = client().info("memory")["used_memory_human"]
        print(f"filled {hashes} minute hashes ({args.hours} h, "
              f"{'19 jobs per queue' if args.all_jobs else 'the 19 jobs over 6 queues'}) "
              f"in {time.monotonic() - began:.1f} s; Redis uses {memory}")
        headers = {"Authorization": f"Bearer {tokens.create('bench', 'viewer')}"}
        for label, seconds in (("cache off (STATS_CACHE_SECONDS=0)", "0"),
                               ("cache on  (STATS_CACHE_SECONDS=3)", "3")):
            median, worst = measure(app, headers, seconds, args.calls)
            print(f"GET /health/queues, {label}: median {median:.2f} ms, "
                  f"max {worst:.2f} ms over {args.calls} calls")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
