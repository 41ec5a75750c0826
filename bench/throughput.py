"""Enqueue and processing rates of Backstop against raw Huey, interleaved rounds, medians.

Every side runs the same no-op job, against one Redis started here on a free port. Each round
measures, in turn:

- raw Huey: N single enqueues (`raw_noop()`), then its consumer `-k thread -w T` works them off;
- Backstop: N single `enqueue()`s, then `worker.py` (one process, T threads) works them off;
- Backstop: `enqueue_many()` of the same N, then `worker.py --processes P --concurrency 1`;
- raw Huey: its consumer `-k process -w P` on N jobs.

A processing rate counts the jobs done between 10 % and 90 % of the batch, so start-up and
the last stragglers count on no side; Backstop's queue stays paused until all its worker
processes beat. Prints the medians and the ratios the issue sets (single enqueue >= 0.9 of
raw Huey's, enqueue_many >= 5x raw Huey's single enqueue, processing at T threads >= 1.0).

    .venv/bin/python bench/throughput.py [--jobs 5000] [--rounds 5] [--threads 2] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backstop import redis_server  # noqa: E402

WINDOW = (0.1, 0.9)  # the share of the batch a processing rate is measured over


def start_redis() -> tuple[subprocess.Popen, str]:
    port = redis_server.free_port()
    proc = redis_server.start(port, Path(tempfile.mkdtemp()), durable=False)
    return proc, f"redis://127.0.0.1:{port}/0"


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
        time.sleep(0.002)
    return time.monotonic()


def windowed_rate(done, jobs: int) -> float:
    """Jobs per second between WINDOW[0] and WINDOW[1] of the batch; done() counts jobs
    finished so far."""
    low, high = (round(jobs * share) for share in WINDOW)
    began = wait_until(lambda: done() >= low)
    ended = wait_until(lambda: done() >= high)
    return (high - low) / (ended - began)


def timed(action) -> float:
    """Jobs per second of action(), which enqueues ARGS.jobs jobs."""
    began = time.perf_counter()
    action()
    return ARGS.jobs / (time.perf_counter() - began)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def raw_consumer(url: str, client, kind: str, workers: int) -> float:
    """Raw Huey's consumer (-k kind -w workers) working off the queue: jobs/s."""
    from bench.jobs import raw_huey

    consumer = subprocess.Popen(
        [sys.executable, "-m", "huey.bin.huey_consumer", "bench.jobs.raw_huey", "-w",
         str(workers), "-k", kind, "-q"], cwd=ROOT, env=env_for(url, 1))
    try:
        return windowed_rate(lambda: ARGS.jobs - raw_huey.storage.queue_size(), ARGS.jobs)
    finally:
        stop(consumer)


def backstop_worker(url: str, client, processes: int, threads: int) -> float:
    """worker.py (--processes P --concurrency T; P = 1: no supervisor) working off the paused
    system queue once every process beats: jobs/s."""
    from backstop import keys, queues

    worker = subprocess.Popen(
        [sys.executable, "worker.py", "--queues", "system", "--processes", str(processes),
         "--concurrency", str(threads)], cwd=ROOT, env=env_for(url, threads),
        stderr=subprocess.DEVNULL)
    stats = keys.queue_stats("system")
    try:
        wait_until(lambda: client.zcard(keys.workers()) >= processes, timeout=60)
        queues.resume("system")
        return windowed_rate(lambda: int(client.hget(stats, "completed") or 0), ARGS.jobs)
    finally:
        stop(worker)


def raw_round(url: str, client) -> dict[str, float]:
    from bench.jobs import raw_noop

    client.flushall()
    enqueue = timed(lambda: [raw_noop() for _ in range(ARGS.jobs)])
    threads = raw_consumer(url, client, "thread", ARGS.threads)
    client.flushall()
    for _ in range(ARGS.jobs):
        raw_noop()
    processes = raw_consumer(url, client, "process", ARGS.processes)
    return {"enqueue": enqueue, "threads": threads, "processes": processes}


def backstop_round(url: str, client) -> dict[str, float]:
    from backstop import producers, queues

    client.flushall()
    queues.pause("system")
    enqueue = timed(lambda: [producers.enqueue("bench.noop", {}) for _ in range(ARGS.jobs)])
    threads = backstop_worker(url, client, 1, ARGS.threads)
    client.flushall()
    queues.pause("system")
    many = timed(lambda: producers.enqueue_many(
        [{"job": "bench.noop", "payload": {}} for _ in range(ARGS.jobs)]))
    processes = backstop_worker(url, client, ARGS.processes, 1)
    return {"enqueue": enqueue, "many": many, "threads": threads, "processes": processes}


def main() -> None:
    proc, url = start_redis()
    os.environ.update(env_for(url, ARGS.threads))
    import redis

    import bench.jobs  # noqa: F401  (registers bench.noop in this process too)

    client = redis.Redis.from_url(url)
    results: dict[str, list[dict]] = {"raw": [], "backstop": []}
    try:
        for n in range(ARGS.rounds):
            results["raw"].append(raw_round(url, client))
            results["backstop"].append(backstop_round(url, client))
            print(f"round {n + 1}: " + "; ".join(
                f"{side} " + ", ".join(f"{k} {v:.0f}/s" for k, v in rows[-1].items())
                for side, rows in results.items()), file=sys.stderr)
    finally:
        proc.terminate()
    report({side: {key: statistics.median(row[key] for row in rows) for key in rows[0]}
            for side, rows in results.items()})


def report(med: dict[str, dict[str, float]]) -> None:
    raw, ours = med["raw"], med["backstop"]
    print(f"jobs per round {ARGS.jobs}, rounds {ARGS.rounds} (medians), cores "
          f"{len(os.sched_getaffinity(0))}")
    rows = [
        ("single enqueue/s", raw["enqueue"], ours["enqueue"], ">= 0.9"),
        ("enqueue_many/s vs raw single", raw["enqueue"], ours["many"], ">= 5"),
        (f"processed/s, 1 process x {ARGS.threads} threads", raw["threads"], ours["threads"],
         ">= 1.0"),
        (f"processed/s, {ARGS.processes} processes", raw["processes"], ours["processes"], ""),
    ]
    print(f"{'':40s} {'raw Huey':>10s} {'Backstop':>10s} {'ratio':>7s}  target")
    for label, theirs, mine, target in rows:
        print(f"{label:40s} {theirs:10.0f} {mine:10.0f} {mine / theirs:7.2f}  {target}")
    print(f"{'Backstop ' + str(ARGS.processes) + ' processes / 1 process':40s} "
          f"{ours['threads']:10.0f} {ours['processes']:10.0f} "
          f"{ours['processes'] / ours['threads']:7.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2,
                        help="consumer threads of the one-process sides")
    parser.add_argument("--processes", type=int, default=2,
                        help="worker processes of the multi-process sides (1 thread each)")
    ARGS = parser.parse_args()
    main()
