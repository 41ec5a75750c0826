"""How long GET /metrics (and GET /health/queues, when the app has it) takes on a full store.

A Redis started here on a free port is filled as 48 hours of production would leave it: 6
queues and the 19 job names of the contracts, each on its queue (--every-queue puts every
name on every queue: 114 pairs, six times the series, a stress case); a minute hash per queue
for each of the 48 x 60 minutes and an hour hash for each hour (fields as
scripts.METRICS writes them, via metrics.fields_for); the never-trimmed total hash; some
waiting jobs, DLQ counts and four live workers. Then each endpoint is called through the app
(the Flask test client, a viewer token) and the median of --calls calls is printed, with the
stats cache on (STATS_CACHE_SECONDS=3) and off (0). Target: /metrics under 50 ms (median).

A Prometheus scraping every 15 s finds the 3-second cache cold (unless a page or /health read
the stats just before): the "off" figure is what a scrape usually costs.

    .venv/bin/python bench/monitoring.py [--calls 50] [--every-queue]
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

HOURS = 48
WAITING = 200  # waiting jobs per queue (they only count: ZCARD and the oldest one)


def job_names(every_queue: bool) -> dict[str, list[str]]:
    """{queue: [job, ...]}: the 19 contract jobs on their own queues, or on every queue."""
    from backstop.contracts import JOBS, QUEUES

    if not every_queue:
        return {q: [n for n, s in JOBS.items() if s.queue == q] for q in QUEUES}
    names = [n for n in JOBS if n.split(".")[0] in QUEUES]
    return {q: list(names) for q in QUEUES}


def minute_fields(jobs: list[str], rng: random.Random) -> dict[str, int]:
    """One minute of one queue: per job an ok count, a few failures, one runtime and one
    wait bucket and the two sums in microseconds (about what a busy minute writes)."""
    from backstop.metrics import fields_for

    fields: dict[str, int] = {}
    for job in jobs:
        runs = [("ok", rng.randint(1, 40))]
        if rng.random() < 0.2:
            runs.append(("retry", rng.randint(1, 3)))
        for outcome, count in runs:
            runtime, wait = rng.uniform(0.005, 0.9), rng.uniform(0.001, 0.2)
            for name, value in fields_for(job, outcome, runtime, wait, count).items():
                fields[name] = fields.get(name, 0) + value
    return fields


def total_fields(by_queue: dict[str, list[str]], rng: random.Random) -> dict[str, int]:
    """The total hash: every outcome and bucket of every (queue, job) since the start."""
    from backstop.metrics import fields_for

    fields: dict[str, int] = {}
    for queue, jobs in by_queue.items():
        for job in jobs:
            for _ in range(40):  # 40 combinations of outcome, runtime and wait bucket
                outcome = rng.choice(("ok", "ok", "ok", "retry", "dead"))
                runtime, wait = rng.lognormvariate(-3, 1.5), rng.lognormvariate(-5, 2)
                count = rng.randint(10**3, 10**5)
                for name, value in fields_for(job, outcome, runtime, wait, count, queue).items():
                    fields[name] = fields.get(name, 0) + value
    return fields


def fill(r, by_queue: dict[str, list[str]]) -> None:
    """Write the 48 hours of metrics, the totals, waiting jobs, DLQ counts and workers."""
    from backstop import keys
    from backstop.metrics import minute_of

    rng, now = random.Random(10), time.time()
    last, pipe = minute_of(now), r.pipeline(transaction=False)
    for queue, jobs in by_queue.items():
        for minute in range(last - HOURS * 60 + 1, last + 1):
            pipe.hset(keys.metrics_minute(queue, minute), mapping=minute_fields(jobs, rng))
        for hour in range(int(now // 3600) - HOURS + 1, int(now // 3600) + 1):
            pipe.hset(keys.metrics_hour(queue, hour), mapping=minute_fields(jobs, rng))
        pipe.zadd(keys.state_index(queue, "waiting"),
                  {f"{queue}-{i}": now - 60 + i * 0.1 for i in range(WAITING)})
        pipe.hset(keys.dlq_counts(), f"queue:{queue}", rng.randint(0, 500))
        pipe.execute()
    r.hset(keys.metrics_total(), mapping=total_fields(by_queue, rng))
    start_workers(4)


def start_workers(count: int) -> None:
    """Heartbeats of `count` worker processes consuming every queue (beaten once: alive)."""
    from backstop.contracts import QUEUES
    from backstop.runner import WorkerProcess

    for _ in range(count):
        WorkerProcess(QUEUES).beat()


def median_ms(client, path: str, headers: dict, calls: int) -> tuple[float, float]:
    """Median wall time and median CPU time of this process (Redis' own is apart), in ms:
    on a shared machine the wall time swings with the load, the CPU time much less."""
    times, cpu = [], []
    for _ in range(calls):
        began, began_cpu = time.perf_counter(), time.process_time()
        response = client.get(path, headers=headers)
        times.append((time.perf_counter() - began) * 1000)
        cpu.append((time.process_time() - began_cpu) * 1000)
        # /health/queues answers 503 while unhealthy: still a full answer
        assert response.status_code in (200, 503), (path, response.status_code,
                                                    response.text[:200])
    return statistics.median(times), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--every-queue", action="store_true",
                        help="every job name on every queue (default: each on its own)")
    args = parser.parse_args()
    proc, url = start_redis()
    try:
        os.environ.update(REDIS_URL=url, METRICS_PUBLIC="0")
        run(url, args)
    finally:
        proc.terminate()
        proc.wait(10)


def run(url: str, args) -> None:
    import redis

    from app import create_app
    from backstop import config, connection, stats, tokens

    r = redis.Redis.from_url(url)
    by_queue = job_names(args.every_queue)
    began = time.perf_counter()
    fill(r, by_queue)
    pairs = sum(len(j) for j in by_queue.values())
    print(f"filled {len(by_queue)} queues x {pairs} (queue, job) pairs, {HOURS} h of minute "
          f"and hour hashes in {time.perf_counter() - began:.1f} s; "
          f"{r.dbsize()} keys, {r.info('memory')['used_memory_human']}")
    app = create_app()
    client = app.test_client()
    headers = {"Authorization": f"Bearer {tokens.create('bench', 'viewer')}"}
    scrape = client.get("/metrics", headers=headers)
    print(f"/metrics: {len(scrape.data) // 1024} KiB, {scrape.text.count(chr(10))} lines")
    paths = ["/metrics"] + [p for p in ("/health/queues",)
                            if any(rule.rule == p for rule in app.url_map.iter_rules())]
    for cache in ("3", "0"):
        os.environ["STATS_CACHE_SECONDS"] = cache
        config.settings.cache_clear()
        connection.reset()
        stats.forget()
        for path in paths:
            ms, cpu = median_ms(client, path, headers, args.calls)
            print(f"GET {path:16} STATS_CACHE_SECONDS={cache}: median {ms:6.1f} ms "
                  f"(CPU {cpu:5.1f} ms) over {args.calls} calls")
    print(f"load average {' '.join(f'{n:.1f}' for n in os.getloadavg())} "
          f"on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
