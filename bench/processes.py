"""Processing rate with several worker processes: Backstop `worker.py --processes P` against
raw Huey's consumer `-k process -w P`, and against one Backstop process with the same number
of consumer threads in all (what the extra processes buy), interleaved rounds, medians.

Every side runs the same no-op job from a queue filled beforehand, with its own Redis started
here. A rate counts the jobs done between 10 % and 90 % of the batch, so process start-up and
the last stragglers count on no side. Backstop's queue is paused until every one of its
processes beats (raw Huey forks its workers from a consumer that has imported everything).

    .venv/bin/python bench/processes.py [--jobs 3000] [--rounds 5] [--processes 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.throughput import start_redis  # noqa: E402

WINDOW = (0.1, 0.9)  # the share of the batch a rate is measured over


def env_for(url: str, threads: int) -> dict:
    queues = json.dumps({"system": {"rate_limit": 0, "concurrency": threads}})
    return {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(ROOT),
            "BACKSTOP_TASK_MODULES": "bench.jobs", "BACKSTOP_QUEUES": queues,
            "SCHEDULES_ENABLED": "0"}


def wait_until(predicate, timeout: float = 120.0) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("benchmark timed out")
        time.sleep(0.005)
    return time.monotonic()


def windowed_rate(done, jobs: int) -> float:
    """Jobs per second between WINDOW[0] and WINDOW[1] of the batch; done() counts jobs
    finished so far."""
    low, high = (round(jobs * share) for share in WINDOW)
    began = wait_until(lambda: done() >= low)
    ended = wait_until(lambda: done() >= high)
    return (high - low) / (ended - began)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def raw_process_round(url: str, client, workers: int, jobs: int = 3000) -> float:
    """Raw Huey's consumer with `workers` processes (-k process): jobs/s."""
    from bench.jobs import raw_huey, raw_noop

    client.flushall()
    for _ in range(jobs):
        raw_noop()
    consumer = subprocess.Popen(
        [sys.executable, "-m", "huey.bin.huey_consumer", "bench.jobs.raw_huey", "-w",
         str(workers), "-k", "process", "-q"], cwd=ROOT, env=env_for(url, 1))
    try:
        return windowed_rate(lambda: jobs - raw_huey.storage.queue_size(), jobs)
    finally:
        stop(consumer)


def backstop_processes_round(url: str, client, processes: int, threads: int,
                             jobs: int = 3000) -> float:
    """Backstop's `worker.py --processes P --concurrency T` (P = 1: no supervisor): jobs/s."""
    from backstop import keys, producers, queues

    client.flushall()
    queues.pause("system")
    for start in range(0, jobs, 1000):
        producers.enqueue_many([{"job": "bench.noop", "payload": {}}
                                for _ in range(start, min(jobs, start + 1000))])
    worker = subprocess.Popen(
        [sys.executable, "worker.py", "--queues", "system", "--processes", str(processes),
         "--concurrency", str(threads)], cwd=ROOT, env=env_for(url, threads),
        stderr=subprocess.DEVNULL)
    stats = keys.queue_stats("system")
    try:
        wait_until(lambda: client.zcard(keys.workers()) >= processes, timeout=60)
        queues.resume("system")
        return windowed_rate(lambda: int(client.hget(stats, "completed") or 0), jobs)
    finally:
        stop(worker)


def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    """Interleaved rounds of the three sides; jobs/s per side per round."""
    proc, url = start_redis()
    os.environ.update(env_for(url, args.threads))
    import redis

    import bench.jobs  # noqa: F401  (registers bench.noop in this process too)

    client = redis.Redis.from_url(url)
    sides = {
        "raw Huey -k process": lambda: raw_process_round(url, client, args.processes, args.jobs),
        "Backstop processes": lambda: backstop_processes_round(
            url, client, args.processes, args.threads, args.jobs),
        "Backstop 1 process": lambda: backstop_processes_round(
            url, client, 1, args.processes * args.threads, args.jobs),
    }
    rates: dict[str, list[float]] = {side: [] for side in sides}
    try:
        for n in range(args.rounds):
            for side, run in sides.items():
                rates[side].append(run())
            print(f"round {n + 1}: " + ", ".join(f"{side} {rows[-1]:.0f}/s"
                                                 for side, rows in rates.items()),
                  file=sys.stderr)
    finally:
        proc.terminate()
    return rates


def report(rates: dict[str, list[float]], args: argparse.Namespace) -> None:
    raw, many, one = (statistics.median(rows) for rows in rates.values())
    print(f"jobs per round {args.jobs}, rounds {args.rounds}, processes {args.processes}, "
          f"threads per process {args.threads}; cores {len(os.sched_getaffinity(0))}")
    print(f"processed/s  raw Huey -k process -w {args.processes} {raw:8.0f}")
    print(f"processed/s  Backstop --processes {args.processes}     {many:8.0f}   "
          f"ratio to raw {many / raw:.2f}")
    print(f"processed/s  Backstop 1 process, {args.processes * args.threads} threads "
          f"{one:6.0f}   processes / 1 process {many / one:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per Backstop process")
    args = parser.parse_args(argv)
    report(measure(args), args)


if __name__ == "__main__":
    main()
