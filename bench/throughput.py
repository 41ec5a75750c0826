"""Worker throughput and enqueue rate of Backstop against raw Huey, interleaved (A B A B ...).

Both sides: the same no-op job, one process with the same number of thread workers, a Redis
started here on a free port. Prints medians and the two ratios (Backstop / raw; target >= 0.8).

    .venv/bin/python bench/throughput.py [--jobs 5000] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
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


def start_redis() -> tuple[subprocess.Popen, str]:
    port = redis_server.free_port()
    proc = redis_server.start(port, Path(tempfile.mkdtemp()), durable=False)
    return proc, f"redis://127.0.0.1:{port}/0"


def env_for(url: str) -> dict:
    queues = '{"system": {"rate_limit": 0, "concurrency": %d}}'
    return {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(ROOT),
            "BACKSTOP_TASK_MODULES": "bench.jobs", "BACKSTOP_QUEUES": queues % ARGS.workers}


def wait_until(predicate, timeout=120.0) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("benchmark timed out")
        time.sleep(0.002)
    return time.monotonic()


def raw_round(url: str, client) -> tuple[float, float]:
    from bench.jobs import raw_huey, raw_noop

    client.flushall()
    began = time.monotonic()
    for _ in range(ARGS.jobs):
        raw_noop()
    enqueue_rate = ARGS.jobs / (time.monotonic() - began)
    consumer = subprocess.Popen(
        [sys.executable, "-m", "huey.bin.huey_consumer", "bench.jobs.raw_huey", "-w",
         str(ARGS.workers), "-k", "thread", "-q"], cwd=ROOT, env=env_for(url))
    try:
        wait_until(lambda: raw_huey.storage.queue_size() < ARGS.jobs)
        began = time.monotonic()
        done = wait_until(lambda: raw_huey.storage.queue_size() == 0)
        return enqueue_rate, (ARGS.jobs - 1) / (done - began)
    finally:
        consumer.terminate()
        consumer.wait()


def backstop_round(url: str, client) -> tuple[float, float]:
    from backstop import keys, producers

    client.flushall()
    began = time.monotonic()
    for _ in range(ARGS.jobs):
        producers.enqueue("bench.noop", {})
    enqueue_rate = ARGS.jobs / (time.monotonic() - began)
    worker = subprocess.Popen([sys.executable, "worker.py", "--queues", "system"], cwd=ROOT,
                              env=env_for(url), stderr=subprocess.DEVNULL)
    stats = keys.queue_stats("system")

    def completed() -> int:
        return int(client.hget(stats, "completed") or 0)

    try:
        wait_until(lambda: completed() >= 1)
        began = time.monotonic()
        done = wait_until(lambda: completed() >= ARGS.jobs)
        return enqueue_rate, (ARGS.jobs - 1) / (done - began)
    finally:
        worker.terminate()
        worker.wait()


def main() -> None:
    proc, url = start_redis()
    os.environ.update(env_for(url))
    import redis

    import bench.jobs  # noqa: F401  (registers bench.noop in this process too)

    client = redis.Redis.from_url(url)
    results = {"raw": [], "backstop": []}
    try:
        for n in range(ARGS.rounds):
            results["raw"].append(raw_round(url, client))
            results["backstop"].append(backstop_round(url, client))
            print(f"round {n + 1}: raw {results['raw'][-1]}, backstop {results['backstop'][-1]}",
                  file=sys.stderr)
    finally:
        proc.terminate()
    report(results)


def report(results: dict) -> None:
    med = {side: [statistics.median(r[i] for r in rows) for i in (0, 1)]
           for side, rows in results.items()}
    print(f"jobs per round {ARGS.jobs}, rounds {ARGS.rounds}, thread workers {ARGS.workers}")
    print(f"enqueue/s   raw Huey {med['raw'][0]:8.0f}   Backstop {med['backstop'][0]:8.0f}   "
          f"ratio {med['backstop'][0] / med['raw'][0]:.2f}")
    print(f"processed/s raw Huey {med['raw'][1]:8.0f}   Backstop {med['backstop'][1]:8.0f}   "
          f"ratio {med['backstop'][1] / med['raw'][1]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    ARGS = parser.parse_args()
    main()
